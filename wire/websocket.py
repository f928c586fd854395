"""The WebSocket wire contract, sans-I/O (docs/protocol.md has the full text).

Client → server: binary messages of 16-bit little-endian mono PCM at the session
rate; text messages of JSON objects with a `type`. Server → client: binary reply
audio in the same format, and JSON events (`voice.events`). This module only turns
wire messages into typed values or a `ProtocolError` naming what was wrong.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from voice.audio import Int16Array, pcm16_bytes_to_array
from voice.errors import MessageTooLarge, ProtocolError
from voice.events import Event
from voice.settings import SUPPORTED_SAMPLE_RATES

DEFAULT_SAMPLE_RATE = 16000

# Close codes (RFC 6455 section 7.4 and the private range 4000-4999)
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # the service is shutting down
CLOSE_POLICY = 1008  # a bad session parameter (for example sample_rate)
CLOSE_TOO_LARGE = 1009  # a message over max_message_bytes
CLOSE_TRY_AGAIN = 1013  # at capacity (when the handshake check was raced)
CLOSE_IDLE = 4008  # the client sent nothing for idle_timeout_s

CLIENT_MESSAGE_TYPES = frozenset({"ping", "response.cancel", "session.end", "dtmf",
                                  "session.update"})
# what `session.update` may carry, and the checks of its shape (its values are checked
# by the pipeline, which knows the tools and presets)
SESSION_FIELDS = ("instructions", "tools", "turn_preset", "voice", "language")
MAX_INSTRUCTIONS_CHARS = 20_000
DTMF_DIGITS = frozenset("0123456789*#ABCD")


@dataclass(frozen=True)
class AudioMessage:
    samples: Int16Array


@dataclass(frozen=True)
class ControlMessage:
    type: str
    data: dict[str, Any]


ClientMessage = AudioMessage | ControlMessage


def parse_sample_rate(query: str) -> int:
    values = parse_qs(query, keep_blank_values=True).get("sample_rate")
    if not values:
        return DEFAULT_SAMPLE_RATE
    raw = values[-1]
    if not re.fullmatch(r"[0-9]{1,6}", raw) or int(raw) not in SUPPORTED_SAMPLE_RATES:
        allowed = ", ".join(str(r) for r in SUPPORTED_SAMPLE_RATES)
        raise ProtocolError(f"unsupported sample_rate {raw[:20]!r}; use one of {allowed}",
                            code="invalid_sample_rate")
    return int(raw)


def parse_query_param(query: str, name: str) -> str | None:
    values = parse_qs(query, keep_blank_values=True).get(name)
    return values[-1] if values else None


def parse_client_message(message: bytes | str, max_bytes: int) -> ClientMessage:
    size = len(message) if isinstance(message, bytes) else len(message.encode())
    if size > max_bytes:
        raise MessageTooLarge(f"message of {size} bytes is over the {max_bytes}-byte limit")
    if isinstance(message, bytes):
        if len(message) % 2:
            raise ProtocolError(f"audio message of {len(message)} bytes: 16-bit PCM needs an "
                                "even number of bytes", code="invalid_audio")
        return AudioMessage(pcm16_bytes_to_array(message))
    try:
        return _parse_control(message)
    except ProtocolError:
        raise
    except Exception as exc:  # a shape the checks below did not foresee: still refused
        raise ProtocolError(f"the message could not be read ({type(exc).__name__})",
                            code="invalid_message") from exc


def _parse_control(text: str) -> ControlMessage:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise ProtocolError(f"text message is not JSON: {reason}", code="invalid_json") from exc
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ProtocolError("text message must be a JSON object with a string 'type'",
                            code="invalid_message")
    if data["type"] not in CLIENT_MESSAGE_TYPES:
        known = ", ".join(sorted(CLIENT_MESSAGE_TYPES))
        raise ProtocolError(f"unknown message type {data['type'][:40]!r}; known: {known}",
                            code="unknown_type")
    digit = data.get("digit")
    if data["type"] == "dtmf" and not (isinstance(digit, str) and digit in DTMF_DIGITS):
        raise ProtocolError("dtmf needs 'digit': one of 0-9, *, #, A-D", code="invalid_message")
    if data["type"] == "session.update":
        return ControlMessage(type="session.update", data={
            "type": "session.update", "session": parse_session_fields(data.get("session"))})
    return ControlMessage(type=data["type"], data=data)


def parse_session_fields(session: Any) -> dict[str, Any]:
    """The fields of a `session.update`, their types checked; a `ProtocolError`
    (`invalid_session_update`) names the first field that is wrong."""
    def wrong(message: str) -> ProtocolError:
        return ProtocolError(message, code="invalid_session_update")

    if not isinstance(session, dict) or not session:
        raise wrong("session.update needs 'session': an object of the fields to change "
                    f"({', '.join(SESSION_FIELDS)})")
    for name in session:
        if name not in SESSION_FIELDS:
            raise wrong(f"unknown session field {str(name)[:40]!r}; known: "
                        f"{', '.join(SESSION_FIELDS)}")
    instructions = session.get("instructions")
    if "instructions" in session and not (
            isinstance(instructions, str) and 0 < len(instructions) <= MAX_INSTRUCTIONS_CHARS):
        raise wrong(f"session.instructions must be a string of 1-{MAX_INSTRUCTIONS_CHARS} "
                    "characters")
    tools = session.get("tools")
    if "tools" in session and not (isinstance(tools, list) and len(tools) <= 128
                                   and all(isinstance(t, str) and len(t) <= 64 for t in tools)):
        raise wrong("session.tools must be a list of tool names")
    for name, longest in (("turn_preset", 40), ("voice", 100), ("language", 16)):
        value = session.get(name)
        if name in session and not (isinstance(value, str) and 0 < len(value) <= longest):
            raise wrong(f"session.{name} must be a string of 1-{longest} characters")
    return dict(session)


def encode_event(event: Event) -> str:
    return json.dumps(event.to_dict(), separators=(",", ":"))
