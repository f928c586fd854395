"""Tools the assistant may call during a call: declared, described to the LLM, run.

Two ways to declare them:

- **Python functions** in a module the operator names (`--tools my_tools`), marked
  with the `tool` decorator. The JSON schema the LLM sees comes from the type hints
  (str, int, float, bool, `Literal[...]`, `list[...]`, `X | None`) and the docstring
  (its first paragraph describes the tool; an `Args:` section describes the
  parameters). A function may be sync or async; what it returns goes back to the
  model (a string as it is, anything else as JSON).
- **HTTP webhooks** in a JSON file (`--tools-file hooks.json`):
  `{"tools": [{"name", "description", "parameters" (JSON schema), "url",
  "timeout_s", "headers": {"Authorization": "Bearer $CRM_TOKEN"}}]}`. The arguments
  are POSTed as JSON; a JSON answer goes back to the model as it is, any other body as
  text. Header values take `$NAME` from the environment when the file is loaded, so
  secrets stay out of the file.

`ToolBox.run` never raises: an unknown tool, arguments that are not a JSON object or
do not match the schema, a tool that fails or takes longer than its timeout all come
back as a `ToolResult` with `ok=False` and an error the model can read and recover
from (it then tells the caller, rather than leaving silence). Results longer than
`MAX_RESULT_CHARS` are cut.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import logging
import os
import re
import time
import types
import typing
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from voice.errors import ConfigError
from voice.events import ToolAnswered, ToolCalled

log = logging.getLogger(__name__)

MAX_RESULT_CHARS = 8000
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ENV = re.compile(r"\$([A-Z_][A-Z0-9_]*)")


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]  # a JSON schema of type "object"
    run: Callable[[dict[str, Any]], Awaitable[Any]]
    timeout_s: float | None = None  # None: the tool box's default

    def spec(self) -> dict[str, Any]:
        """The tool as the Chat Completions API declares it."""
        return {"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": self.parameters}}


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it

    def event(self, turn_id: int) -> ToolCalled:
        """The `tool.call` event clients see."""
        return ToolCalled(turn_id=turn_id, call_id=self.id, name=self.name,
                          arguments=self.arguments)


@dataclass(frozen=True)
class ToolResult:
    call: ToolCall
    content: str  # what goes back to the model
    ok: bool
    ms: float
    error: str = ""

    def event(self, turn_id: int) -> ToolAnswered:
        """The `tool.result` event clients see."""
        return ToolAnswered(turn_id=turn_id, call_id=self.call.id, name=self.call.name,
                            ok=self.ok, result=self.content, ms=round(self.ms, 1))


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None,
         timeout_s: float | None = None) -> Any:
    """Marks a function as a tool (`@tool`, or `@tool(timeout_s=2)`); the function is
    returned unchanged, with the `Tool` in its `voice_tool` attribute."""

    def mark(function: Callable[..., Any]) -> Callable[..., Any]:
        function.voice_tool = from_function(function, name, timeout_s)  # type: ignore[attr-defined]
        return function

    return mark(fn) if fn is not None else mark


def from_function(function: Callable[..., Any], name: str | None = None,
                  timeout_s: float | None = None) -> Tool:
    tool_name = name or function.__name__
    if not _NAME.match(tool_name):
        raise ConfigError(f"tool name {tool_name!r}: letters, digits, _ and - only (1-64)")
    description, arg_docs = _docstring(inspect.getdoc(function) or "")
    hints = typing.get_type_hints(function)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        hint = hints.get(parameter.name, str)
        schema, optional = _schema_of(hint, f"{tool_name}({parameter.name})")
        if parameter.name in arg_docs:
            schema["description"] = arg_docs[parameter.name]
        properties[parameter.name] = schema
        if parameter.default is inspect.Parameter.empty and not optional:
            required.append(parameter.name)
    parameters = {"type": "object", "properties": properties, "required": required,
                  "additionalProperties": False}

    async def run(arguments: dict[str, Any]) -> Any:
        if inspect.iscoroutinefunction(function):
            return await function(**arguments)
        return await asyncio.to_thread(function, **arguments)

    return Tool(tool_name, description or tool_name, parameters, run, timeout_s)


def _docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The description (first paragraph) and the `Args:` entries of a docstring."""
    description = " ".join(doc.split("\n\n", 1)[0].split())
    args: dict[str, str] = {}
    section = re.search(r"^Args:\s*$(.*?)(?:^\S|\Z)", doc, re.MULTILINE | re.DOTALL)
    if section:
        block = section.group(1)
        base = _indent(block)
        current = ""
        for line in block.splitlines():
            entry = re.match(r"^(\s*)(\w+)(?:\s*\([^)]*\))?:\s*(.*)$", line)
            if entry and len(entry.group(1)) == base:
                current = entry.group(2)
                args[current] = entry.group(3).strip()
            elif current and line.strip():
                args[current] += " " + line.strip()
    return description, args


def _indent(block: str) -> int:
    lines = [line for line in block.splitlines() if line.strip()]
    return min((len(line) - len(line.lstrip()) for line in lines), default=0)


_PLAIN = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object"}


def _schema_of(hint: Any, where: str) -> tuple[dict[str, Any], bool]:
    """The JSON schema of a type hint, and whether None is allowed."""
    origin = get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in get_args(hint) if a is not type(None)]
        if len(options) != 1:
            raise ConfigError(f"tool {where}: a union of several types has no JSON schema")
        schema, _ = _schema_of(options[0], where)
        return schema, len(options) < len(get_args(hint))
    if origin is Literal:
        values = list(get_args(hint))
        kinds = {type(v) for v in values}
        kind = _PLAIN.get(kinds.pop()) if len(kinds) == 1 else None
        return ({"type": kind, "enum": values} if kind else {"enum": values}), False
    if origin is list:
        (item,) = get_args(hint) or (str,)
        return {"type": "array", "items": _schema_of(item, where)[0]}, False
    if origin is dict or hint is dict:
        return {"type": "object"}, False
    if hint in _PLAIN:
        return {"type": _PLAIN[hint]}, False
    raise ConfigError(f"tool {where}: type {hint!r} has no JSON schema (use str, int, "
                      "float, bool, Literal, list or dict)")


def schema_errors(value: Any, schema: dict[str, Any], path: str = "arguments") -> list[str]:
    """What in `value` does not match `schema` (the JSON schema subset tools use:
    type, properties, required, additionalProperties, items, enum); [] if it matches."""
    errors: list[str] = []
    kind = schema.get("type")
    checks: dict[str, Callable[[Any], bool]] = {
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool)
        and v == v and v not in (float("inf"), float("-inf")),
        "boolean": lambda v: isinstance(v, bool),
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "null": lambda v: v is None}
    kinds = kind if isinstance(kind, list) else [kind] if kind else []
    if kinds and not any(checks.get(k, lambda v: True)(value) for k in kinds):
        return [f"{path} must be {' or '.join(kinds)}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path} must be one of {schema['enum']}")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{path}.{key} is required")
        for key, item in value.items():
            if key in properties:
                errors.extend(schema_errors(item, properties[key], f"{path}.{key}"))
            elif schema.get("additionalProperties") is False:
                errors.append(f"{path}.{key} is not a parameter")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            errors.extend(schema_errors(item, schema["items"], f"{path}[{i}]"))
    return errors


class ToolBox:
    """The tools of a session, and how long each may take."""

    def __init__(self, tools: Iterable[Tool], timeout_s: float = 5.0) -> None:
        self.tools: dict[str, Tool] = {}
        for t in tools:
            if t.name in self.tools:
                raise ConfigError(f"two tools are named {t.name!r}")
            self.tools[t.name] = t
        self.timeout_s = timeout_s

    def __bool__(self) -> bool:
        return bool(self.tools)

    def specs(self) -> list[dict[str, Any]]:
        return [t.spec() for t in self.tools.values()]

    def subset(self, names: Iterable[str]) -> ToolBox:
        return ToolBox([self.tools[n] for n in names if n in self.tools], self.timeout_s)

    def with_tools(self, extra: Iterable[Tool]) -> ToolBox:
        return ToolBox([*self.tools.values(), *extra], self.timeout_s)

    async def run(self, call: ToolCall) -> ToolResult:
        started = time.monotonic()

        def failed(error: str) -> ToolResult:
            ms = (time.monotonic() - started) * 1000
            log.info("tool %s (%s) failed after %.0f ms: %s", call.name[:64], call.id[:40],
                     ms, error)
            return ToolResult(call, json.dumps({"error": error}), False, ms, error)

        found = self.tools.get(call.name)
        if found is None:
            return failed(f"there is no tool named {call.name[:64]!r}; the tools are: "
                          f"{', '.join(self.tools) or 'none'}")
        try:
            arguments = json.loads(call.arguments or "{}")
        except (ValueError, RecursionError):
            return failed("the arguments are not valid JSON")
        if not isinstance(arguments, dict):
            return failed("the arguments must be a JSON object")
        problems = schema_errors(arguments, found.parameters)
        if problems:
            return failed("invalid arguments: " + "; ".join(problems[:5]))
        timeout = found.timeout_s or self.timeout_s
        try:
            async with asyncio.timeout(timeout):
                value = await found.run(arguments)
        except TimeoutError:
            return failed(f"the tool did not answer within {timeout:g} s")
        except Exception as exc:  # a tool's own bug: the model hears of it, the call goes on
            log.warning("tool %s raised", found.name, exc_info=True)
            return failed(f"the tool failed: {type(exc).__name__}: {str(exc)[:200]}")
        content = value if isinstance(value, str) else json.dumps(value, default=str)
        ms = (time.monotonic() - started) * 1000
        log.info("tool %s (%s) answered in %.0f ms", found.name, call.id[:40], ms)
        return ToolResult(call, content[:MAX_RESULT_CHARS], True, ms)

    async def run_all(self, calls: Iterable[ToolCall]) -> list[ToolResult]:
        """Every call at once; results in the order of the calls."""
        return list(await asyncio.gather(*(self.run(c) for c in calls)))


def load_module(name: str) -> list[Tool]:
    """The tools (functions marked with `tool`) of the module `name`."""
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise ConfigError(f"tools module {name!r} cannot be imported: {exc}") from exc
    found = [value.voice_tool for value in vars(module).values()
             if isinstance(getattr(value, "voice_tool", None), Tool)]
    if not found:
        raise ConfigError(f"tools module {name!r} has no function marked with @tool")
    return found


def load_webhooks(path: str, environ: dict[str, str] | None = None) -> list[Tool]:
    """The webhook tools declared in the JSON file at `path`."""
    env = os.environ if environ is None else environ
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"tools file {path}: {exc}") from exc
    entries = data.get("tools") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ConfigError(f"tools file {path}: expected {{\"tools\": [...]}}")
    return [_webhook(entry, f"{path}: tools[{i}]", env) for i, entry in enumerate(entries)]


def _webhook(entry: Any, where: str, env: typing.Mapping[str, str]) -> Tool:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected an object")
    name, url = entry.get("name"), entry.get("url")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{where}: 'name' must be 1-64 letters, digits, _ or -")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: 'url' must be an http(s) URL")
    parameters = entry.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(parameters, dict) or parameters.get("type") != "object":
        raise ConfigError(f"{where}: 'parameters' must be a JSON schema of type object")
    timeout = entry.get("timeout_s")
    if timeout is not None and (not isinstance(timeout, int | float) or not 0 < timeout <= 60):
        raise ConfigError(f"{where}: 'timeout_s' must be a number of seconds, 0-60")
    headers: dict[str, str] = {}
    for key, value in (entry.get("headers") or {}).items():
        missing = [m for m in _ENV.findall(str(value)) if m not in env]
        if missing:
            raise ConfigError(f"{where}: header {key} needs ${missing[0]} in the environment")
        headers[str(key)] = _ENV.sub(lambda m: env[m.group(1)], str(value))

    async def run(arguments: dict[str, Any]) -> Any:
        import aiohttp

        async with aiohttp.ClientSession() as client, client.post(
                url, json=arguments, headers=headers) as response:
            body = await response.text()
            if response.status >= 400:
                raise RuntimeError(f"the webhook answered HTTP {response.status}: {body[:200]}")
            try:
                return json.loads(body)
            except ValueError:
                return body

    description = entry.get("description")
    return Tool(name, description if isinstance(description, str) else name, parameters,
                run, float(timeout) if timeout is not None else None)
