"""The floor (voice/turntaking/floor.py): speech over a reply, one set of rules for the
cascade and the realtime pipeline. Driven with a real Playout and a host that records
what it was asked to do."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from voice.playout import Playout
from voice.turntaking import floor as floor_module
from voice.turntaking.floor import JOIN_GAP_MS, UNKNOWN, Floor, Verdict

pytestmark = pytest.mark.unit

MS = 1_000_000


class FakeClock:
    def __init__(self) -> None:
        self.ns = 10_000 * MS

    def now_ns(self) -> int:
        return self.ns


async def _discard(chunk: bytes) -> None:
    pass


class Host:
    """A pipeline with a reply that plays until it is interrupted."""

    def __init__(self) -> None:
        self.playout = Playout(_discard, 16000, FakeClock())
        self.playing = False
        self.interrupts: list[tuple[str, bool]] = []

    def start_reply(self) -> None:
        self.playing = True
        self.playout.enqueue(b"\x00\x01" * 16000)

    def reply_playing(self) -> bool:
        return self.playing

    async def interrupt(self, reason: str, forget: bool = False) -> None:
        self.interrupts.append((reason, forget))
        self.playing = False
        self.playout.clear()


def make_floor(host: Host) -> Floor:
    return Floor(host, confirm_ms=900, continuation_window_ms=1000, rate=16000)


async def words(text: str | None) -> str | None:
    return text


def test_onset_pauses_an_audible_reply_and_a_fizzled_onset_resumes_it() -> None:
    host = Host()
    floor = make_floor(host)
    floor.onset()
    assert not host.playout.paused  # nothing playing: nothing to pause
    host.start_reply()
    floor.onset()
    assert host.playout.paused
    floor.onset_abandoned()
    assert not host.playout.paused


def test_a_turn_over_a_reply_is_contested_and_keeps_it_paused() -> None:
    host = Host()
    floor = make_floor(host)
    assert floor.turn_started(5 * MS) is False and not floor.contested
    host.start_reply()
    assert floor.turn_started(6 * MS) is True and host.playout.paused
    floor.onset_abandoned()  # a contested turn's reply stays paused until the verdict
    assert host.playout.paused
    assert not floor.speech_confirms(899) and floor.speech_confirms(900)


@pytest.mark.parametrize("heard", [None, "uh-huh", "Mm hmm.", "okay yeah"])
async def test_a_backchannel_dismisses_the_turn_and_the_reply_resumes(heard: str | None
                                                                      ) -> None:
    host = Host()
    host.start_reply()
    floor = make_floor(host)
    floor.turn_started(1 * MS)
    verdict_words = await floor.judge(words(heard), turn_id=2)
    assert floor.dismisses(verdict_words, turn_id=2)
    assert not floor.contested and not host.playout.paused and host.interrupts == []


async def test_words_long_after_the_last_turn_barge_in() -> None:
    host = Host()
    floor = make_floor(host)
    floor.turn_started(0)
    floor.turn_ended(np.ones(1600, np.int16), turn_end_ns=1000 * MS)
    host.start_reply()
    floor.turn_started(2500 * MS)  # 1.5 s after that turn ended
    heard = await floor.judge(words("wait, stop"), turn_id=2)
    assert not floor.dismisses(heard, turn_id=2)
    assert await floor.confirm("words", turn_id=2, replying_to=1) is Verdict.BARGE_IN
    assert host.interrupts == [("barge_in", False)] and floor.carry is None
    assert floor.speech_start_ns == 2500 * MS


async def test_words_soon_after_the_last_turn_continue_it_as_one_utterance() -> None:
    host = Host()
    floor = make_floor(host)
    first = np.full(1600, 7, np.int16)
    floor.turn_started(100 * MS)
    floor.turn_ended(floor.joined(first), turn_end_ns=1000 * MS)
    host.start_reply()
    floor.turn_started(1800 * MS)  # 0.8 s later: within the continuation window
    assert await floor.confirm("words", turn_id=2, replying_to=1) is Verdict.CONTINUATION
    assert host.interrupts == [("continuation", True)]
    assert floor.speech_start_ns == 100 * MS  # the utterance began with the first part
    second = np.full(800, 9, np.int16)
    joined = floor.joined(second)
    gap = 16000 * JOIN_GAP_MS // 1000
    assert len(joined) == len(first) + gap + len(second)
    assert (joined[:1600] == 7).all() and not joined[1600:1600 + gap].any()
    assert (joined[-800:] == 9).all()
    floor.turn_ended(joined, turn_end_ns=2500 * MS)
    floor.turn_started(5000 * MS)  # a new turn carries nothing over
    assert floor.carry is None and floor.joined(second) is second


async def test_no_reply_to_continue_means_barge_in() -> None:
    host = Host()
    floor = make_floor(host)
    floor.turn_started(0)
    floor.turn_ended(np.ones(10, np.int16), turn_end_ns=1000 * MS)
    host.start_reply()
    floor.turn_started(1200 * MS)
    assert await floor.confirm("long speech", turn_id=2, replying_to=None) is Verdict.BARGE_IN


async def test_no_transcript_in_time_counts_as_words(monkeypatch: pytest.MonkeyPatch
                                                     ) -> None:
    monkeypatch.setattr(floor_module, "JUDGE_TIMEOUT_S", 0.05)
    host = Host()
    host.start_reply()
    floor = make_floor(host)
    floor.turn_started(0)
    heard = await floor.judge(asyncio.Event().wait(), turn_id=1)  # type: ignore[arg-type]
    assert heard == UNKNOWN and not floor.dismisses(heard, turn_id=1)
    assert floor.contested and host.playout.paused  # the verdict is the caller's to make


async def test_a_continued_utterance_is_never_longer_than_a_turn() -> None:
    host = Host()
    floor = Floor(host, confirm_ms=900, continuation_window_ms=1000, rate=16000,
                  max_turn_s=2.0)
    floor.turn_started(0)
    floor.turn_ended(np.full(16000 * 2, 1, np.int16), turn_end_ns=1000 * MS)
    host.start_reply()
    floor.turn_started(1500 * MS)
    await floor.confirm("words", turn_id=2, replying_to=1)
    joined = floor.joined(np.full(16000, 2, np.int16))
    assert len(joined) == 16000 * 2 and (joined[-16000:] == 2).all()  # the end is kept
