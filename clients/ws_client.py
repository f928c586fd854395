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
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import numpy as np
import websockets
from websockets.asyncio.client import ClientConnection

from voice.audio import Int16Array, array_to_pcm16_bytes, pcm16_bytes_to_array, rms_dbfs

AUDIBLE_DBFS = -50.0


def websocket_url(url: str, sample_rate: int, pipeline: str | None = None) -> str:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path if parts.path not in ("", "/") else "/ws"
    query = {"sample_rate": str(sample_rate)}
    if pipeline:
        query["pipeline"] = pipeline
    return urlunsplit((scheme, parts.netloc, path, urlencode(query), ""))


@dataclass
class PlayedChunk:
    arrival_ns: int
    play_ns: int  # when a listener playing on arrival starts hearing it
    samples: Int16Array


@dataclass
class ClientRecord:
    events: list[dict[str, Any]] = field(default_factory=list)
    audio: list[PlayedChunk] = field(default_factory=list)
    sent: list[tuple[int, int]] = field(default_factory=list)  # (end sample, send ns)


class VoiceClient:
    def __init__(self, url: str, sample_rate: int = 16000, pipeline: str | None = None) -> None:
        self.url = websocket_url(url, sample_rate, pipeline)
        self.sample_rate = sample_rate
        self.record = ClientRecord()
        self.session: dict[str, Any] = {}
        self._ws: ClientConnection | None = None
        self._receiver: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()
        self._play_end_ns = 0
        self._sent_samples = 0
        self.close_code: int | None = None
        self.close_reason = ""
        self._closed = False

    async def __aenter__(self) -> VoiceClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self, timeout: float = 10.0) -> None:
        self._ws = await websockets.connect(self.url, max_size=None, compression=None,
                                            open_timeout=timeout)
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
                now = time.monotonic_ns()
                if isinstance(message, bytes):
                    self._on_audio(message, now)
                else:
                    event = json.loads(message)
                    event["_received_ns"] = now
                    self.record.events.append(event)
                async with self._changed:
                    self._changed.notify_all()
        except websockets.ConnectionClosed:
            pass
        finally:
            self._closed = True
            self.close_code = self._ws.close_code
            self.close_reason = self._ws.close_reason or ""
            async with self._changed:
                self._changed.notify_all()

    def _on_audio(self, message: bytes, now: int) -> None:
        samples = pcm16_bytes_to_array(message)
        start = max(now, self._play_end_ns)
        self._play_end_ns = start + len(samples) * 1_000_000_000 // self.sample_rate
        self.record.audio.append(PlayedChunk(now, start, samples))

    async def wait_closed(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout), self._changed:
            while not self.closed:
                await self._changed.wait()

    @property
    def closed(self) -> bool:
        return self._closed

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
        """Send samples in chunks, each when it would have been captured (x speed)."""
        chunk = self.sample_rate * chunk_ms // 1000
        start = time.monotonic()
        for i in range(0, len(samples), chunk):
            due = start + (i + chunk) / self.sample_rate / speed
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if self.closed:
                return
            await self.send_audio(samples[i: i + chunk])

    async def stream_silence(self, seconds: float, chunk_ms: int = 20) -> None:
        await self.stream(np.zeros(int(seconds * self.sample_rate), np.int16), chunk_ms)

    async def wait_for(self, event_type: str, timeout: float = 10.0, after: int = 0,
                       **match: Any) -> dict[str, Any]:
        """The first event of this type (index >= after) matching the given fields."""
        async with asyncio.timeout(timeout), self._changed:
            while True:
                for event in self.record.events[after:]:
                    if event["type"] == event_type and all(
                            event.get(k) == v for k, v in match.items()):
                        return event
                if self.closed:
                    raise ConnectionError(f"closed ({self.close_code}) before {event_type}")
                await self._changed.wait()

    def events_of(self, event_type: str) -> list[dict[str, Any]]:
        """Events of one type in arrival order; "*" for all of them."""
        return [e for e in self.record.events if event_type in ("*", e["type"])]

    def sent_time_ns(self, sample_index: int) -> int | None:
        """When the chunk holding this (session-rate) sample index was sent."""
        for end, sent_ns in self.record.sent:
            if end > sample_index:
                return sent_ns
        return None

    def first_audible_ns(self, after_ns: int) -> int | None:
        """When a listener first hears reply audio that arrived after `after_ns`."""
        window = self.sample_rate // 100
        for chunk in self.record.audio:
            if chunk.arrival_ns < after_ns:
                continue
            for i in range(0, len(chunk.samples), window):
                part = chunk.samples[i: i + window]
                if part.size and rms_dbfs(part) > AUDIBLE_DBFS:
                    return chunk.play_ns + i * 1_000_000_000 // self.sample_rate
        return None

    def reply_audio(self, after_ns: int = 0) -> Int16Array:
        parts = [c.samples for c in self.record.audio if c.arrival_ns >= after_ns]
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)

    def playback_end_ns(self) -> int:
        return self._play_end_ns
