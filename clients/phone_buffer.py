"""What a caller's phone hears of an RTP stream: a fixed playout buffer, sans-I/O.

A phone with a fixed jitter buffer of `depth_ms` plays the packet with RTP timestamp
`t` at `d_min + depth + t / rate`, where `d_min` is the smallest transit time
(arrival - t / rate, RFC 3550 section 6.4.1) the stream has shown so far: the buffer
holds `depth_ms` beyond the fastest delivery seen. The caller hears a gap (a packet
time the phone fills with concealment) for every packet time with nothing to play:

- late: a packet arrived after its playout time (transit - d_min > depth), an underrun;
- lost: a sequence number that never arrived;
- skipped: the timestamp advanced more than one packet per sequence number, so the
  sender let time pass without sending (a media clock that skipped ahead after a stall).

`max_spread_ms` (the largest transit - d_min) is the smallest buffer that would have
played every packet on time. `gaps` counts every packet time, speech or the silence
between replies: an underrun in silence is inaudible on its own, but it is the same
failure that cuts a word when it falls in speech. `audible_gaps` counts those next to
speech (the late packet, or the packet before a loss or a skip, was audible). The
caller passes sequence numbers, timestamps, sample counts, whether the packet was
audible and arrival times in ns; nothing here reads a clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_DEPTH_MS = 60
MAX_TRACKED_MISSING = 1000


@dataclass
class PhoneBufferStats:
    packets: int = 0
    late: int = 0
    lost: int = 0
    skipped: int = 0  # packet times the sender skipped
    audible_gaps: int = 0  # gaps next to speech
    reordered: int = 0
    duplicates: int = 0
    max_spread_ms: float = 0.0
    max_interarrival_ms: float = 0.0

    @property
    def gaps(self) -> int:
        """Packet times the caller heard a hole in."""
        return self.late + self.lost + self.skipped


def _signed(delta: int, bits: int) -> int:
    delta &= (1 << bits) - 1
    return delta - (1 << bits) if delta >= 1 << (bits - 1) else delta


class PhoneBuffer:
    def __init__(self, rate: int = 8000, depth_ms: float = DEFAULT_DEPTH_MS) -> None:
        self.rate = rate
        self.depth_ns = int(depth_ms * 1_000_000)
        self.stats = PhoneBufferStats()
        # the newest packet: (ext seq, ext timestamp, samples, audible)
        self._highest: tuple[int, int, int, bool] | None = None
        self._raw: tuple[int, int] = (0, 0)  # its wire sequence number and timestamp
        self._missing: dict[int, bool] = {}  # ext seq -> counted as an audible gap
        self._min_transit: int | None = None
        self._last_arrival: int | None = None

    def receive(self, sequence: int, timestamp: int, samples: int, arrival_ns: int,
                audible: bool = False) -> None:
        stats = self.stats
        if self._last_arrival is not None:
            stats.max_interarrival_ms = max(stats.max_interarrival_ms,
                                            (arrival_ns - self._last_arrival) / 1e6)
        self._last_arrival = arrival_ns
        ext_seq, ext_ts = self._extend(sequence, timestamp)
        if not self._place(ext_seq, ext_ts, samples, audible):
            return
        stats.packets += 1
        transit = arrival_ns - ext_ts * 1_000_000_000 // self.rate
        if self._min_transit is None or transit < self._min_transit:
            self._min_transit = transit
        spread = transit - self._min_transit
        stats.max_spread_ms = max(stats.max_spread_ms, spread / 1e6)
        if spread > self.depth_ns:
            stats.late += 1
            stats.audible_gaps += audible

    def _extend(self, sequence: int, timestamp: int) -> tuple[int, int]:
        if self._highest is None:
            return sequence, timestamp
        high_seq, high_ts = self._highest[:2]
        raw_seq, raw_ts = self._raw
        return (high_seq + _signed(sequence - raw_seq, 16),
                high_ts + _signed(timestamp - raw_ts, 32))

    def _place(self, ext_seq: int, ext_ts: int, samples: int, audible: bool) -> bool:
        """Sequence bookkeeping; False for a duplicate (not played twice)."""
        stats = self.stats
        if self._highest is None or ext_seq > self._highest[0]:
            if self._highest is not None:
                self._advance(ext_seq, ext_ts, audible)
            self._highest = (ext_seq, ext_ts, samples, audible)
            self._raw = (ext_seq & 0xFFFF, ext_ts & 0xFFFFFFFF)
            return True
        if ext_seq in self._missing:
            stats.lost -= 1
            stats.audible_gaps -= self._missing.pop(ext_seq)
            stats.reordered += 1
            return True
        stats.duplicates += 1
        return False

    def _advance(self, ext_seq: int, ext_ts: int, audible: bool) -> None:
        """Losses and skipped time between the newest packet and this newer one."""
        assert self._highest is not None
        stats = self.stats
        high_seq, high_ts, high_samples, high_audible = self._highest
        near_speech = audible or high_audible
        jump = ext_seq - high_seq
        stats.lost += jump - 1
        for missing in range(high_seq + 1, ext_seq):
            if len(self._missing) < MAX_TRACKED_MISSING:
                self._missing[missing] = near_speech
        extra = ext_ts - (high_ts + high_samples * jump)
        skipped = math.ceil(extra / high_samples) if extra > 0 and high_samples else 0
        stats.skipped += skipped
        stats.audible_gaps += (jump - 1 + skipped) * near_speech
