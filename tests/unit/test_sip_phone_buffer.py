"""The fixed playout buffer that judges received RTP as a phone would hear it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clients.phone_buffer import PhoneBuffer

pytestmark = pytest.mark.unit
MS = 1_000_000
PACKET = 160  # 20 ms at 8 kHz


def feed(buffer: PhoneBuffer, packets: list[tuple[int, int, float]]) -> None:
    """(sequence, timestamp, arrival ms) triples, 20 ms packets."""
    for sequence, timestamp, arrival_ms in packets:
        buffer.receive(sequence & 0xFFFF, timestamp & 0xFFFFFFFF, PACKET, int(arrival_ms * MS))


def steady(count: int, seq0: int = 100, ts0: int = 5000, jitter: dict[int, float] | None = None
           ) -> list[tuple[int, int, float]]:
    jitter = jitter or {}
    return [(seq0 + i, ts0 + i * PACKET, 1000 + 20 * i + jitter.get(i, 0.0))
            for i in range(count)]


def test_a_steady_stream_has_no_gaps_even_across_wraps() -> None:
    buffer = PhoneBuffer()
    feed(buffer, steady(200, seq0=0xFFF0, ts0=0xFFFFFF00))
    stats = buffer.stats
    assert stats.packets == 200 and stats.gaps == 0 and stats.reordered == 0
    assert stats.max_spread_ms == 0 and stats.max_interarrival_ms == 20


def test_jitter_within_the_buffer_is_heard_whole_and_beyond_it_is_a_gap() -> None:
    within = PhoneBuffer(depth_ms=60)
    feed(within, steady(50, jitter={10: 55, 11: 35, 12: 15}))  # a 55 ms stall, then a burst
    assert within.stats.gaps == 0 and within.stats.max_spread_ms == 55
    beyond = PhoneBuffer(depth_ms=60)
    feed(beyond, steady(50, jitter={10: 75, 11: 55, 12: 35, 13: 15}))
    assert beyond.stats.late == 1 and beyond.stats.gaps == 1


def test_a_late_start_does_not_buy_slack_for_later_packets() -> None:
    buffer = PhoneBuffer(depth_ms=60)
    # the first packet is 50 ms late, the rest on time: the buffer settles on the fast path
    feed(buffer, steady(40, jitter={0: 50, 30: 70}))
    assert buffer.stats.late == 1


def test_losses_reordering_duplicates_and_skipped_time() -> None:
    buffer = PhoneBuffer()
    packets = steady(20)
    lost = [p for p in packets if p[0] != 105]
    swapped = lost[:8] + [lost[9], lost[8]] + lost[10:]
    feed(buffer, swapped + [swapped[-1]])
    stats = buffer.stats
    assert stats.lost == 1 and stats.reordered == 1 and stats.duplicates == 1
    skipper = PhoneBuffer()
    # sequence numbers continue, but 3 packet times of timestamps were skipped
    feed(skipper, steady(10) + [(110 + i, 5000 + (13 + i) * PACKET, 1260 + 20 * i)
                                for i in range(5)])
    assert skipper.stats.skipped == 3 and skipper.stats.lost == 0 and skipper.stats.late == 0


def test_gaps_next_to_speech_are_told_apart() -> None:
    buffer = PhoneBuffer(depth_ms=60)
    speech = set(range(20, 30))
    for i in range(40):
        if i in (5, 25):
            continue  # lost: one in silence, one in speech
        late = 80 if i in (10, 22) else 0
        buffer.receive(100 + i, 5000 + i * PACKET, PACKET, (1000 + 20 * i + late) * MS,
                       audible=i in speech)
    assert buffer.stats.gaps == 4 and buffer.stats.audible_gaps == 2
    buffer.receive(125, 5000 + 25 * PACKET, PACKET, 2000 * MS, audible=True)  # very late
    assert buffer.stats.lost == 1 and buffer.stats.reordered == 1
    assert buffer.stats.gaps == 4 and buffer.stats.audible_gaps == 2  # late now, not lost


@settings(database=None, deadline=None, max_examples=200)
@given(st.lists(st.floats(0, 59), min_size=2, max_size=80), st.integers(0, 0xFFFF),
       st.integers(0, 0xFFFFFFFF))
def test_any_delay_under_the_depth_is_never_a_gap(delays: list[float], seq0: int,
                                                   ts0: int) -> None:
    buffer = PhoneBuffer(depth_ms=60)
    feed(buffer, [(seq0 + i, ts0 + i * PACKET, 20 * i + d) for i, d in enumerate(delays)])
    assert buffer.stats.gaps == 0 and buffer.stats.max_spread_ms < 60
