"""Tool calling for a local model, whatever its own tool format (apis/openai_chat.py).

A small local model has no dependable tool-call syntax of its own, so the server asks
in two constrained steps, both decoded under a llama.cpp grammar so that the output is
always well formed:

1. **The choice.** The conversation goes to the model with the tools listed in its
   system message (name, description, parameters); the first words of the reply may
   only be `message:` or `functions.<a listed name>:` (only the latter when the request
   says `tool_choice: "required"`; a named `tool_choice` skips this step).
2. **The arguments.** For a function, the reply goes on under a grammar made from the
   tool's JSON schema (`json_schema_to_gbnf`), so the arguments always parse and match
   the schema's shape.

A `message:` choice is answered by the ordinary chat completion, without the tool list,
so a reply that needs no tool reads exactly as it would with no tools offered. After a
tool result (the last message has role `tool`), the model answers from it: one tool
round per question, so a small model cannot loop. One call per response.

How well the model *chooses* is the model's own: `python -m latency_tests.tool_choice`
scores a model on a fixed set of requests.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_TOOLS = 128
ARGUMENT_TOKENS = 256
MESSAGE = "message:"
FUNCTIONS = "functions."


class ToolRequestError(ValueError):
    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def checked_tools(body: dict[str, Any]) -> tuple[list[dict[str, Any]], Any]:
    """The request's function tools (`{"name", "description", "parameters"}`) and its
    `tool_choice` ("none", "auto", "required" or a function name), or
    `ToolRequestError` naming the parameter."""
    tools = body.get("tools")
    if tools is None:
        return [], "none"
    if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
        raise ToolRequestError(f"'tools' must be an array of at most {MAX_TOOLS}", "tools")
    functions: list[dict[str, Any]] = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function" \
                or not isinstance(function, dict):
            raise ToolRequestError("each tool must be {'type': 'function', 'function': {...}}",
                                   f"tools[{i}]")
        name = function.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise ToolRequestError("a function name is 1-64 letters, digits, '_' or '-'",
                                   f"tools[{i}].function.name")
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict):
            raise ToolRequestError("'parameters' must be a JSON schema object",
                                   f"tools[{i}].function.parameters")
        description = function.get("description", "")
        functions.append({"name": name, "parameters": parameters,
                          "description": description if isinstance(description, str) else ""})
    return functions, _checked_choice(body.get("tool_choice", "auto"),
                                      {f["name"] for f in functions})


def _checked_choice(choice: Any, names: set[str]) -> Any:
    if choice in ("none", "auto", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" \
            and isinstance(choice.get("function"), dict) \
            and choice["function"].get("name") in names:
        return choice["function"]["name"]
    raise ToolRequestError("'tool_choice' must be 'none', 'auto', 'required' or "
                           "{'type': 'function', 'function': {'name': <a listed tool>}}",
                           "tool_choice")


def spoken_calls(calls: Any, param: str) -> str:
    """An assistant message's `tool_calls` as the text the model itself writes in step 2
    (`functions.NAME: ARGUMENTS`, one per line), so earlier rounds read as its own."""
    if not isinstance(calls, list):
        raise ToolRequestError("'tool_calls' must be an array", param)
    lines = []
    for i, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) \
                or not isinstance(function.get("arguments", ""), str):
            raise ToolRequestError("a tool call needs a function name and string arguments",
                                   f"{param}[{i}]")
        lines.append(f"{FUNCTIONS}{function['name']}: {function.get('arguments') or '{}'}")
    return "\n".join(lines)


def tool_listing(functions: list[dict[str, Any]]) -> str:
    """What the system message says about the tools in step 1."""
    lines = ["You can call these functions:"]
    for function in functions:
        lines.append(f"{FUNCTIONS}{function['name']}: {function['description']} "
                     f"Parameters: {json.dumps(function['parameters'])}")
    lines.append(f"When a function can answer, reply '{FUNCTIONS}<name>:' and its JSON "
                 f"arguments. Otherwise reply '{MESSAGE}' and your answer.")
    return "\n".join(lines)


def with_listing(messages: list[dict[str, Any]], functions: list[dict[str, Any]]
                 ) -> list[dict[str, Any]]:
    listing = tool_listing(functions)
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": f"{messages[0]['content']}\n\n{listing}"},
                *messages[1:]]
    return [{"role": "system", "content": listing}, *messages]


def choice_grammar(functions: list[dict[str, Any]], required: bool) -> str:
    """GBNF for step 1: `message:` or `functions.<name>:`."""
    names = " | ".join(f'"{f["name"]}"' for f in functions)
    call = f'"{FUNCTIONS}" ({names}) ":"'
    return f"root ::= {call}" if required else f'root ::= "{MESSAGE}" | {call}'


def chosen_function(text: str) -> str | None:
    """The function step 1 chose, or None for a message."""
    if text.startswith(FUNCTIONS) and text.endswith(":"):
        return text[len(FUNCTIONS):-1]
    return None


def plain_history(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool results as user messages, for a chat template that knows no `tool` role."""
    return [{"role": "user", "content": f"(a tool answered: {m['content']})"}
            if m["role"] == "tool" else m for m in messages]


def needs_arguments(parameters: dict[str, Any]) -> bool:
    return bool(parameters.get("properties"))


class CallChunks:
    """The streamed chunks of a response that is one tool call, as the API streams them:
    the call's id and name first, then its arguments in pieces, then the finish."""

    def __init__(self, model: str) -> None:
        self._base = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                      "object": "chat.completion.chunk", "created": int(time.time()),
                      "model": model}

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**self._base, "choices": [{"index": 0, "finish_reason": finish,
                                           "delta": delta}]}

    def start(self, name: str) -> dict[str, Any]:
        return self._chunk({"role": "assistant", "content": None, "tool_calls": [{
            "index": 0, "id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": name, "arguments": ""}}]})

    def arguments(self, text: str) -> dict[str, Any]:
        return self._chunk({"tool_calls": [{"index": 0, "function": {"arguments": text}}]})

    def finish(self) -> dict[str, Any]:
        return self._chunk({}, "tool_calls")
