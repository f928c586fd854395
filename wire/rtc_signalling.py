"""The WebRTC signalling contract on the `/rtc` WebSocket, sans-I/O.

Theory of operation (docs/protocol.md, section "WebRTC"): one WebSocket per call.

    server → client  {"type": "config", "ice_servers": [...]}     at once, on open
    client → server  {"type": "offer", "sdp": "v=0..."}            once, ICE gathered
    server → client  {"type": "answer", "sdp": "v=0..."}           ICE gathered
    server → client  {"type": "error", "code": ..., "message": ...} then a close

No trickle ICE: both descriptions carry every candidate (aiortc gathers before it
answers). After the answer the socket carries nothing but stays open: it is the
call's lifeline, and its close code says why a call ended. This module turns text
into typed messages or a `ProtocolError` that names what was wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from voice.errors import MessageTooLarge, ProtocolError

# Close codes of the signalling socket (the WebSocket contract's, plus the peer timeout)
CLOSE_NORMAL = 1000  # session.end from the client, or the assistant hung up
CLOSE_GOING_AWAY = 1001  # the service is shutting down
CLOSE_POLICY = 1008  # a bad offer or parameter
CLOSE_TRY_AGAIN = 1013  # at capacity
CLOSE_PEER_TIMEOUT = 4008  # ICE never completed, or the peer's audio stopped


@dataclass(frozen=True)
class IceServer:
    urls: tuple[str, ...]
    username: str | None = None
    credential: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"urls": list(self.urls)}
        if self.username is not None:
            data["username"] = self.username
        if self.credential is not None:
            data["credential"] = self.credential
        return data


@dataclass(frozen=True)
class Offer:
    sdp: str


@dataclass(frozen=True)
class Answer:
    sdp: str


@dataclass(frozen=True)
class Config:
    ice_servers: tuple[IceServer, ...]


@dataclass(frozen=True)
class SignalError:
    code: str
    message: str


ServerSignal = Config | Answer | SignalError


def _load_object(text: str | bytes, max_bytes: int) -> dict[str, Any]:
    size = len(text) if isinstance(text, bytes) else len(text.encode())
    if size > max_bytes:
        raise MessageTooLarge(f"signalling message of {size} bytes is over the "
                              f"{max_bytes}-byte limit")
    if isinstance(text, bytes):
        raise ProtocolError("signalling messages are JSON text, not binary",
                            code="invalid_message")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("signalling message is not JSON", code="invalid_json") from exc
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ProtocolError("signalling message must be a JSON object with a string 'type'",
                            code="invalid_message")
    return data


def _sdp_field(data: dict[str, Any]) -> str:
    sdp = data.get("sdp")
    if not isinstance(sdp, str) or not sdp.startswith("v=0"):
        raise ProtocolError(f"{data['type']} needs 'sdp': a session description starting "
                            "with v=0", code="invalid_offer")
    return sdp


def parse_offer(text: str | bytes, max_bytes: int) -> Offer:
    """The client's one message: an SDP offer with an audio section."""
    data = _load_object(text, max_bytes)
    if data["type"] != "offer":
        raise ProtocolError(f"expected an offer, got {data['type'][:40]!r}",
                            code="unknown_type")
    sdp = _sdp_field(data)
    if not any(line.startswith("m=audio ") for line in sdp.splitlines()):
        raise ProtocolError("the offer has no audio section (m=audio): the call needs a "
                            "microphone track", code="invalid_offer")
    return Offer(sdp)


def parse_server_signal(text: str | bytes, max_bytes: int = 1 << 20) -> ServerSignal:
    """A message from the server, for clients."""
    data = _load_object(text, max_bytes)
    kind = data["type"]
    if kind == "answer":
        return Answer(_sdp_field(data))
    if kind == "config":
        servers = data.get("ice_servers")
        if not isinstance(servers, list):
            raise ProtocolError("config needs 'ice_servers': a list", code="invalid_message")
        return Config(tuple(_parse_ice_server(s) for s in servers))
    if kind == "error":
        return SignalError(str(data.get("code", "")), str(data.get("message", "")))
    raise ProtocolError(f"unknown signalling message {kind[:40]!r}", code="unknown_type")


def _parse_ice_server(data: object) -> IceServer:
    if not isinstance(data, dict):
        raise ProtocolError("each ICE server must be an object", code="invalid_message")
    urls = data.get("urls")
    url_list = [urls] if isinstance(urls, str) else urls
    if not isinstance(url_list, list) or not all(isinstance(u, str) for u in url_list):
        raise ProtocolError("an ICE server needs 'urls': a string or a list of them",
                            code="invalid_message")
    username, credential = data.get("username"), data.get("credential")
    return IceServer(tuple(url_list),
                     username if isinstance(username, str) else None,
                     credential if isinstance(credential, str) else None)


def encode_config(ice_servers: tuple[IceServer, ...]) -> str:
    return json.dumps({"type": "config", "ice_servers": [s.to_dict() for s in ice_servers]})


def encode_offer(sdp: str) -> str:
    return json.dumps({"type": "offer", "sdp": sdp})


def encode_answer(sdp: str) -> str:
    return json.dumps({"type": "answer", "sdp": sdp})


def encode_error(code: str, message: str) -> str:
    return json.dumps({"type": "error", "code": code, "message": message})
