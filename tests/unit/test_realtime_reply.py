"""The realtime pipeline's small cores (pipelines/realtime/provider_reply.py): mapping provider
input offsets back to arrival times, how much of a reply was heard, the watchdog."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from clients.audiofile import load_audio, voiced_bounds
from pipelines.realtime.provider_reply import InputClock, ProviderReply, Watchdog
from pipelines.realtime.provider_turns import SpeechEnds
from voice.audio import StreamResampler
from voice.errors import ProviderTimeout
from voice.latency import TurnTimeline
from voice.playout import Playout

pytestmark = pytest.mark.unit


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000_000

    def now_ns(self) -> int:
        return self.now


def test_input_clock_maps_offsets_to_the_chunk_that_carried_them() -> None:
    clock = InputClock()
    for i in range(5):  # 20 ms chunks at 24 kHz, arriving 20 ms apart
        clock.add(480, 1000 + i * 20)
    assert clock.arrival_ns(0) == 1000
    assert clock.arrival_ns(19) == 1000
    assert clock.arrival_ns(20) == 1020
    assert clock.arrival_ns(99) == 1080
    assert clock.arrival_ns(100) is None  # not sent yet
    clock.reset()
    assert clock.arrival_ns(0) is None and clock.samples == 0


def reply_with_audio(playout: Playout, seconds: float, text: str) -> ProviderReply:
    reply = ProviderReply(turn_id=1, timeline=TurnTimeline(1),
                          resampler=StreamResampler(24000, 16000), response_id="r")
    reply.text = text
    pcm = np.full(int(24000 * seconds), 1000, np.int16).tobytes()
    reply.add_provider_audio(playout, pcm, lambda now: None)
    reply.flush_audio(playout, lambda now: None)
    return reply


async def noop(chunk: bytes) -> None:
    return None


def test_played_counts_only_what_left_and_was_heard() -> None:
    clock = FakeClock()
    playout = Playout(noop, 16000, clock, lead_ms=200)
    playout.enqueue(np.zeros(1600, np.int16).tobytes())  # an earlier reply's 100 ms
    while playout.pull() is not None:
        pass
    reply = reply_with_audio(playout, 2.0, "one two three four five six seven eight")
    assert reply.received_ms == 2000
    assert reply.played(playout) == (0, "")
    for _ in range(50):  # one second of 20 ms chunks taken by a media clock
        playout.pull()
    clock.now += 2_000_000_000  # ... and long since heard
    ms, words = reply.played(playout)
    assert ms == 1000
    assert words == "one two three four"


def test_a_reply_without_audio_was_not_heard() -> None:
    playout = Playout(noop, 16000, FakeClock())
    reply = ProviderReply(turn_id=1, timeline=TurnTimeline(1),
                          resampler=StreamResampler(24000, 16000))
    assert reply.played(playout) == (0, "")


async def test_watchdog_fires_only_when_armed_and_starved() -> None:
    watchdog = Watchdog(0.5, "test")
    task = asyncio.create_task(watchdog.run())
    await asyncio.sleep(0.6)
    assert not task.done()  # not armed: never fires
    watchdog.arm()
    for _ in range(4):
        await asyncio.sleep(0.1)
        watchdog.feed()  # news keeps it quiet
    watchdog.disarm()
    await asyncio.sleep(0.6)
    assert not task.done()
    watchdog.arm()
    with pytest.raises(ProviderTimeout) as caught:
        await asyncio.wait_for(task, 5)
    assert caught.value.code == "realtime_timeout"


def test_speech_ends_finds_the_true_end_of_speech_before_a_decision() -> None:
    audio = load_audio(Path(__file__).parents[1] / "data" / "weather.wav", 16000)
    audio = np.concatenate([np.zeros(8000, np.int16), audio, np.zeros(16000, np.int16)])
    ends = SpeechEnds(2, 20, 16000)
    ms = 1_000_000
    for i in range(0, len(audio), 320):  # chunk i arrives at i * 20 ms
        ends.push(audio[i: i + 320], (i // 320) * 20 * ms)
    true_end_ms = voiced_bounds(audio, 16000)[-1][1] * 1000 // 16000
    found = ends.last_before(len(audio) // 16 * ms)
    assert found is not None and abs(found // ms - true_end_ms) <= 60
    assert ends.last_before(400 * ms) is None  # only silence before the speech
    assert ends.last_before(found, not_before=found + 1) is None


def test_an_empty_reply_queues_no_audio_and_reports_no_first_send() -> None:
    """A provider response with no audio (its VAD took hum for speech, then heard no
    words) must not put a resampler's tail on the wire: that would be a reply to
    nothing, and a `turn.latency` for a turn that never happened."""
    playout = Playout(noop, 16000, FakeClock())
    sent: list[int] = []
    reply = ProviderReply(turn_id=1, timeline=TurnTimeline(1),
                          resampler=StreamResampler(24000, 16000), response_id="r")
    reply.flush_audio(playout, sent.append)
    assert playout.enqueued_samples == 0 and reply.base is None
    while playout.pull() is not None:
        pass
    assert sent == []
