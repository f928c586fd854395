"""The WebRTC media core (transports/webrtc/media.py): the media clock and framing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transports.webrtc.media import (
    FRAME_BYTES,
    FRAME_SAMPLES,
    RTC_RATE,
    CallerAudio,
    FrameClock,
    downmix,
    reply_frame,
)

pytestmark = pytest.mark.unit

MS = 1_000_000
START = 5_000_000_000_000  # an arbitrary monotonic origin


def run_clock(clock: FrameClock, frames: int, late_ns: int = 0) -> list[tuple[int, int]]:
    """Drive the clock as a sender would: ask, 'sleep' until due (plus a lateness)."""
    now, out = START, []
    for _ in range(frames):
        pts, due = clock.tick(now)
        out.append((pts, due))
        now = max(now, due) + late_ns
    return out


def test_ten_minutes_of_frames_end_exactly_ten_minutes_after_the_start() -> None:
    frames = 10 * 60 * 1000 // 20
    ticks = run_clock(FrameClock(), frames, late_ns=1 * MS // 3)  # every wake-up a bit late
    assert [pts for pts, _ in ticks] == [i * FRAME_SAMPLES for i in range(frames)]
    assert ticks[-1][1] - ticks[0][1] == (frames - 1) * 20 * MS  # no drift at all
    assert all(due == START + i * 20 * MS for i, (_, due) in enumerate(ticks))


def test_frames_are_due_one_frame_apart_so_there_is_no_burst() -> None:
    ticks = run_clock(FrameClock(), 500)
    gaps = {b[1] - a[1] for a, b in zip(ticks, ticks[1:], strict=False)}
    assert gaps == {20 * MS}


def test_a_stall_skips_the_missed_frames_instead_of_bursting_them() -> None:
    clock = FrameClock(max_lag_ns=60 * MS)
    now = START
    for _ in range(10):
        _, due = clock.tick(now)
        now = due
    pts, due = clock.tick(now + 500 * MS)  # the event loop was blocked for half a second
    assert due > now + 400 * MS  # skipped ahead: not due in the past
    assert pts == (due - START) // (20 * MS) * FRAME_SAMPLES  # still on the original grid
    assert clock.skipped_frames >= 20
    _, next_due = clock.tick(due)
    assert next_due - due == 20 * MS


def test_a_small_lag_is_caught_up_without_skipping() -> None:
    clock = FrameClock(max_lag_ns=60 * MS)
    clock.tick(START)
    pts, due = clock.tick(START + 50 * MS)  # 30 ms late for frame 1: within the bound
    assert pts == FRAME_SAMPLES and due == START + 20 * MS
    assert clock.skipped_frames == 0


def test_reply_frame_pads_short_chunks_and_fills_silence() -> None:
    assert reply_frame(None) == bytes(FRAME_BYTES)
    short = b"\x01\x02" * 100
    frame = reply_frame(short)
    assert len(frame) == FRAME_BYTES and frame.startswith(short)
    assert frame[len(short):] == bytes(FRAME_BYTES - len(short))
    assert reply_frame(b"\x03" * FRAME_BYTES) == b"\x03" * FRAME_BYTES


def test_downmix_averages_interleaved_stereo() -> None:
    stereo = np.array([100, 300, -200, -400, 32767, 32767, -32768, -32768], np.int16)
    assert downmix(stereo, 2).tolist() == [200, -300, 32767, -32768]
    mono = np.array([1, 2, 3], np.int16)
    assert downmix(mono, 1).tolist() == [1, 2, 3]


@settings(database=None, deadline=None, max_examples=200)
@given(st.lists(st.integers(-32768, 32767), max_size=400), st.integers(1, 6))
def test_downmix_never_overflows_and_keeps_whole_frames(values: list[int],
                                                         channels: int) -> None:
    samples = np.array(values, np.int16)
    mono = downmix(samples, channels)
    assert mono.dtype == np.int16
    assert len(mono) == len(values) // channels


def test_caller_audio_passes_48k_stereo_through_as_mono() -> None:
    t = np.arange(FRAME_SAMPLES) / RTC_RATE
    tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    stereo = np.repeat(tone, 2)
    out = CallerAudio().convert(stereo, 2, RTC_RATE)
    assert np.array_equal(out, tone)


def test_caller_audio_resamples_narrowband_codecs_to_48k() -> None:
    caller = CallerAudio()
    t = np.arange(160 * 50) / 8000
    tone = (8000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16)
    out = np.concatenate([caller.convert(tone[i:i + 160], 1, 8000)
                          for i in range(0, len(tone), 160)])
    assert abs(len(out) - len(tone) * 6) <= 2 * 160 * 6  # a few ms of filter delay at most
    spectrum = np.abs(np.fft.rfft(out[4800:].astype(np.float64)))
    peak_hz = np.argmax(spectrum) * RTC_RATE / len(out[4800:])
    assert abs(peak_hz - 300) < 10
