"""Paced reply audio (voice/playout.py), on a hand-driven clock.

`Playout.run()` paces itself with `asyncio.sleep`. To keep these tests deterministic
and free of real waiting, the module's `asyncio` is swapped for a shim whose `sleep`
is simulated time: it advances the fake clock by the requested duration (or, in the
"manual" mode, parks until the test advances the clock by hand).
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import AsyncIterator

import pytest

import voice.playout as playout_module
from voice.playout import Playout, wait_until_played

pytestmark = pytest.mark.unit

RATE = 16000
MS = 1_000_000
CHUNK_BYTES = RATE * 20 // 1000 * 2  # 20 ms of 16-bit mono


class FakeTime:
    """A clock with now_ns(), and a sleep that is simulated time, not wall time."""

    def __init__(self, *, auto_advance: bool) -> None:
        self.ns = 0
        self.auto_advance = auto_advance
        self.sleeps: list[float] = []
        self._moved = asyncio.Event()

    def now_ns(self) -> int:
        return self.ns

    def advance_ms(self, ms: float) -> None:
        self.ns += int(ms * MS)
        self._moved.set()

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.auto_advance:
            self.ns += max(1, round(seconds * 1e9))
            await asyncio.sleep(0)
        else:
            self._moved.clear()
            await self._moved.wait()


class Recorder:
    def __init__(self, clock: FakeTime) -> None:
        self.clock = clock
        self.sent: list[tuple[int, bytes]] = []  # (now_ns at send, chunk)

    async def __call__(self, chunk: bytes) -> None:
        self.sent.append((self.clock.now_ns(), chunk))

    @property
    def data(self) -> bytes:
        return b"".join(chunk for _, chunk in self.sent)


async def settle() -> None:
    """Let the playout task run until it blocks (on its queue or on a sleep)."""
    for _ in range(50):
        await asyncio.sleep(0)


def pcm(ms: int, rate: int = RATE) -> bytes:
    """Distinct, recognisable bytes: sample i holds i mod 30000."""
    samples = rate * ms // 1000
    return b"".join((i % 30000).to_bytes(2, "little", signed=True) for i in range(samples))


@pytest.fixture
async def running(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
                  ) -> AsyncIterator[tuple[Playout, FakeTime, Recorder]]:
    clock = FakeTime(auto_advance=getattr(request, "param", False))
    shim = types.SimpleNamespace(Event=asyncio.Event, sleep=clock.sleep)
    monkeypatch.setattr(playout_module, "asyncio", shim)
    recorder = Recorder(clock)
    playout = Playout(recorder, RATE, clock, lead_ms=200)
    task = asyncio.get_running_loop().create_task(playout.run(), name="playout-under-test")
    try:
        yield playout, clock, recorder
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_audio_is_sent_in_20_ms_chunks_in_order(
        running: tuple[Playout, FakeTime, Recorder]) -> None:
    playout, clock, recorder = running
    audio = pcm(150)
    playout.enqueue(audio)
    await settle()
    assert recorder.data == audio
    sizes = [len(chunk) for _, chunk in recorder.sent]
    assert sizes == [CHUNK_BYTES] * 7 + [len(audio) - 7 * CHUNK_BYTES]
    assert playout.enqueued_samples == playout.sent_samples == 150 * RATE // 1000


def test_chunks_are_20_ms_at_other_rates() -> None:
    clock = FakeTime(auto_advance=False)
    for rate in (8000, 24000, 48000):
        playout = Playout(Recorder(clock), rate, clock)
        playout.enqueue(pcm(100, rate))
        assert playout.enqueued_samples == rate // 10
        # 100 ms = five 20 ms chunks, nothing sent before run()
        assert playout.sent_samples == 0
        assert playout.pending_samples() == rate // 10


@pytest.mark.parametrize("running", [True], indirect=True)
async def test_run_never_sends_more_than_lead_ms_ahead(
        running: tuple[Playout, FakeTime, Recorder]) -> None:
    playout, clock, recorder = running
    audio = pcm(1000)
    playout.enqueue(audio)
    for _ in range(2000):
        if playout.sent_samples == playout.enqueued_samples:
            break
        await asyncio.sleep(0)
    assert recorder.data == audio
    play_end_ns = 0  # when the audio sent so far has finished playing at the far end
    for at_ns, chunk in recorder.sent:
        # a chunk goes out only while what is already in flight is at most the lead
        assert play_end_ns - at_ns <= 200 * MS
        play_end_ns = max(play_end_ns, at_ns) + len(chunk) // 2 * 1_000_000_000 // RATE
    # ... and it was paced, not dumped: the last chunk left no earlier than needed
    last_at_ns = recorder.sent[-1][0]
    assert last_at_ns >= (1000 - 200 - 20) * MS
    assert clock.sleeps, "the playout must have waited"


async def test_played_samples_follow_the_clock(
        running: tuple[Playout, FakeTime, Recorder]) -> None:
    playout, clock, recorder = running
    playout.enqueue(pcm(1000))
    await settle()
    assert playout.sent_samples > 0
    assert playout.played_samples() == 0  # sent, but nothing has played yet at t=0
    clock.advance_ms(50)
    await settle()
    assert playout.played_samples() == 50 * RATE // 1000
    clock.advance_ms(100)
    await settle()
    assert playout.played_samples() == 150 * RATE // 1000
    assert playout.pending_samples() == (1000 - 150) * RATE // 1000


async def test_clear_drops_queued_audio(running: tuple[Playout, FakeTime, Recorder]) -> None:
    playout, clock, recorder = running
    playout.enqueue(pcm(1000))
    await settle()
    sent = playout.sent_samples
    assert 0 < sent <= (200 + 20) * RATE // 1000  # only the lead went out
    playout.clear()
    assert playout.enqueued_samples == sent
    clock.advance_ms(1000)
    await settle()
    assert playout.sent_samples == sent  # nothing queued was sent after the clear
    assert len(recorder.data) == sent * 2
    assert playout.played_samples() == sent
    assert playout.pending_samples() == 0
    assert not playout.speaking


async def test_audio_enqueued_after_clear_still_plays(
        running: tuple[Playout, FakeTime, Recorder]) -> None:
    playout, clock, recorder = running
    playout.enqueue(pcm(1000))
    await settle()
    playout.clear()
    before = len(recorder.sent)
    clock.advance_ms(500)
    fresh = pcm(60)
    playout.enqueue(fresh)
    await settle()
    assert b"".join(chunk for _, chunk in recorder.sent[before:]) == fresh


async def test_on_first_send_is_called_once_with_the_send_time(
        running: tuple[Playout, FakeTime, Recorder]) -> None:
    playout, clock, recorder = running
    calls: list[int] = []
    playout.on_first_send = calls.append
    clock.advance_ms(30)
    playout.enqueue(pcm(100))
    await settle()
    clock.advance_ms(300)
    playout.enqueue(pcm(100))
    await settle()
    assert calls == [30 * MS]


async def test_not_speaking_once_everything_has_played(
        running: tuple[Playout, FakeTime, Recorder]) -> None:
    playout, clock, recorder = running
    assert not playout.speaking
    playout.enqueue(pcm(100))
    await settle()
    assert playout.speaking
    clock.advance_ms(99)
    await settle()
    assert playout.speaking
    clock.advance_ms(1)
    assert not playout.speaking


async def test_cancelling_run_mid_stream_stops_sending(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeTime(auto_advance=False)
    monkeypatch.setattr(playout_module, "asyncio",
                        types.SimpleNamespace(Event=asyncio.Event, sleep=clock.sleep))
    recorder = Recorder(clock)
    playout = Playout(recorder, RATE, clock, lead_ms=200)
    task = asyncio.get_running_loop().create_task(playout.run(), name="playout-cancel")
    playout.enqueue(pcm(1000))
    await settle()
    sent = len(recorder.sent)
    assert 0 < sent < 50
    task.cancel()
    with pytest.raises(asyncio.CancelledError):  # cancellation is not swallowed
        await task
    playout.clear()
    clock.advance_ms(2000)
    await settle()
    assert len(recorder.sent) == sent
    assert playout.pending_samples() == 0


@pytest.mark.parametrize("running", [True], indirect=True)
async def test_wait_until_played_returns_once_heard(
        running: tuple[Playout, FakeTime, Recorder]) -> None:
    playout, clock, recorder = running
    playout.enqueue(pcm(300))
    await asyncio.wait_for(wait_until_played(playout, 300 * RATE // 1000), timeout=5)
    assert playout.played_samples() >= 300 * RATE // 1000
    assert clock.ns >= 300 * MS
