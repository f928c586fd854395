"""What serves a realtime session when its provider cannot (`realtime_fallback =
cascade`): the fallback as the pipeline sees it, the session as the fallback sees it,
and the caller audio the provider never heard, kept so the fallback can hear it."""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from typing import Any, Protocol

from voice.audio import Int16Array
from voice.events import Event, TurnLatency
from voice.session import SessionIO

log = logging.getLogger(__name__)

REPLAY_S = 10.0  # audio kept while the provider is not connected, for a fallback to hear


class Fallback(Protocol):
    """What serves a session whose realtime provider is unavailable (the cascade)."""

    name: str

    def push_audio(self, samples: Int16Array, arrival_ns: int) -> None: ...

    async def run(self) -> None: ...

    async def interrupt(self, reason: str) -> None: ...

    async def announce(self, text: str) -> None: ...

    async def handle_dtmf(self, digit: str) -> None: ...

    def update_session(self, fields: dict[str, Any]) -> dict[str, Any]: ...


class FallbackIO:
    """The session as the fallback sees it: its `turn.latency` events say why it served."""

    def __init__(self, io: SessionIO, why: str) -> None:
        self._io = io
        self._why = why
        self.sample_rate = io.sample_rate
        self.playout = io.playout

    def emit(self, event: Event) -> None:
        if isinstance(event, TurnLatency):
            event = dataclasses.replace(event, fallback="; ".join(
                part for part in (self._why, event.fallback) if part))
            log.info("turn %d served by the fallback %s instead of the realtime provider (%s)",
                     event.turn_id, event.provider, event.fallback)
        self._io.emit(event)

    async def hangup(self, reason: str) -> None:
        await self._io.hangup(reason)

    async def transfer(self, target: str) -> None:
        await self._io.transfer(target)

    async def send_dtmf(self, digits: str) -> None:
        await self._io.send_dtmf(digits)


class UnheardAudio:
    """Caller audio that arrived while the provider was not connected: the last
    `REPLAY_S` seconds of it, for a fallback to hear first."""

    def __init__(self, sample_rate: int) -> None:
        self._limit = REPLAY_S * sample_rate
        self._chunks: deque[tuple[Int16Array, int]] = deque()
        self._samples = 0

    def __bool__(self) -> bool:
        return bool(self._chunks)

    def keep(self, samples: Int16Array, arrival_ns: int) -> None:
        self._chunks.append((samples, arrival_ns))
        self._samples += len(samples)
        while self._samples - len(self._chunks[0][0]) >= self._limit:
            self._samples -= len(self._chunks.popleft()[0])

    def take(self) -> list[tuple[Int16Array, int]]:
        """Everything kept, oldest first; the buffer is then empty."""
        chunks = list(self._chunks)
        self.clear()
        return chunks

    def clear(self) -> None:
        self._chunks.clear()
        self._samples = 0
