"""Telephony media streams over WebSocket (Twilio Media Streams, Telnyx media
streaming), sans-I/O: text frames in, typed messages or a `ProtocolError` out; the
messages we send back as text.

Theory of operation. The provider opens a WebSocket to us and sends JSON text frames
whose `event` names the message: `connected` (first), `start` (the stream's ids and
media format), `media` (20 ms of the caller's audio, base64 G.711 at 8 kHz), `dtmf`,
`mark` (the echo of a mark we sent: the audio before it has been played to the
caller, or dropped by a `clear`), `stop` (the last), and Telnyx's `error`. We send
`media` (reply audio, base64 G.711), `mark` (after reply audio, to learn when the
caller has heard it) and `clear` (drop the audio the provider still buffers:
barge-in). The two providers agree on all of that; they differ in field names
(`streamSid`/`stream_id`, `mediaFormat.sampleRate`/`media_format.sample_rate`,
`customParameters`/`custom_parameters`), Twilio names the encoding `audio/x-mulaw`
where Telnyx says `PCMU` (or `PCMA`), and Twilio wants `streamSid` in every message
we send. One shape (`StreamStarted`, `MediaReceived`, ...) covers both.

Limits (hostile input gets a `ProtocolError` with one of the codes below, never
another exception): a frame over `max_bytes` (`message_too_large`); a binary frame,
bad UTF-8, bad JSON, nesting too deep, not an object (`invalid_message`); an unknown
`event` (`unknown_event`); a missing or mistyped field, ids over `MAX_ID_CHARS`,
more than `MAX_PARAMETERS` custom parameters (`invalid_field`); bad base64, an empty
payload or one over `MAX_PAYLOAD_BYTES` (`invalid_audio`); any format but mono G.711
at 8 kHz (`unsupported_media_format`).

The documents this follows:
- https://www.twilio.com/docs/voice/media-streams/websocket-messages
- https://www.twilio.com/docs/voice/twiml/stream
- https://www.twilio.com/docs/usage/webhooks/webhooks-security (X-Twilio-Signature)
- https://developers.telnyx.com/api-reference/websockets/stream-call-media-over-websocket
- https://developers.telnyx.com/docs/voice/programmable-voice/media-streaming
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from voice.errors import MessageTooLarge, ProtocolError

PROVIDERS = ("twilio", "telnyx")
SAMPLE_RATE = 8000
MAX_PAYLOAD_BYTES = 16_000  # 2 s of G.711 in one media frame (providers send 20 ms)
MAX_ID_CHARS = 128
MAX_NAME_CHARS = 256  # mark names, custom parameter names and values
MAX_PARAMETERS = 32
DTMF_DIGITS = frozenset("0123456789*#ABCD")
ENCODINGS = {"audio/x-mulaw": "PCMU", "PCMU": "PCMU", "PCMA": "PCMA"}
VOICE_EVENT = "voice.event"  # our extension: a session event, for clients that opt in
_NUMBER = re.compile(r"[0-9]{1,15}")


@dataclass(frozen=True)
class StreamConnected:
    protocol: str
    version: str
    auth_token: str = ""  # Telnyx: connected.x-telnyx-streaming-auth-token


@dataclass(frozen=True)
class StreamStarted:
    stream_id: str
    call_id: str  # Twilio callSid; Telnyx call_control_id
    account_id: str  # Twilio accountSid; Telnyx user_id
    encoding: str  # PCMU or PCMA
    tracks: tuple[str, ...] = ()
    parameters: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class MediaReceived:
    track: str
    chunk: int
    timestamp_ms: int
    payload: bytes  # G.711 bytes, one per sample at 8 kHz


@dataclass(frozen=True)
class KeyPressed:
    digit: str


@dataclass(frozen=True)
class MarkPlayed:
    name: str


@dataclass(frozen=True)
class StreamStopped:
    reason: str


@dataclass(frozen=True)
class ProviderReported:
    """Telnyx's `error` frame: something we sent was refused."""

    code: str
    detail: str


StreamMessage = (StreamConnected | StreamStarted | MediaReceived | KeyPressed | MarkPlayed
                 | StreamStopped | ProviderReported)


def parse_message(message: bytes | str, provider: str, max_bytes: int) -> StreamMessage:
    """One frame from `provider` ("twilio" or "telnyx") as a typed message."""
    size = len(message) if isinstance(message, bytes) else len(message.encode("utf-8",
                                                                               "replace"))
    if size > max_bytes:
        raise MessageTooLarge(f"frame of {size} bytes is over the {max_bytes}-byte limit")
    if isinstance(message, bytes):
        raise ProtocolError("binary frame: media streams send JSON text",
                            code="invalid_message")
    try:
        data = json.loads(message)
    except (ValueError, RecursionError):
        raise ProtocolError("frame is not JSON", code="invalid_message") from None
    if not isinstance(data, dict):
        raise ProtocolError("frame is not a JSON object", code="invalid_message")
    event = data.get("event")
    parse = _PARSERS.get(event) if isinstance(event, str) else None
    if parse is None:
        raise ProtocolError(f"unknown event {_shown(event)}", code="unknown_event")
    return parse(data, provider == "twilio")


def _connected(data: dict[str, Any], twilio: bool) -> StreamConnected:
    inner = data.get("connected")
    token = _text(inner, "x-telnyx-streaming-auth-token", 4096, "") \
        if isinstance(inner, dict) else ""
    return StreamConnected(_text(data, "protocol", 64, ""), _text(data, "version", 64, ""),
                           token)


def _start(data: dict[str, Any], twilio: bool) -> StreamStarted:
    start = _object(data, "start")
    fmt = _object(start, "mediaFormat" if twilio else "media_format")
    encoding = _text(fmt, "encoding", 64)
    rate = fmt.get("sampleRate" if twilio else "sample_rate")
    channels = fmt.get("channels", 1)
    if encoding not in ENCODINGS or type(rate) is not int or rate != SAMPLE_RATE \
            or type(channels) is not int or channels != 1:
        raise ProtocolError(f"media format {_shown(encoding)} at {_shown(rate)} Hz x "
                            f"{_shown(channels)}: only mono G.711 (PCMU, PCMA) at 8000 Hz",
                            code="unsupported_media_format")
    tracks = start.get("tracks", [])
    if not isinstance(tracks, list) or not all(isinstance(t, str) and len(t) <= 64
                                               for t in tracks[:8]) or len(tracks) > 8:
        raise ProtocolError("start.tracks must be a short list of names", code="invalid_field")
    return StreamStarted(
        stream_id=_text(start if twilio else data, "streamSid" if twilio else "stream_id",
                        MAX_ID_CHARS),
        call_id=_text(start, "callSid" if twilio else "call_control_id", MAX_ID_CHARS, ""),
        account_id=_text(start, "accountSid" if twilio else "user_id", MAX_ID_CHARS, ""),
        encoding=ENCODINGS[encoding], tracks=tuple(tracks),
        parameters=_parameters(start.get("customParameters" if twilio
                                         else "custom_parameters")))


def _parameters(raw: object) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or len(raw) > MAX_PARAMETERS:
        raise ProtocolError(f"custom parameters: at most {MAX_PARAMETERS} name/value pairs",
                            code="invalid_field")
    if not all(isinstance(k, str) and isinstance(v, str) and len(k) <= MAX_NAME_CHARS
               and len(v) <= MAX_NAME_CHARS for k, v in raw.items()):
        raise ProtocolError("custom parameters must be short strings", code="invalid_field")
    return dict(raw)


def _media(data: dict[str, Any], twilio: bool) -> MediaReceived:
    media = _object(data, "media")
    encoded = _text(media, "payload", MAX_PAYLOAD_BYTES * 4 // 3 + 4)
    try:
        payload = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("media.payload is not base64", code="invalid_audio") from None
    if not payload:
        raise ProtocolError("media.payload is empty", code="invalid_audio")
    return MediaReceived(track=_text(media, "track", 64, "inbound"),
                         chunk=_number(media, "chunk"), timestamp_ms=_number(media, "timestamp"),
                         payload=payload)


def _dtmf(data: dict[str, Any], twilio: bool) -> KeyPressed:
    digit = _text(_object(data, "dtmf"), "digit", 1)
    if digit not in DTMF_DIGITS:
        raise ProtocolError(f"dtmf.digit {_shown(digit)} is not a keypad key",
                            code="invalid_field")
    return KeyPressed(digit)


def _mark(data: dict[str, Any], twilio: bool) -> MarkPlayed:
    return MarkPlayed(_text(_object(data, "mark"), "name", MAX_NAME_CHARS))


def _stop(data: dict[str, Any], twilio: bool) -> StreamStopped:
    stop = data.get("stop")
    reason = _text(stop, "reason", 200, "") if isinstance(stop, dict) else ""
    return StreamStopped(reason or "the provider stopped the stream")


def _error(data: dict[str, Any], twilio: bool) -> ProviderReported:
    payload = data.get("payload")
    if not isinstance(payload, dict):
        return ProviderReported("", "")
    code = payload.get("code")
    return ProviderReported(str(code)[:20] if type(code) in (int, str) else "",
                            _text(payload, "detail", 500, "") or _text(payload, "title", 200, ""))


_PARSERS: dict[str, Callable[[dict[str, Any], bool], StreamMessage]] = {
    "connected": _connected, "start": _start, "media": _media, "dtmf": _dtmf,
            "mark": _mark, "stop": _stop, "error": _error}


def _object(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise ProtocolError(f"{key} must be an object", code="invalid_field")
    return value


def _text(data: dict[str, Any], key: str, limit: int, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or len(value) > limit:
        raise ProtocolError(f"{key} must be a string of at most {limit} characters",
                            code="invalid_field")
    return value


def _number(data: dict[str, Any], key: str) -> int:
    """Twilio and Telnyx send counters as strings of digits; a number is taken too."""
    value = data.get(key, "0")
    if type(value) is int and 0 <= value < 10**15:
        return value
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        return int(value)
    raise ProtocolError(f"{key} must be a count", code="invalid_field")


def _shown(value: object) -> str:
    return repr(value)[:40]


# -- what we send ------------------------------------------------------------------------
def media_message(provider: str, stream_id: str, payload: bytes) -> str:
    return _dumps(provider, stream_id, {"event": "media", "media": {
        "payload": base64.b64encode(payload).decode("ascii")}})


def mark_message(provider: str, stream_id: str, name: str) -> str:
    return _dumps(provider, stream_id, {"event": "mark", "mark": {"name": name}})


def clear_message(provider: str, stream_id: str) -> str:
    return _dumps(provider, stream_id, {"event": "clear"})


def voice_event_message(provider: str, stream_id: str, event: dict[str, Any]) -> str:
    """A session event (voice/events.py) for a client that asked for them with the
    custom parameter `voice_events=json`; not part of either provider's protocol."""
    return _dumps(provider, stream_id, {"event": VOICE_EVENT, "voice": event})


def _dumps(provider: str, stream_id: str, message: dict[str, Any]) -> str:
    if provider == "twilio":  # Twilio wants the stream in every message; Telnyx does not
        message["streamSid"] = stream_id
    return json.dumps(message, separators=(",", ":"))


def twilio_signature(auth_token: str, url: str, params: Mapping[str, str] | None = None
                     ) -> str:
    """X-Twilio-Signature: base64 HMAC-SHA1, keyed with the account's auth token, of the
    URL followed by each POST parameter's name and value in name order (none for a
    WebSocket handshake)."""
    pairs = params or {}
    signed = url + "".join(name + pairs[name] for name in sorted(pairs))
    digest = hmac.new(auth_token.encode(), signed.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")
