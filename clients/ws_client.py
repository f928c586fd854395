"""Python client for the WebSocket contract, used by `voice call`, the tests and benches.

It streams PCM at real-time pace and records, on the client's own monotonic clock,
when each chunk left and when each reply chunk arrived. A simple playback model
(each chunk starts when it arrives or when the previous one ends, whichever is later)
tells when a listener would *hear* each reply sample: the figure users feel.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import numpy as np
import websockets
from websockets.asyncio.client import ClientConnection

from clients.recording import AUDIBLE_DBFS, ClientRecord, PlayedChunk, RecordingClient
from voice.audio import Int16Array, array_to_pcm16_bytes, pcm16_bytes_to_array

__all__ = ["AUDIBLE_DBFS", "ClientRecord", "PlayedChunk", "VoiceClient", "websocket_url"]


def websocket_url(url: str, sample_rate: int, pipeline: str | None = None) -> str:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path if parts.path not in ("", "/") else "/ws"
    query = {"sample_rate": str(sample_rate)}
    if pipeline:
        query["pipeline"] = pipeline
    return urlunsplit((scheme, parts.netloc, path, urlencode(query), ""))



class VoiceClient(RecordingClient):
    def __init__(self, url: str, sample_rate: int = 16000, pipeline: str | None = None) -> None:
        super().__init__(sample_rate)
        self.url = websocket_url(url, sample_rate, pipeline)
        self.session: dict[str, Any] = {}
        self._ws: ClientConnection | None = None
        self._receiver: asyncio.Task[None] | None = None
        self._sent_samples = 0

    async def __aenter__(self) -> VoiceClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self, timeout: float = 10.0) -> None:
        self._ws = await websockets.connect(self.url, max_size=None, compression=None,
                                            open_timeout=timeout,
                                            additional_headers=self.auth_headers())
        self._receiver = asyncio.create_task(self._receive(), name="voice-client-receiver")
        self.session = await self.wait_for("session.created", timeout=timeout)

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._receiver is not None:
            await asyncio.gather(self._receiver, return_exceptions=True)

    async def _receive(self) -> None:
        assert self._ws is not None
        try:
            async for message in self._ws:
                if isinstance(message, bytes):
                    self._add_audio(pcm16_bytes_to_array(message), time.monotonic_ns())
                    await self._notify()
                else:
                    await self._add_event(json.loads(message))
        except websockets.ConnectionClosed:
            pass
        finally:
            await self._mark_closed(self._ws.close_code, self._ws.close_reason or "")

    async def send_audio(self, samples: Int16Array) -> None:
        assert self._ws is not None
        await self._ws.send(array_to_pcm16_bytes(samples))
        self._sent_samples += len(samples)
        self.record.sent.append((self._sent_samples, time.monotonic_ns()))

    async def send_raw(self, message: bytes | str) -> None:
        assert self._ws is not None
        await self._ws.send(message)

    async def send_json(self, data: dict[str, Any]) -> None:
        await self.send_raw(json.dumps(data))

    async def stream(self, samples: Int16Array, chunk_ms: int = 20, speed: float = 1.0) -> None:
        """Send samples in chunks, each when it would have been captured (x speed).

        Stops when the service has closed the call; a send that races the service's
        normal close (the assistant hung up) is not an error."""
        await self.paced(samples, self.sample_rate * chunk_ms // 1000, speed, self.send_audio,
                         (websockets.ConnectionClosedOK,))

    async def stream_silence(self, seconds: float, chunk_ms: int = 20) -> None:
        await self.stream(np.zeros(int(seconds * self.sample_rate), np.int16), chunk_ms)
