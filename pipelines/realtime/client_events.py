"""The client events the realtime pipeline sends, built in one place as JSON-ready dicts
with the names and fields of `openai.types.realtime` (GA). Sans-I/O.
"""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pipelines.realtime.protocol import PROVIDER_RATE, TurnDetection


def new_event_id() -> str:
    return "event_" + secrets.token_hex(10)


def session_update(instructions: str, voice: str, turn_detection: TurnDetection,
                   silence_ms: int, language: str,
                   transcription_model: str = "gpt-4o-mini-transcribe") -> dict[str, Any]:
    """Audio in and out as 24 kHz PCM, input transcription on, turn detection as chosen
    (`local`: none at the provider; the service commits each turn itself)."""
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
    }}


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
