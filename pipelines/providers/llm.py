"""Language models: any OpenAI-compatible streaming chat endpoint, a fallback chain of
them, or the echo responder.

OpenAI, Ollama, vLLM and llama.cpp's server all speak the same Chat Completions API;
`OpenAIChat` uses the official `openai` client against `base_url`. Vendor errors are
translated into `ProviderError` here, where they enter our code.

`LLMChain` tries its endpoints in order within one turn: an endpoint that answers 429
or 5xx, cannot be reached, or sends no first token within `first_token_timeout_s` is
left for the next one at once, and each endpoint's circuit breaker
(`voice.resilience`) skips it without waiting while it is open. The last endpoint is
tried even while its breaker is open: with nothing left to fall back to, a try costs
the caller at most the first-token timeout, where a skip is a certain apology. If an endpoint fails
mid-reply, the next one is asked to continue the reply, and whatever it repeats of
the text already produced is dropped, so the caller never hears a sentence twice.
The `openai` client's own retries are off (`max_retries=0`): a retry of the same
endpoint costs the caller a full round trip that the next endpoint does not.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

import openai

from pipelines.tools import ToolCall
from voice.errors import ProviderError, ProviderRateLimited, ProviderTimeout
from voice.redact import redact_url
from voice.resilience import CircuitBreaker, retry_after_s
from voice.usage import CHARS_PER_TOKEN, Usage, estimate_tokens

log = logging.getLogger(__name__)

Message = dict[str, Any]  # role and content; an assistant's tool_calls, a tool's reply


@dataclass
class ProviderTrace:
    """Which endpoint served one turn, and the fallbacks on the way (filled by
    `LLMChain` for the turn whose task set `TURN_TRACE`)."""

    served_by: str = ""
    fallbacks: list[str] = field(default_factory=list)  # "<endpoint>: <why>"
    usage: Usage = field(default_factory=Usage)  # tokens of every request, fallbacks' too
    model: str = ""  # the model name of the endpoint that served (for its price)

    @property
    def fallback(self) -> str:
        return "; ".join(self.fallbacks)


TURN_TRACE: ContextVar[ProviderTrace | None] = ContextVar("turn_trace", default=None)


class LanguageModel(Protocol):
    name: str

    def stream(self, messages: list[Message], tools: list[dict[str, Any]] | None = None,
               calls: list[ToolCall] | None = None) -> AsyncIterator[str]:
        """The reply's text deltas. With `tools`, the model may ask for tool calls
        instead of (or after) text: they are appended to `calls` when the stream ends."""
        ...


class OpenAIChat:
    """Streaming chat completions, checked: a first-token and an inter-token timeout,
    an overall deadline for the whole reply, and a stream that is not one (malformed
    JSON, chunks without a delta, an HTML page with status 200, no text at all) is a
    `ProviderError` (`llm_bad_output`): the turn gets its apology and the endpoint's
    breaker counts a failure."""

    def __init__(self, base_url: str | None, api_key: str, model: str, timeout_s: float,
                 max_tokens: int, first_token_timeout_s: float | None = None,
                 reply_timeout_s: float = 60.0) -> None:
        self._client = openai.AsyncOpenAI(base_url=base_url or None, api_key=api_key or "none",
                                          max_retries=0, timeout=timeout_s)
        self._model = model
        self._timeout_s = timeout_s
        self._first_token_timeout_s = first_token_timeout_s or timeout_s
        self._reply_timeout_s = reply_timeout_s
        self._max_tokens = max_tokens
        self.name = f"openai-compatible:{redact_url(base_url or '') or 'api.openai.com'}:{model}"
        self.model_id = model

    async def stream(self, messages: list[Message], tools: list[dict[str, Any]] | None = None,
                     calls: list[ToolCall] | None = None) -> AsyncIterator[str]:
        clock = _ReplyClock(self._first_token_timeout_s, self._timeout_s, self._reply_timeout_s)
        extra: dict[str, Any] = {"stream_options": {"include_usage": True}}
        if tools:
            extra["tools"] = tools
        wanted = _ToolCallParts()
        counted = _Counted(messages)
        try:
            async with asyncio.timeout(clock.wait()):
                response: Any = await self._client.chat.completions.create(
                    model=self._model, messages=messages,  # type: ignore[arg-type]
                    stream=True, max_tokens=self._max_tokens, **extra)
            try:
                iterator = aiter(response)
                while True:
                    async with asyncio.timeout(clock.wait()):
                        chunk = await anext(iterator, None)
                    if chunk is None:
                        break
                    counted.push(chunk)
                    if text := _content(chunk):
                        clock.first = False
                        yield text
                    if tools and wanted.push(chunk):
                        clock.first = False
            finally:
                await response.close()
                counted.report(wanted)
        except TimeoutError as exc:
            raise ProviderTimeout(clock.why(), provider=self.name, code="llm_timeout") from exc
        except openai.OpenAIError as exc:
            raise _translate(exc, self.name) from exc
        except (ValueError, TypeError, AttributeError, KeyError) as exc:  # not SSE, not JSON
            raise ProviderError(f"LLM stream malformed ({type(exc).__name__})",
                                provider=self.name, code="llm_bad_output") from exc
        if clock.first:
            raise ProviderError("LLM answered with no text (not a chat completion stream?)",
                                provider=self.name, code="llm_bad_output")
        if calls is not None:
            calls.extend(wanted.calls())

    async def close(self) -> None:
        await self._client.close()


class _ReplyClock:
    """How long the next wait may be: the first-token or inter-token timeout, and never
    past the deadline of the whole reply."""

    def __init__(self, first_token_s: float, between_s: float, reply_s: float) -> None:
        self._first_token_s, self._between_s = first_token_s, between_s
        self._deadline = asyncio.get_running_loop().time() + reply_s
        self._reply_s = reply_s
        self.first = True
        self._last_wait = first_token_s

    def wait(self) -> float:
        left = self._deadline - asyncio.get_running_loop().time()
        self._last_wait = min(self._first_token_s if self.first else self._between_s,
                              max(0.0, left))
        return self._last_wait

    def why(self) -> str:
        if self._deadline <= asyncio.get_running_loop().time():
            return f"LLM reply took longer than {self._reply_s:g} s"
        return (f"LLM gave no {'first ' if self.first else ''}token within "
                f"{self._last_wait:g} s")


class _ToolCallParts:
    """Tool calls assembled from a stream's deltas: each call's id and name come once,
    its arguments in pieces, several calls told apart by their index."""

    def __init__(self) -> None:
        self._parts: dict[int, dict[str, str]] = {}

    def push(self, chunk: Any) -> bool:
        """Takes a chunk's tool call deltas; whether it had any."""
        choices = getattr(chunk, "choices", None) or []
        delta = getattr(choices[0], "delta", None) if choices else None
        deltas = getattr(delta, "tool_calls", None) or []
        for d in deltas:
            index = d.index if isinstance(getattr(d, "index", None), int) else len(self._parts)
            part = self._parts.setdefault(index, {"id": "", "name": "", "arguments": ""})
            function = getattr(d, "function", None)
            call_id = getattr(d, "id", None)
            name = getattr(function, "name", None)
            arguments = getattr(function, "arguments", None)
            if isinstance(call_id, str):
                part["id"] = call_id
            if isinstance(name, str):
                part["name"] += name
            if isinstance(arguments, str):
                part["arguments"] += arguments
        return bool(deltas)

    def text(self) -> str:
        """The calls' names and arguments as the model wrote them (for a token estimate)."""
        return "".join(p["name"] + p["arguments"] for p in self._parts.values())

    def calls(self) -> list[ToolCall]:
        return [ToolCall(p["id"] or f"call_{i}", p["name"], p["arguments"])
                for i, p in sorted(self._parts.items())]


class _Counted:
    """One request's usage: the endpoint's own (`stream_options.include_usage`), or,
    when it sends none, an estimate from the characters in and out; reported into the
    turn's trace (`TURN_TRACE`) once the stream ends, however it ends."""

    def __init__(self, messages: list[Message]) -> None:
        self._messages = messages
        self._usage: Any = None
        self._text: list[str] = []

    def push(self, chunk: Any) -> None:
        if getattr(chunk, "usage", None) is not None:
            self._usage = chunk.usage
        self._text.append(_content(chunk))

    def report(self, calls: _ToolCallParts) -> None:
        trace = TURN_TRACE.get()
        if trace is None:
            return
        usage = self._usage
        prompt = getattr(usage, "prompt_tokens", None)
        completion = getattr(usage, "completion_tokens", None)
        if isinstance(prompt, int) and isinstance(completion, int):
            details = getattr(usage, "prompt_tokens_details", None)
            cached = getattr(details, "cached_tokens", None)
            trace.usage.llm(prompt, completion, cached if isinstance(cached, int) else 0)
            return
        asked = sum(len(json.dumps(m, default=str)) for m in self._messages)
        said = "".join(self._text) + calls.text()
        trace.usage.llm(-(-asked // CHARS_PER_TOKEN), estimate_tokens(said), estimated=True)


def _content(chunk: Any) -> str:
    """The text of one streamed chunk; "" for a chunk without one (role, usage, null)."""
    choices = getattr(chunk, "choices", None) or []
    delta = getattr(choices[0], "delta", None) if choices else None
    content = getattr(delta, "content", None)
    return content if isinstance(content, str) else ""


def _translate(exc: openai.OpenAIError, name: str) -> ProviderError:
    if isinstance(exc, openai.RateLimitError):
        return ProviderRateLimited("LLM rate limit (HTTP 429)", provider=name,
                                   code="llm_rate_limited", retry_after_s=retry_after_s(
                                       exc.response.headers.get("retry-after")))
    if isinstance(exc, openai.APITimeoutError):
        return ProviderTimeout("LLM request timed out", provider=name, code="llm_timeout")
    if isinstance(exc, openai.APIStatusError):
        return ProviderError(f"LLM endpoint answered HTTP {exc.status_code}", provider=name,
                             code="llm_error")
    if isinstance(exc, openai.APIConnectionError):
        return ProviderError("LLM endpoint unreachable", provider=name, code="llm_unreachable")
    return ProviderError(f"LLM failed: {type(exc).__name__}", provider=name, code="llm_error")


class EchoResponder:
    """Offline stand-in for an LLM: repeats back what it heard. Not an assistant."""

    name = "echo (--llm echo)"

    async def stream(self, messages: list[Message], tools: list[dict[str, Any]] | None = None,
                     calls: list[ToolCall] | None = None) -> AsyncIterator[str]:
        heard = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        heard = heard.strip().rstrip(".?!")
        reply = f"You said: {heard}." if heard else "I did not catch that."
        for i, word in enumerate(reply.split(" ")):
            yield word if i == 0 else " " + word
            await asyncio.sleep(0)

    async def close(self) -> None:
        return None


@dataclass
class Endpoint:
    model: LanguageModel
    breaker: CircuitBreaker


CONTINUE_PROMPT = ("Your reply above was cut off. Continue it exactly where it stopped, "
                   "without repeating anything already said.")


class LLMChain:
    """Endpoints in order of preference; see the module docstring. `served_by` and
    `fallback_reason` describe the last turn (the latency event reports them)."""

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        if not endpoints:
            raise ValueError("an LLM chain needs at least one endpoint")
        self.endpoints = list(endpoints)
        self.name = self.endpoints[0].model.name

    async def stream(self, messages: list[Message], tools: list[dict[str, Any]] | None = None,
                     calls: list[ToolCall] | None = None) -> AsyncIterator[str]:
        said = ""  # produced so far in this turn, by any endpoint
        trace = TURN_TRACE.get() or ProviderTrace()
        reasons = trace.fallbacks
        last_error: ProviderError | None = None
        for endpoint in self.endpoints:
            model, breaker = endpoint.model, endpoint.breaker
            if not breaker.allow() and endpoint is not self.endpoints[-1]:
                reasons.append(f"{model.name}: breaker open")
                continue
            if reasons:
                log.warning("LLM fallback to %s (%s)", model.name, "; ".join(reasons))
            asked = messages if not said else [
                *messages, {"role": "assistant", "content": said},
                {"role": "system", "content": CONTINUE_PROMPT}]
            repeat = RepeatFilter(said)
            try:
                async for delta in model.stream(asked, tools, calls):
                    text = repeat.push(delta)
                    if text:
                        said += text
                        yield text
                text = repeat.flush()
                if text:
                    said += text
                    yield text
            except ProviderError as exc:
                retry_after = exc.retry_after_s if isinstance(exc, ProviderRateLimited) else None
                breaker.record_failure(exc.code, retry_after)
                reasons.append(f"{model.name}: {exc.code}")
                last_error = exc
                log.warning("LLM %s failed%s: %s", model.name,
                            " mid-reply" if said else "", exc)
                continue
            breaker.record_success()
            trace.served_by = model.name
            trace.model = getattr(model, "model_id", "")
            for passed in self.endpoints[: self.endpoints.index(endpoint)]:
                passed.breaker.diverted += 1
            if reasons:
                log.info("LLM turn served by %s after fallback (%s)", model.name,
                         trace.fallback)
            return
        assert last_error is not None  # the last endpoint is always tried
        raise last_error

    async def close(self) -> None:
        for endpoint in self.endpoints:
            close = getattr(endpoint.model, "close", None)
            if close is not None:
                await close()


class RepeatFilter:
    """Drops the start of a continuation that repeats `said` (a fallback endpoint that
    began the reply again instead of continuing it). Compares words, ignoring case and
    punctuation; text that departs from `said` passes through unchanged."""

    _WORDS = re.compile(r"[\w']+")

    def __init__(self, said: str) -> None:
        self._said = [w.lower() for w in self._WORDS.findall(said)]
        self._buffer = ""
        self._deciding = bool(self._said)

    def push(self, delta: str) -> str:
        if not self._deciding:
            return delta
        self._buffer += delta
        words = self._WORDS.findall(self._buffer.lower())
        complete = words if self._buffer[-1:].isspace() or not words else words[:-1]
        n = len(self._said)
        if complete[:n] != self._said[: len(complete)]:
            return self._release(self._buffer)
        if len(complete) >= n:
            return self._release(self._after(n))
        return ""

    def flush(self) -> str:
        if not self._deciding:
            return ""
        words = self._WORDS.findall(self._buffer.lower())
        if words == self._said[: len(words)]:
            return self._release(self._after(len(words)))
        return self._release(self._buffer)

    def _after(self, count: int) -> str:
        """The buffer after its first `count` words (and the punctuation that follows)."""
        matches = list(self._WORDS.finditer(self._buffer))
        if count == 0 or not matches:
            return self._buffer
        rest = self._buffer[matches[count - 1].end():]
        return rest.lstrip(".,;:!?") if rest.strip(" .,;:!?") else ""

    def _release(self, text: str) -> str:
        self._deciding = False
        self._buffer = ""
        return text
