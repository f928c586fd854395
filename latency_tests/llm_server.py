"""A local OpenAI-compatible Chat Completions server that stands in for a paid LLM.

It speaks the real wire protocol (HTTP/1.1 keep-alive, JSON, chunked SSE) so the
real `openai` client is exercised. Tests script it through `server.behaviour`
between requests and read what it received from `server.requests`:

    async with LLMServer() as server:
        server.behaviour.reply = "Hello there."
        server.behaviour.fail_next(ErrorStatus(429))
        client = AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0)

Failures apply to chat completion requests only, one taken per request.
CLI: python -m latency_tests.llm_server --port 8001 [--reply TEXT] [--first-token-delay S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

from latency_tests.llm_behaviour import (
    MODEL_ID,
    Behaviour,
    CallTools,
    Drop,
    ErrorStatus,
    Failure,
    Garbage,
    Hang,
    Message,
    default_reply,
    split_words,
    text_of,
)
from latency_tests.llm_server_http import (
    HttpResponse,
    ProtocolError,
    RequestHead,
    serve_connection,
)

logger = logging.getLogger(__name__)


__all__ = ["Behaviour", "CallTools", "Drop", "ErrorStatus", "Failure", "Garbage", "Hang",
           "LLMServer", "Message", "default_reply", "split_words"]


@dataclass(frozen=True)
class ChatRequest:
    body: dict[str, Any]
    model: str
    messages: list[Message]
    stream: bool
    include_usage: bool

    @classmethod
    def parse(cls, data: bytes) -> Self:
        try:
            body = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise ProtocolError(f"request body is not valid JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise ProtocolError("request body must be a JSON object")
        model, messages, stream = body.get("model"), body.get("messages"), body.get("stream")
        if not isinstance(model, str) or not model:
            raise ProtocolError("'model' must be a non-empty string")
        if not isinstance(messages, list) or not messages:
            raise ProtocolError("'messages' must be a non-empty array")
        if not all(isinstance(message, dict) for message in messages):
            raise ProtocolError("every entry of 'messages' must be an object")
        if stream is not None and not isinstance(stream, bool):
            raise ProtocolError("'stream' must be a boolean")
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        return cls(body, model, messages, bool(stream), include_usage)


class LLMServer:
    """The fake endpoint.

    `requests` holds every valid chat completion body received, in order;
    `connections_accepted` counts TCP connections, so tests can see keep-alive at work.
    """

    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self.behaviour = behaviour if behaviour is not None else Behaviour()
        self.requests: list[dict[str, Any]] = []
        self.usage_sent: list[dict[str, int]] = []  # each `usage` it reported, in order
        self.connections_accepted = 0
        self._arrivals = asyncio.Condition()
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[Any], asyncio.Timeout] = {}
        self._url_host = "127.0.0.1"
        self._port: int | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if self._server is not None:
            raise RuntimeError("LLMServer is already running")
        self._server = await asyncio.start_server(self._on_connect, host, port)
        self._port = int(self._server.sockets[0].getsockname()[1])
        self._url_host = f"[{host}]" if ":" in host else host

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("LLMServer has not been started")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{self._url_host}:{self.port}/v1"

    async def stop(self) -> None:
        """Stop listening and cut every open connection, hanging ones included."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for stop_scope in self._connections.values():
            stop_scope.reschedule(0)  # a deadline in the past: expires on the next loop turn
        await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()

    async def wait_for_requests(self, count: int) -> None:
        """Return once at least `count` chat completion requests have been received."""
        async with self._arrivals:
            await self._arrivals.wait_for(lambda: len(self.requests) >= count)

    async def __aenter__(self) -> Self:
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if self._server is None or task is None:
            writer.close()  # accepted just as the server stopped
            return
        self.connections_accepted += 1
        try:
            # `stop()` expires this scope to cut the connection wherever it waits; the scope
            # turns that cancellation into TimeoutError, and any other cancellation propagates.
            async with asyncio.timeout(None) as stop_scope:
                self._connections[task] = stop_scope
                try:
                    await serve_connection(reader, writer, self._route)
                finally:
                    del self._connections[task]
        except TimeoutError:
            writer.transport.abort()
        except ConnectionError:
            logger.debug("client went away mid-response")
        except Exception:
            logger.exception("fake LLM connection failed")
        finally:
            writer.close()

    async def _route(self, head: RequestHead, body: bytes, response: HttpResponse) -> None:
        routes = {"/v1/chat/completions": "POST", "/v1/models": "GET"}
        allowed = routes.get(head.path)
        if allowed is None:
            message = f"Invalid URL ({head.method} {head.path})"
            await response.send_error(404, message, "invalid_request_error", "unknown_url")
        elif head.method != allowed:
            message = f"Method {head.method} not allowed for {head.path}"
            await response.send_error(
                405, message, "invalid_request_error", headers=[("allow", allowed)]
            )
        elif allowed == "GET":
            model = {"id": MODEL_ID, "object": "model", "created": _now(), "owned_by": "tests"}
            await response.send_json(200, {"object": "list", "data": [model]})
        else:
            await self._chat_completions(body, response)

    async def _chat_completions(self, body: bytes, response: HttpResponse) -> None:
        try:
            request = ChatRequest.parse(body)
        except ProtocolError as exc:
            await response.send_error(400, str(exc), "invalid_request_error")
            return
        self.requests.append(request.body)
        async with self._arrivals:
            self._arrivals.notify_all()
        failure = self.behaviour.take_failure()
        if isinstance(failure, ErrorStatus):
            await _send_failure(response, failure)
            return
        if isinstance(failure, Hang):
            await response.wait_for_disconnect()
            return
        if isinstance(failure, Garbage):
            await _send_garbage(response, failure, request.model)
            return
        try:
            deltas, tools = self.behaviour.deltas_for(request.messages)
        except Exception as exc:
            logger.exception("scripted reply failed")
            await response.send_error(500, f"scripted reply failed: {exc!r}", "server_error")
            return
        drop_after = failure.after_deltas if isinstance(failure, Drop) else None
        await asyncio.sleep(self.behaviour.first_token_delay)
        if request.stream:
            await self._stream(request, deltas, response, drop_after, tools)
        else:
            await self._complete(request, deltas, response, drop_after, tools)

    async def _stream(
        self,
        request: ChatRequest,
        deltas: list[str],
        response: HttpResponse,
        drop_after: int | None,
        tools: CallTools | None = None,
    ) -> None:
        payloads = _Payloads(request.model)
        await response.start_events()
        await response.send_event(payloads.chunk({"role": "assistant", "content": ""}))
        for index, delta in enumerate(deltas[:drop_after]):
            if index:
                await asyncio.sleep(self.behaviour.token_interval)
            await response.send_event(payloads.chunk({"content": delta}))
        if drop_after is not None:
            response.keep_alive = False  # the body never ends: the client sees a cut stream
            return
        for index, (name, arguments) in enumerate(tools.calls if tools else ()):
            call = {"index": index, "id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
                    "function": {"name": name, "arguments": ""}}
            await response.send_event(payloads.chunk({"tool_calls": [call]}))
            for start in range(0, len(arguments), 7):  # in pieces, as endpoints send them
                piece = {"index": index, "function": {"arguments": arguments[start:start + 7]}}
                await response.send_event(payloads.chunk({"tool_calls": [piece]}))
        await response.send_event(payloads.chunk(
            {}, finish_reason="tool_calls" if tools else "stop"))
        if request.include_usage:
            usage = _usage(request.messages, deltas)
            await response.send_event(payloads.usage_chunk(usage))
            self.usage_sent.append(usage)
        await response.send_event("[DONE]")
        await response.end_events()

    async def _complete(
        self,
        request: ChatRequest,
        deltas: list[str],
        response: HttpResponse,
        drop_after: int | None,
        tools: CallTools | None = None,
    ) -> None:
        await asyncio.sleep(self.behaviour.token_interval * max(len(deltas) - 1, 0))
        payloads = _Payloads(request.model)
        usage = _usage(request.messages, deltas)
        completion = payloads.completion("".join(deltas), usage)
        self.usage_sent.append(usage)
        if tools:
            choice = completion["choices"][0]
            choice["finish_reason"] = "tool_calls"
            choice["message"]["tool_calls"] = [
                {"id": f"call_{i}", "type": "function",
                 "function": {"name": name, "arguments": arguments}}
                for i, (name, arguments) in enumerate(tools.calls)]
        await response.send_json(200, completion, cut_short=drop_after is not None)


class _Payloads:
    """The JSON objects of one completion; they share its id, timestamp and model."""

    def __init__(self, model: str) -> None:
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self._base = {"id": completion_id, "created": _now(), "model": model}

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return json.dumps({**self._base, "object": "chat.completion.chunk", "choices": [choice]})

    def usage_chunk(self, usage: dict[str, int]) -> str:
        return json.dumps(
            {**self._base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
        )

    def completion(self, text: str, usage: dict[str, int]) -> dict[str, Any]:
        message = {"role": "assistant", "content": text, "refusal": None}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
        return {**self._base, "object": "chat.completion", "choices": [choice], "usage": usage}


async def _send_garbage(response: HttpResponse, garbage: Garbage, model: str) -> None:
    if garbage.kind == "html":
        page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
        await response.send_page(200, page, "text/html")
        return
    payloads = _Payloads(model)
    await response.start_events()
    if garbage.kind == "null_delta":
        choice = {"index": 0, "delta": None, "finish_reason": None}
        await response.send_event(json.dumps({"id": "x", "object": "chat.completion.chunk",
                                              "created": _now(), "model": model,
                                              "choices": [choice]}))
    else:
        await response.send_event(payloads.chunk({"content": "Sure. "}))
        await response.send_event("{not json")
    await response.send_event("[DONE]")
    await response.end_events()


async def _send_failure(response: HttpResponse, failure: ErrorStatus) -> None:
    if failure.status == 429:
        retry = [("retry-after", str(failure.retry_after))]
        await response.send_error(429, failure.message, "requests", "rate_limit_exceeded", retry)
    else:
        error_type = "server_error" if failure.status >= 500 else "invalid_request_error"
        await response.send_error(failure.status, failure.message, error_type)


def _usage(messages: list[Message], deltas: list[str]) -> dict[str, int]:
    """Word counts stand in for token counts."""
    prompt = sum(len(text_of(message).split()) for message in messages)
    completion = len("".join(deltas).split())
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _now() -> int:
    """Unix timestamp for the `created` fields (a wall-clock date, not a duration)."""
    return int(datetime.now(UTC).timestamp())


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--reply", default=None, help="fixed reply (default: echo the user)")
    parser.add_argument("--first-token-delay", type=float, default=0.0, metavar="S")
    parser.add_argument("--token-interval", type=float, default=0.0, metavar="S")
    return parser.parse_args(argv)


async def _serve_until_signalled(args: argparse.Namespace) -> None:
    behaviour = Behaviour(
        reply=args.reply,
        first_token_delay=args.first_token_delay,
        token_interval=args.token_interval,
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    server = LLMServer(behaviour)
    await server.start(args.host, args.port)
    try:
        logger.info("fake LLM server listening on %s", server.base_url)
        await stopping.wait()
        logger.info("stopping")
    finally:
        await server.stop()


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(_serve_until_signalled(_parse_args(argv)))


if __name__ == "__main__":
    main()
