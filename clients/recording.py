"""What every call client records on its own clock, and the questions asked of it.

`RecordingClient` is the one base of the WebSocket, WebRTC and SIP clients: it keeps
the events received, the reply audio with a simple playback model (each chunk starts
when it arrives or when the previous one ends, whichever is later: a listener playing
on arrival), and when each piece of caller audio left. The figures `voice bench`
reports come from here, the same for every transport.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from voice.audio import Int16Array, rms_dbfs

AUDIBLE_DBFS = -50.0


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


class RecordingClient:
    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self.record = ClientRecord()
        self.close_code: int | None = None
        self.close_reason = ""
        # set, then replaced, on every change: a waiter checks, then waits on the current one
        self._changed = asyncio.Event()
        self._play_end_ns = 0
        self._closed = False
        self.token: str | None = None  # an API key or client secret, sent as a bearer

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    # -- recording (for the subclasses; the *_now forms for synchronous callbacks) -----
    def _notify_now(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _notify(self) -> None:
        self._notify_now()

    def _add_event_now(self, event: dict[str, Any]) -> None:
        event["_received_ns"] = time.monotonic_ns()
        self.record.events.append(event)
        self._notify_now()

    async def _add_event(self, event: dict[str, Any]) -> None:
        self._add_event_now(event)

    def _add_audio(self, samples: Int16Array, now: int, drained: bool = False) -> None:
        """`drained`: the listener's buffer emptied before this chunk (it follows a pause
        in a continuous stream), so it plays on arrival."""
        start = now if drained else max(now, self._play_end_ns)
        self._play_end_ns = start + len(samples) * 1_000_000_000 // self.sample_rate
        self.record.audio.append(PlayedChunk(now, start, samples))

    def _mark_closed_now(self, code: int | None, reason: str) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        self._closed = True
        self._notify_now()

    async def _mark_closed(self, code: int | None, reason: str) -> None:
        self._mark_closed_now(code, reason)

    # -- sending -----------------------------------------------------------------------
    async def paced(self, samples: Int16Array, chunk: int, speed: float,
                    send: Callable[[Int16Array], Awaitable[None]],
                    ended: tuple[type[BaseException], ...] = ()) -> None:
        """Send `samples` in chunks, each when it would have been captured (x speed),
        as a microphone does, until the call has closed; `ended`: the errors of a send
        that raced the service's normal close (the assistant hung up), which are not
        errors."""
        start = time.monotonic()
        for i in range(0, len(samples), chunk):
            due = start + (i + chunk) / self.sample_rate / speed
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if self.closed:
                return
            try:
                await send(samples[i: i + chunk])
            except ended:
                return

    # -- questions ---------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    async def wait_closed(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not self.closed:
                await self._changed.wait()

    async def wait_for(self, event_type: str, timeout: float = 10.0, after: int = 0,
                       **match: Any) -> dict[str, Any]:
        """The first event of this type (index >= after) matching the given fields."""
        async with asyncio.timeout(timeout):
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
        """When the chunk holding this (session-rate) sample index left."""
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
