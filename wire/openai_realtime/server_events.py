"""The OpenAI Realtime API (GA) as the realtime pipeline speaks it, sans-I/O.

Theory of operation. The provider sends JSON text messages, one server event each,
named and shaped as in `openai.types.realtime` (the installed `openai` package):
`parse_server_event()` turns each into a small frozen dataclass carrying every field
the pipeline acts on, and every other documented server event into `OtherEvent`
(its type and id kept, so nothing passes unnoticed). Malformed input raises one
`ProtocolError` naming what was wrong. The client events the pipeline sends are built
in `client_events`. No sockets, no clocks.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Literal

from voice.audio import OPENAI_PCM_RATE
from voice.errors import ProtocolError

PROVIDER_RATE = OPENAI_PCM_RATE  # GA `audio/pcm`: 16-bit mono little-endian, 24 kHz only
TurnDetection = Literal["server_vad", "semantic_vad", "local"]

# Every server event type of `openai.types.realtime.RealtimeServerEvent`
SERVER_EVENT_TYPES = frozenset({
    "conversation.created", "conversation.item.created", "conversation.item.deleted",
    "conversation.item.input_audio_transcription.completed",
    "conversation.item.input_audio_transcription.delta",
    "conversation.item.input_audio_transcription.failed",
    "conversation.item.input_audio_transcription.segment", "conversation.item.retrieved",
    "conversation.item.truncated", "conversation.item.added", "conversation.item.done",
    "error", "input_audio_buffer.cleared", "input_audio_buffer.committed",
    "input_audio_buffer.dtmf_event_received", "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped", "input_audio_buffer.timeout_triggered",
    "rate_limits.updated", "response.output_audio.delta", "response.output_audio.done",
    "response.output_audio_transcript.delta", "response.output_audio_transcript.done",
    "response.content_part.added", "response.content_part.done", "response.created",
    "response.done", "response.function_call_arguments.delta",
    "response.function_call_arguments.done", "response.output_item.added",
    "response.output_item.done", "response.output_text.delta", "response.output_text.done",
    "session.created", "session.updated", "output_audio_buffer.started",
    "output_audio_buffer.stopped", "output_audio_buffer.cleared", "mcp_list_tools.in_progress",
    "mcp_list_tools.completed", "mcp_list_tools.failed", "response.mcp_call_arguments.delta",
    "response.mcp_call_arguments.done", "response.mcp_call.in_progress",
    "response.mcp_call.completed", "response.mcp_call.failed",
})


# -- server events -------------------------------------------------------------------
@dataclass(frozen=True)
class SessionConfigured:
    """`session.created` or `session.updated`: the provider's effective configuration."""
    event_id: str
    type: str
    session: dict[str, Any]


@dataclass(frozen=True)
class SpeechStarted:
    event_id: str
    audio_start_ms: int
    item_id: str


@dataclass(frozen=True)
class SpeechStopped:
    event_id: str
    audio_end_ms: int
    item_id: str


@dataclass(frozen=True)
class InputTranscribed:
    event_id: str
    item_id: str
    content_index: int
    transcript: str


@dataclass(frozen=True)
class InputTranscriptionFailed:
    event_id: str
    item_id: str
    message: str


@dataclass(frozen=True)
class ResponseCreated:
    event_id: str
    response_id: str


@dataclass(frozen=True)
class OutputItemAdded:
    event_id: str
    response_id: str
    item_id: str
    role: str | None


@dataclass(frozen=True)
class AudioDelta:
    event_id: str
    response_id: str
    item_id: str
    content_index: int
    pcm: bytes


@dataclass(frozen=True)
class TextDelta:
    """`response.output_audio_transcript.delta` (what the reply audio says) or
    `response.output_text.delta` (a text-only reply)."""
    event_id: str
    response_id: str
    item_id: str
    delta: str
    audio: bool


@dataclass(frozen=True)
class ErrorDetail:
    type: str
    code: str | None
    message: str
    param: str | None = None
    event_id: str | None = None  # the client event that caused it, if any

    @property
    def rate_limited(self) -> bool:
        return "rate_limit" in f"{self.type} {self.code or ''}"


@dataclass(frozen=True)
class FunctionCall:
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ResponseDone:
    event_id: str
    response_id: str
    status: str  # completed, cancelled, failed, incomplete
    reason: str | None
    error: ErrorDetail | None
    transcript: str  # the reply's words from its output items
    calls: tuple[FunctionCall, ...] = ()  # its function_call output items
    usage: ResponseUsage | None = None  # None: the provider sent none


@dataclass(frozen=True)
class ResponseUsage:
    """A response's tokens, as `response.done` counts them (input: the whole
    conversation the response read; cached: the part of it the provider had cached)."""

    text_in: int
    audio_in: int
    cached_in: int
    text_out: int
    audio_out: int


@dataclass(frozen=True)
class ServerError:
    event_id: str
    error: ErrorDetail


@dataclass(frozen=True)
class RateLimit:
    name: str | None
    limit: int | None
    remaining: int | None
    reset_seconds: float | None


@dataclass(frozen=True)
class RateLimitsUpdated:
    event_id: str
    rate_limits: tuple[RateLimit, ...]


@dataclass(frozen=True)
class ItemTruncated:
    event_id: str
    item_id: str
    content_index: int
    audio_end_ms: int


@dataclass(frozen=True)
class InputCommitted:
    """The input buffer became a user item (`item_id`)."""
    event_id: str
    item_id: str


@dataclass(frozen=True)
class OtherEvent:
    """A documented server event the pipeline has no use for (or a newer one)."""
    event_id: str
    type: str
    known: bool


ServerEvent = (SessionConfigured | SpeechStarted | SpeechStopped | InputTranscribed
               | InputTranscriptionFailed | ResponseCreated | OutputItemAdded | AudioDelta
               | TextDelta | ResponseDone | ServerError | RateLimitsUpdated | ItemTruncated
               | InputCommitted | OtherEvent)


class _Fields:
    """Typed access to one JSON object's fields; errors name the event and the field."""

    def __init__(self, data: dict[str, Any], where: str) -> None:
        self._data = data
        self._where = where

    def _fail(self, name: str, kind: str) -> ProtocolError:
        return ProtocolError(f"{self._where}: '{name}' must be {kind}", code="realtime_protocol")

    def raw(self, name: str) -> Any:
        """A field as it came, unchecked (None if missing)."""
        return self._data.get(name)

    def text(self, name: str) -> str:
        value = self._data.get(name)
        if not isinstance(value, str):
            raise self._fail(name, "a string")
        return value

    def opt_text(self, name: str) -> str | None:
        value = self._data.get(name)
        if value is not None and not isinstance(value, str):
            raise self._fail(name, "a string or null")
        return value

    def integer(self, name: str) -> int:
        value = self._data.get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._fail(name, "an integer")
        return value

    def opt_number(self, name: str) -> float | None:
        value = self._data.get(name)
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise self._fail(name, "a number or null")
        return value

    def mapping(self, name: str, optional: bool = False) -> dict[str, Any]:
        value = self._data.get(name)
        if value is None and optional:
            return {}
        if not isinstance(value, dict):
            raise self._fail(name, "an object")
        return value

    def array(self, name: str) -> list[Any]:
        value = self._data.get(name)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self._fail(name, "an array")
        return value


def parse_server_event(message: str | bytes) -> ServerEvent:
    try:
        data = json.loads(message)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"server event is not JSON: {exc}", code="realtime_protocol") from exc
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ProtocolError("server event must be a JSON object with a string 'type'",
                            code="realtime_protocol")
    kind: str = data["type"]
    f = _Fields(data, kind[:60])
    parser = _PARSERS.get(kind)
    if parser is None:
        return OtherEvent(event_id=f.opt_text("event_id") or "", type=kind,
                          known=kind in SERVER_EVENT_TYPES)
    return parser(f)


def _session(f: _Fields) -> ServerEvent:
    return SessionConfigured(f.text("event_id"), f.text("type"), f.mapping("session"))


def _speech_started(f: _Fields) -> ServerEvent:
    return SpeechStarted(f.text("event_id"), f.integer("audio_start_ms"), f.text("item_id"))


def _speech_stopped(f: _Fields) -> ServerEvent:
    return SpeechStopped(f.text("event_id"), f.integer("audio_end_ms"), f.text("item_id"))


def _transcribed(f: _Fields) -> ServerEvent:
    return InputTranscribed(f.text("event_id"), f.text("item_id"), f.integer("content_index"),
                            f.text("transcript"))


def _transcription_failed(f: _Fields) -> ServerEvent:
    error = _Fields(f.mapping("error"), "transcription error")
    return InputTranscriptionFailed(f.text("event_id"), f.text("item_id"),
                                    error.opt_text("message") or "transcription failed")


def _response_created(f: _Fields) -> ServerEvent:
    response = _Fields(f.mapping("response"), "response.created response")
    return ResponseCreated(f.text("event_id"), response.text("id"))


def _item_added(f: _Fields) -> ServerEvent:
    item = _Fields(f.mapping("item"), "response.output_item.added item")
    return OutputItemAdded(f.text("event_id"), f.text("response_id"), item.text("id"),
                           item.opt_text("role"))


def _audio_delta(f: _Fields) -> ServerEvent:
    try:
        pcm = base64.b64decode(f.text("delta"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError("response.output_audio.delta: 'delta' is not base64",
                            code="realtime_protocol") from exc
    return AudioDelta(f.text("event_id"), f.text("response_id"), f.text("item_id"),
                      f.integer("content_index"), pcm)


def _text_delta(f: _Fields) -> ServerEvent:
    return TextDelta(f.text("event_id"), f.text("response_id"), f.text("item_id"), f.text("delta"),
                     audio=f.text("type") == "response.output_audio_transcript.delta")


def _error_detail(data: dict[str, Any], where: str) -> ErrorDetail:
    f = _Fields(data, where)
    return ErrorDetail(type=f.opt_text("type") or "error", code=f.opt_text("code"),
                       message=f.opt_text("message") or "", param=f.opt_text("param"),
                       event_id=f.opt_text("event_id"))


def _response_done(f: _Fields) -> ServerEvent:
    response = _Fields(f.mapping("response"), "response.done response")
    details = _Fields(response.mapping("status_details", optional=True), "status_details")
    error_data = details.mapping("error", optional=True)
    words, calls = [], []
    for item in response.array("output"):
        if isinstance(item, dict) and item.get("type") == "function_call":
            call = _Fields(item, "response.done function_call")
            calls.append(FunctionCall(call.text("call_id"), call.text("name"),
                                      call.opt_text("arguments") or ""))
            continue
        parts = item.get("content") if isinstance(item, dict) else None
        for part in parts if isinstance(parts, list) else []:
            text = part.get("transcript") or part.get("text") if isinstance(part, dict) else None
            words.append(text if isinstance(text, str) else "")
    return ResponseDone(
        f.text("event_id"), response.text("id"), response.opt_text("status") or "completed",
        details.opt_text("reason"),
        _error_detail(error_data, "status_details.error") if error_data else None,
        "".join(words), tuple(calls), _response_usage(response.raw("usage")))


def _response_usage(data: Any) -> ResponseUsage | None:
    """The usage of a `response.done`, leniently: a field missing or of the wrong type
    counts 0 (the figures are for accounting, not worth failing a reply over)."""
    if not isinstance(data, dict):
        return None

    def number(mapping: Any, name: str) -> int:
        value = mapping.get(name) if isinstance(mapping, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) \
            and value >= 0 else 0

    inputs, outputs = data.get("input_token_details"), data.get("output_token_details")
    text_in, audio_in = number(inputs, "text_tokens"), number(inputs, "audio_tokens")
    text_out, audio_out = number(outputs, "text_tokens"), number(outputs, "audio_tokens")
    if not (inputs or outputs):  # totals only: all of it as text
        text_in, text_out = number(data, "input_tokens"), number(data, "output_tokens")
    return ResponseUsage(text_in, audio_in, number(inputs, "cached_tokens"), text_out,
                         audio_out)


def _server_error(f: _Fields) -> ServerEvent:
    return ServerError(f.text("event_id"), _error_detail(f.mapping("error"), "error.error"))


def _rate_limits(f: _Fields) -> ServerEvent:
    limits = []
    for raw in f.array("rate_limits"):
        if not isinstance(raw, dict):
            raise ProtocolError("rate_limits.updated: each rate limit must be an object",
                                code="realtime_protocol")
        r = _Fields(raw, "rate limit")
        limit, remaining = r.opt_number("limit"), r.opt_number("remaining")
        limits.append(RateLimit(r.opt_text("name"), None if limit is None else int(limit),
                                None if remaining is None else int(remaining),
                                r.opt_number("reset_seconds")))
    return RateLimitsUpdated(f.text("event_id"), tuple(limits))


def _truncated(f: _Fields) -> ServerEvent:
    return ItemTruncated(f.text("event_id"), f.text("item_id"), f.integer("content_index"),
                         f.integer("audio_end_ms"))


def _committed(f: _Fields) -> ServerEvent:
    return InputCommitted(f.text("event_id"), f.text("item_id"))


_PARSERS = {
    "input_audio_buffer.committed": _committed,
    "session.created": _session,
    "session.updated": _session,
    "input_audio_buffer.speech_started": _speech_started,
    "input_audio_buffer.speech_stopped": _speech_stopped,
    "conversation.item.input_audio_transcription.completed": _transcribed,
    "conversation.item.input_audio_transcription.failed": _transcription_failed,
    "response.created": _response_created,
    "response.output_item.added": _item_added,
    "response.output_audio.delta": _audio_delta,
    "response.output_audio_transcript.delta": _text_delta,
    "response.output_text.delta": _text_delta,
    "response.done": _response_done,
    "error": _server_error,
    "rate_limits.updated": _rate_limits,
    "conversation.item.truncated": _truncated,
}
