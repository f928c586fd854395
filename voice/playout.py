"""Paced reply audio: sends PCM to the wire at real-time pace, a bounded lead ahead.

Two ways to drain it:
- push (`run()`, WebSocket): a chunk is sent only when the projection of when the
  audio already sent will have finished playing (`_play_end_ns`) is less than
  `lead_ms` ahead of now, so an interruption has at most `lead_ms` in flight;
- pull (`pull()`, RTP and WebRTC): the transport's own media clock takes one 20 ms
  chunk per tick (or None: send silence).
Either way `played_samples()` is what the listener has heard by now.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from voice.clock import Clock

SendAudio = Callable[[bytes], Awaitable[None]]


class Playout:
    def __init__(self, send: SendAudio, sample_rate: int, clock: Clock,
                 lead_ms: int = 200, chunk_ms: int = 20) -> None:
        self._send = send
        self.sample_rate = sample_rate
        self._clock = clock
        self._lead_ns = lead_ms * 1_000_000
        self._chunk_bytes = sample_rate * chunk_ms // 1000 * 2
        self._queue: deque[bytes] = deque()
        self._wakeup = asyncio.Event()
        self._play_end_ns = 0
        self.enqueued_samples = 0
        self.sent_samples = 0
        self.paused = False
        self.on_first_send: Callable[[int], None] | None = None
        # each chunk as it leaves, with when the listener starts hearing it (a call
        # recording); called on the thread that sends (the RTP media clock's, for SIP)
        self.taps: list[Callable[[bytes, int], None]] = []

    def enqueue(self, pcm: bytes) -> None:
        for i in range(0, len(pcm), self._chunk_bytes):
            self._queue.append(pcm[i: i + self._chunk_bytes])
        self.enqueued_samples += len(pcm) // 2
        self._wakeup.set()

    def clear(self) -> None:
        """Drop every queued chunk at once (barge-in)."""
        dropped = sum(len(c) for c in self._queue) // 2
        self._queue.clear()
        self.enqueued_samples -= dropped
        self.paused = False

    def pause(self) -> None:
        """Stop sending at once but keep the queue (the caller may only be saying uh-huh)."""
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self._wakeup.set()

    @property
    def speaking(self) -> bool:
        """Reply audio is queued or still being heard."""
        return bool(self._queue) or self._play_end_ns > self._clock.now_ns()

    def played_samples(self) -> int:
        """Samples the listener has heard by now, assuming it plays on arrival."""
        in_flight_ns = max(0, self._play_end_ns - self._clock.now_ns())
        return max(0, self.sent_samples - in_flight_ns * self.sample_rate // 1_000_000_000)

    def pending_samples(self) -> int:
        return self.enqueued_samples - self.played_samples()

    def pull(self) -> bytes | None:
        """One chunk for a transport that paces itself (its media clock ticks every
        chunk_ms); None when nothing is queued. The last chunk of a reply may be short."""
        if not self._queue or self.paused:
            return None
        chunk = self._queue.popleft()
        self._account(chunk, self._clock.now_ns())
        return chunk

    def _account(self, chunk: bytes, now: int) -> None:
        samples = len(chunk) // 2
        duration_ns = samples * 1_000_000_000 // self.sample_rate
        heard_ns = max(now, self._play_end_ns)
        for tap in self.taps:
            tap(chunk, heard_ns)
        self._play_end_ns = heard_ns + duration_ns
        self.sent_samples += samples
        if self.on_first_send is not None:
            callback, self.on_first_send = self.on_first_send, None
            callback(now)

    async def run(self) -> None:
        """Send queued audio forever, paced; cancel to stop."""
        while True:
            if not self._queue or self.paused:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            now = self._clock.now_ns()
            ahead = self._play_end_ns - now
            if ahead > self._lead_ns:
                await asyncio.sleep((ahead - self._lead_ns) / 1e9)
                continue
            chunk = self._queue.popleft()
            self._account(chunk, now)
            await self._send(chunk)


async def wait_until_played(playout: Playout, samples: int) -> None:
    """Return once the listener has heard `samples` (cumulative) or the queue was cleared."""
    while playout.played_samples() < min(samples, playout.enqueued_samples):
        remaining = min(samples, playout.enqueued_samples) - playout.played_samples()
        await asyncio.sleep(max(0.005, min(0.05, remaining / playout.sample_rate)))
