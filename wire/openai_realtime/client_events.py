"""Client events of the OpenAI Realtime API (GA), both ways, sans-I/O.

As a client (the realtime pipeline, talking to a provider): the events it sends are
built here as JSON-ready dicts with the names and fields of `openai.types.realtime`
(`session_update`, `input_audio_append`, ...). As a server (our /v1/realtime
endpoint): `parse_client_event(text)` gives one typed, frozen event or raises
`RealtimeApiError`, which carries the fields of the protocol's `error` event (type,
code, param, and the offending client event's `event_id`), so the connection can
answer with that event and carry on. Shapes follow `RealtimeClientEvent`. The server
events are in `server_events`.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from voice.errors import ProtocolError
from wire.openai_realtime.server_events import PROVIDER_RATE, TurnDetection

# -- as a client: the events we send to a provider -------------------------------------


def new_event_id() -> str:
    return "event_" + secrets.token_hex(10)


def session_update(instructions: str, voice: str, turn_detection: TurnDetection,
                   silence_ms: int, language: str,
                   transcription_model: str = "gpt-4o-mini-transcribe",
                   tools: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Audio in and out as 24 kHz PCM, input transcription on, turn detection as chosen
    (`local`: none at the provider; the service commits each turn itself), and the
    function tools the service runs for the provider (`tools`, in the Realtime form)."""
    detection: dict[str, Any] | None
    if turn_detection == "server_vad":
        detection = {"type": "server_vad", "silence_duration_ms": silence_ms,
                     "prefix_padding_ms": 300, "create_response": True,
                     "interrupt_response": True}
    elif turn_detection == "semantic_vad":
        detection = {"type": "semantic_vad", "create_response": True,
                     "interrupt_response": True}
    else:
        detection = None
    pcm = {"type": "audio/pcm", "rate": PROVIDER_RATE}
    return {"type": "session.update", "session": {
        "type": "realtime",
        "instructions": instructions,
        "output_modalities": ["audio"],
        "audio": {
            "input": {"format": pcm, "turn_detection": detection,
                      "transcription": {"model": transcription_model, "language": language}},
            "output": {"format": pcm, "voice": voice},
        },
        **({"tools": tools, "tool_choice": "auto"} if tools else {}),
    }}


def function_call_output(call_id: str, output: str) -> dict[str, Any]:
    return {"type": "conversation.item.create", "item": {
        "type": "function_call_output", "call_id": call_id, "output": output}}


def input_audio_append(pcm: bytes) -> dict[str, Any]:
    return {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode("ascii")}


def input_audio_commit() -> dict[str, Any]:
    return {"type": "input_audio_buffer.commit"}


def input_audio_clear() -> dict[str, Any]:
    return {"type": "input_audio_buffer.clear"}


def response_create() -> dict[str, Any]:
    return {"type": "response.create"}


def response_cancel(response_id: str, event_id: str) -> dict[str, Any]:
    return {"type": "response.cancel", "event_id": event_id, "response_id": response_id}


def item_truncate(item_id: str, audio_end_ms: int, event_id: str) -> dict[str, Any]:
    return {"type": "conversation.item.truncate", "event_id": event_id, "item_id": item_id,
            "content_index": 0, "audio_end_ms": audio_end_ms}


def item_delete(item_id: str, event_id: str) -> dict[str, Any]:
    return {"type": "conversation.item.delete", "event_id": event_id, "item_id": item_id}


def text_item_create(role: Literal["user", "assistant"], text: str) -> dict[str, Any]:
    """A text message for the provider's conversation (history after a reconnect)."""
    part = {"type": "input_text" if role == "user" else "output_text", "text": text}
    return {"type": "conversation.item.create",
            "item": {"type": "message", "role": role, "content": [part]}}


def encode(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"))


def provider_url(url: str, model: str) -> str:
    """`url` with `?model=` added unless it already names one."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if model and not any(key == "model" for key, _ in query):
        query.append(("model", model))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))


# -- as a server: the events a client sends us -----------------------------------------

CLIENT_EVENT_TYPES = (
    "session.update", "input_audio_buffer.append", "input_audio_buffer.commit",
    "input_audio_buffer.clear", "conversation.item.create", "conversation.item.delete",
    "conversation.item.truncate", "conversation.item.retrieve", "response.create",
    "response.cancel", "output_audio_buffer.clear",
)


class RealtimeApiError(ProtocolError):
    """A client event we refuse; becomes the protocol's `error` event (never a close)."""

    def __init__(self, message: str, *, code: str, param: str | None = None,
                 event_id: str | None = None, error_type: str = "invalid_request_error") -> None:
        super().__init__(message, code=code)
        self.param = param
        self.event_id = event_id
        self.error_type = error_type

    def with_event_id(self, event_id: str | None) -> RealtimeApiError:
        return RealtimeApiError(self.message, code=self.code, param=self.param,
                                event_id=event_id, error_type=self.error_type)


@dataclass(frozen=True)
class SessionUpdate:
    event_id: str | None
    session: dict[str, Any]


@dataclass(frozen=True)
class AudioAppend:
    event_id: str | None
    pcm: bytes


@dataclass(frozen=True)
class AudioCommit:
    event_id: str | None


@dataclass(frozen=True)
class AudioClear:
    event_id: str | None


@dataclass(frozen=True)
class ItemCreate:
    event_id: str | None
    item: dict[str, Any]
    previous_item_id: str | None


@dataclass(frozen=True)
class ItemDelete:
    event_id: str | None
    item_id: str


@dataclass(frozen=True)
class ItemTruncate:
    event_id: str | None
    item_id: str
    content_index: int
    audio_end_ms: int


@dataclass(frozen=True)
class ResponseCreate:
    event_id: str | None
    response: dict[str, Any]


@dataclass(frozen=True)
class ResponseCancel:
    event_id: str | None
    response_id: str | None


ClientEvent = (SessionUpdate | AudioAppend | AudioCommit | AudioClear | ItemCreate | ItemDelete
               | ItemTruncate | ResponseCreate | ResponseCancel)


def unsupported(what: str, param: str | None = None,
                event_id: str | None = None) -> RealtimeApiError:
    return RealtimeApiError(f"{what} is not supported by this server (see docs/realtime.md)",
                            code="unsupported", param=param, event_id=event_id)


class _Reader:
    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data
        raw_id = data.get("event_id")
        self.event_id = raw_id if isinstance(raw_id, str) else None

    def _error(self, message: str, code: str, param: str) -> RealtimeApiError:
        return RealtimeApiError(message, code=code, param=param, event_id=self.event_id)

    def required(self, name: str, kind: type, kind_name: str) -> Any:
        if name not in self._data:
            raise self._error(f"Missing required parameter: '{name}'.",
                              "missing_required_parameter", name)
        value = self._data[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self._error(f"Invalid type for '{name}': expected {kind_name}.",
                              "invalid_type", name)
        return value

    def optional(self, name: str, kind: type, kind_name: str) -> Any:
        if self._data.get(name) is None:
            return None
        return self.required(name, kind, kind_name)

    def non_negative(self, name: str) -> int:
        value: int = self.required(name, int, "an integer")
        if value < 0:
            raise self._error(f"Invalid value for '{name}': must be >= 0.", "invalid_value", name)
        return value


def parse_client_event(message: str) -> ClientEvent:
    try:
        data = json.loads(message)
    except (ValueError, RecursionError) as exc:
        raise RealtimeApiError(f"The event is not valid JSON: {str(exc)[:80]}",
                               code="invalid_json") from exc
    if not isinstance(data, dict):
        raise RealtimeApiError("The event must be a JSON object.", code="invalid_event")
    reader = _Reader(data)
    kind = reader.required("type", str, "a string")
    if kind not in CLIENT_EVENT_TYPES:
        raise RealtimeApiError(f"Invalid value: '{kind[:60]}'. Supported values are: "
                               + ", ".join(f"'{t}'" for t in CLIENT_EVENT_TYPES) + ".",
                               code="invalid_value", param="type", event_id=reader.event_id)
    parser = _PARSERS.get(kind)
    if parser is None:
        raise unsupported(f"'{kind}'", "type", reader.event_id)
    return parser(reader)


def _session_update(r: _Reader) -> ClientEvent:
    return SessionUpdate(r.event_id, r.required("session", dict, "an object"))


def _append(r: _Reader) -> ClientEvent:
    audio: str = r.required("audio", str, "a base64 string")
    try:
        pcm = base64.b64decode(audio, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RealtimeApiError("Invalid value for 'audio': not valid base64.",
                               code="invalid_value", param="audio",
                               event_id=r.event_id) from exc
    if len(pcm) % 2:
        raise RealtimeApiError("Invalid value for 'audio': 16-bit PCM needs an even number "
                               "of bytes.", code="invalid_value", param="audio",
                               event_id=r.event_id)
    return AudioAppend(r.event_id, pcm)


def _item_create(r: _Reader) -> ClientEvent:
    return ItemCreate(r.event_id, r.required("item", dict, "an object"),
                      r.optional("previous_item_id", str, "a string"))


def _item_delete(r: _Reader) -> ClientEvent:
    return ItemDelete(r.event_id, r.required("item_id", str, "a string"))


def _item_truncate(r: _Reader) -> ClientEvent:
    return ItemTruncate(r.event_id, r.required("item_id", str, "a string"),
                        r.non_negative("content_index"), r.non_negative("audio_end_ms"))


def _response_create(r: _Reader) -> ClientEvent:
    return ResponseCreate(r.event_id, r.optional("response", dict, "an object") or {})


def _response_cancel(r: _Reader) -> ClientEvent:
    return ResponseCancel(r.event_id, r.optional("response_id", str, "a string"))


_PARSERS = {
    "session.update": _session_update,
    "input_audio_buffer.append": _append,
    "input_audio_buffer.commit": lambda r: AudioCommit(r.event_id),
    "input_audio_buffer.clear": lambda r: AudioClear(r.event_id),
    "conversation.item.create": _item_create,
    "conversation.item.delete": _item_delete,
    "conversation.item.truncate": _item_truncate,
    "response.create": _response_create,
    "response.cancel": _response_cancel,
}
