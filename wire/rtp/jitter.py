"""Receive-side jitter buffer for one RTP stream: reorders, drops late and duplicate
packets, and reports lost ones so they can be concealed. No I/O, no clock of its own.

The consumer is a speech pipeline (VAD, speech-to-text), not a loudspeaker, so there
is no fixed playout delay: a packet that arrives in order is released at once. Only
when a gap opens (packet n+1 arrives before n) are later packets held, for at most
`max_wait` seconds after the gap was seen; then the missing packets are declared lost
(released as `payload=None`, for concealment) and the held ones follow in order. A
packet older than what was already released is late and dropped. Reordering therefore
costs latency only when it happens, and never more than `max_wait`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from voice.audio import Int16Array

RESYNC_GAP = 3000  # a jump this large (in packets) is a new stream, not loss
MAX_LOST_RUN = 50  # at most this many lost packets are reported for one gap


@dataclass(frozen=True)
class JitterFrame:
    sequence: int  # extended (does not wrap)
    timestamp: int
    payload: bytes | None  # None: lost, conceal it


@dataclass
class JitterStats:
    released: int = 0
    lost: int = 0
    late: int = 0
    duplicate: int = 0
    reordered: int = 0


class JitterBuffer:
    def __init__(self, max_wait: float = 0.06, max_held: int = 50) -> None:
        self.max_wait = max_wait
        self.max_held = max_held
        self.stats = JitterStats()
        self._next: int | None = None
        self._held: dict[int, tuple[int, bytes]] = {}
        self._gap_since: float | None = None

    def push(self, sequence: int, timestamp: int, payload: bytes,
             now: float) -> list[JitterFrame]:
        if self._next is None:
            self._next = sequence
        ext = self._extend(sequence)
        if ext < self._next:
            self.stats.late += 1
            return []
        if ext in self._held:
            self.stats.duplicate += 1
            return []
        if ext - self._next > RESYNC_GAP:
            self._held.clear()
            self._next, self._gap_since = ext, None
        if self._held and ext < max(self._held):
            self.stats.reordered += 1
        self._held[ext] = (timestamp, payload)
        return self._release(now)

    def next_deadline(self) -> float | None:
        return None if self._gap_since is None else self._gap_since + self.max_wait

    def handle_timeout(self, now: float) -> list[JitterFrame]:
        return [] if self._next is None else self._release(now)

    def _extend(self, sequence: int) -> int:
        assert self._next is not None
        return self._next + ((sequence - self._next + 0x8000) & 0xFFFF) - 0x8000

    def _release(self, now: float) -> list[JitterFrame]:
        out: list[JitterFrame] = []
        while True:
            out.extend(self._release_in_order())
            if not self._held:
                self._gap_since = None
                return out
            if self._gap_since is None:
                self._gap_since = now
            if now - self._gap_since < self.max_wait and len(self._held) <= self.max_held:
                return out
            out.extend(self._skip_gap())
            self._gap_since = now

    def _release_in_order(self) -> list[JitterFrame]:
        assert self._next is not None
        out = []
        while self._next in self._held:
            timestamp, payload = self._held.pop(self._next)
            out.append(JitterFrame(self._next, timestamp, payload))
            self._next += 1
            self.stats.released += 1
        return out

    def _skip_gap(self) -> list[JitterFrame]:
        assert self._next is not None
        first_held = min(self._held)
        missing = first_held - self._next
        self.stats.lost += missing
        lost = [JitterFrame(self._next + i, -1, None) for i in range(min(missing, MAX_LOST_RUN))]
        self._next = first_held
        return lost


class Concealer:
    """Fills lost frames: the last good frame repeated at falling gain for a short gap,
    then silence (a pipeline hears a brief dropout as a dropout, not as a click)."""

    def __init__(self, max_repeats: int = 3, frame_samples: int = 160) -> None:
        self._max_repeats = max_repeats
        self._last: Int16Array = np.zeros(frame_samples, np.int16)
        self._repeats = 0

    def good(self, samples: Int16Array) -> Int16Array:
        self._last, self._repeats = samples, 0
        return samples

    def lost(self) -> Int16Array:
        self._repeats += 1
        if self._repeats > self._max_repeats:
            return np.zeros(len(self._last), np.int16)
        gain = 0.5 ** self._repeats
        concealed: Int16Array = (self._last.astype(np.float32) * gain).astype(np.int16)
        return concealed
