"""The outgoing WebRTC track (transports/webrtc/tracks.py) on a hand-driven clock: one
frame per media-clock tick from the session's playout, silence when there is none, and
a barge-in (`playout.clear()`) silences the very next frame."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from transports.webrtc.media import FRAME_BYTES, FRAME_SAMPLES, RTC_RATE
from transports.webrtc.tracks import PacedAudioTrack, frame_samples
from voice.playout import Playout

pytestmark = pytest.mark.unit

MS = 1_000_000


class HandClock:
    def __init__(self) -> None:
        self.now = 1_000 * MS

    def now_ns(self) -> int:
        return self.now


async def never_push(chunk: bytes) -> None:
    raise AssertionError("a pulled playout never pushes")


def tone(seconds: float) -> bytes:
    t = np.arange(int(seconds * RTC_RATE)) / RTC_RATE
    return (8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()


def pcm(frame: object) -> bytes:
    samples, channels, rate = frame_samples(frame)  # type: ignore[arg-type]
    assert (channels, rate) == (1, RTC_RATE)
    return samples.astype("<i2").tobytes()


async def test_frames_follow_the_playout_then_silence_and_barge_in_drops_the_rest() -> None:
    clock = HandClock()
    playout = Playout(never_push, RTC_RATE, clock, lead_ms=200)
    track = PacedAudioTrack(playout.pull, clock)
    first = await track.recv()
    assert first.pts == 0 and pcm(first) == bytes(FRAME_BYTES)  # nothing queued: silence

    reply = tone(1.0)
    playout.enqueue(reply)
    clock.now += 20 * MS  # the next frame is due now: no waiting
    second = await track.recv()
    assert second.pts == FRAME_SAMPLES and pcm(second) == reply[:FRAME_BYTES]
    assert playout.sent_samples == FRAME_SAMPLES

    playout.clear()  # barge-in
    clock.now += 20 * MS
    third = await track.recv()
    assert third.pts == 2 * FRAME_SAMPLES and pcm(third) == bytes(FRAME_BYTES)
    assert playout.sent_samples == FRAME_SAMPLES  # nothing more of the reply went out
    track.stop()


async def test_a_short_last_chunk_is_padded_to_a_whole_frame() -> None:
    clock = HandClock()
    playout = Playout(never_push, RTC_RATE, clock)
    track = PacedAudioTrack(playout.pull, clock)
    playout.enqueue(tone(0.005))
    frame = await track.recv()
    assert len(pcm(frame)) == FRAME_BYTES and pcm(frame)[:480] == tone(0.005)
    track.stop()


async def test_cancelling_a_waiting_recv_takes_nothing_from_the_playout() -> None:
    clock = HandClock()
    playout = Playout(never_push, RTC_RATE, clock)
    track = PacedAudioTrack(playout.pull, clock)
    await track.recv()
    playout.enqueue(tone(0.1))
    waiting = asyncio.create_task(track.recv())  # due in 20 ms on a clock that stands still
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert playout.sent_samples == 0 and playout.enqueued_samples == int(0.1 * RTC_RATE)
    track.stop()


async def test_a_stopped_track_ends_the_sender() -> None:
    clock = HandClock()
    track = PacedAudioTrack(lambda: None, clock)
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()
