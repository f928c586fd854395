"""Who has the floor when the caller speaks while the assistant does: one set of rules
for every pipeline that plays replies (the cascade, and the realtime pipeline with
`local` turns).

Theory of operation.
- Speech onset over a reply that is audible pauses its audio at once
  (`barge_in_pause_ms` of speech); an onset that fizzles out resumes it.
- A turn that starts while a reply is playing is *contested*: the reply stays paused
  and the turn's words are not acted on until a verdict.
- The verdict comes from the turn's words at its end (`judge`): a backchannel
  ("uh-huh"), a cough or a click *dismisses* the turn and the reply resumes where it
  stopped; real words confirm it. Speech longer than `barge_in_confirm_ms` confirms it
  before its words are known. A transcript that does not come within
  `JUDGE_TIMEOUT_S` counts as words: better to stop than to talk over the caller.
- A confirmed turn that began within `continuation_window_ms` of the previous turn's
  end *continues* that turn: the reply and the user message it answered are forgotten
  and the whole utterance (`carry` + this turn, joined by the silence between them, at
  most `JOIN_GAP_MS` of it) is answered once. The silence is measured in the audio
  itself where the pipeline gives the turns' places in it: audio that stalled on the
  way (a network hiccup that ended a turn in mid-word) is joined without a gap.
  Otherwise it is a barge-in: the reply stops where the caller stopped hearing it.

The floor decides and keeps the previous turn's audio; the pipeline acts (`FloorHost`:
is a reply playing, stop it), and does its own part after a verdict (release a
speculative reply, or send the held audio to a provider).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import numpy as np

from voice.audio import Int16Array
from voice.playout import Playout
from voice.turntaking.backchannel import is_backchannel

log = logging.getLogger(__name__)

JUDGE_TIMEOUT_S = 2.0  # longest wait for a contested turn's transcript at its end
JOIN_GAP_MS = 300  # most silence put between the parts of a continued utterance
UNKNOWN = "(unknown)"  # no transcript in time: judged as words


class FloorHost(Protocol):
    @property
    def playout(self) -> Playout: ...

    def reply_playing(self) -> bool: ...

    async def interrupt(self, reason: str, forget: bool = False) -> None: ...


class Verdict(Enum):
    BARGE_IN = "barge_in"  # the reply stopped; this turn is answered
    CONTINUATION = "continuation"  # the reply stopped and was forgotten; carry + turn


@dataclass(frozen=True)
class HeldTurn:
    """A turn's audio (at the pipeline's rate) and when its speech started."""

    audio: Int16Array
    speech_start_ns: int
    audio_end: int | None = None  # where it ends in the audio received (None: unknown)


class Floor:
    def __init__(self, host: FloorHost, confirm_ms: float, continuation_window_ms: float,
                 rate: int, max_turn_s: float = 30.0) -> None:
        self._host = host
        self._max_samples = int(max_turn_s * rate)
        self._confirm_ms = confirm_ms
        self._window_ns = int(continuation_window_ms * 1_000_000)
        self._rate = rate
        self.contested = False  # this turn began over a reply, verdict pending
        self.carry: HeldTurn | None = None  # the previous turn, which this one continues
        self._last_turn: HeldTurn | None = None
        self._last_turn_end_ns = 0
        self._speech_start_ns = 0
        self._audio_start: int | None = None

    # -- the detector's events ---------------------------------------------------------
    def onset(self) -> None:
        if self._host.reply_playing() and self._host.playout.speaking:
            self._host.playout.pause()

    def onset_abandoned(self) -> None:
        if not self.contested:
            self._host.playout.resume()

    def turn_started(self, speech_start_ns: int, audio_start: int | None = None) -> bool:
        """A new turn (its audio beginning at sample `audio_start` of the audio received,
        if known); True if it is contested (a reply is playing: it stays paused)."""
        self._speech_start_ns = speech_start_ns
        self._audio_start = audio_start
        self.carry = None
        self.contested = self._host.reply_playing()
        if self.contested:
            self._host.playout.pause()
        return self.contested

    def speech_confirms(self, speech_ms: float) -> bool:
        """A contested turn is long enough to be real whatever its words."""
        return self.contested and speech_ms >= self._confirm_ms

    # -- the verdict ---------------------------------------------------------------------
    async def judge(self, heard: Awaitable[str | None], turn_id: int) -> str | None:
        """The words of a contested turn at its end (None: no words)."""
        try:
            async with asyncio.timeout(JUDGE_TIMEOUT_S):
                return await heard
        except TimeoutError:
            log.warning("turn %d: no transcript to judge the barge-in by", turn_id)
            return UNKNOWN

    def dismisses(self, heard: str | None, turn_id: int) -> bool:
        """Only a backchannel or noise: the turn is dropped and the reply resumes."""
        if not is_backchannel(heard):
            return False
        log.info("turn %d: not a barge-in (%r); the reply goes on", turn_id, heard)
        self.contested = False
        self._host.playout.resume()
        return True

    async def confirm(self, why: str, turn_id: int, replying_to: int | None) -> Verdict:
        """The turn over the reply (to turn `replying_to`, None if there is none) is
        real: a continuation of the previous turn, or a barge-in."""
        self.contested = False
        since_last_end = self._speech_start_ns - self._last_turn_end_ns
        if (replying_to is not None and self._last_turn is not None
                and since_last_end <= self._window_ns):
            log.info("turn %d continues turn %d (%s)", turn_id, replying_to, why)
            self.carry = self._last_turn
            await self._host.interrupt("continuation", forget=True)
            return Verdict.CONTINUATION
        log.info("turn %d interrupts the reply (%s)", turn_id, why)
        await self._host.interrupt("barge_in")
        return Verdict.BARGE_IN

    # -- the turn's audio ----------------------------------------------------------------
    @property
    def speech_start_ns(self) -> int:
        """Where the utterance began: the carried turn's start in a continuation."""
        return self.carry.speech_start_ns if self.carry else self._speech_start_ns

    def joined(self, audio: Int16Array) -> Int16Array:
        """`audio` after the carried turn, if this turn continues one; an utterance is
        never longer than `max_turn_s`, continuations included (its end is kept)."""
        if self.carry is None or not self.carry.audio.size:
            return audio
        gap_samples = self._rate * JOIN_GAP_MS // 1000
        if self.carry.audio_end is not None and self._audio_start is not None:
            gap_samples = min(gap_samples, max(0, self._audio_start - self.carry.audio_end))
        gap = np.zeros(gap_samples, dtype=np.int16)
        joined = np.concatenate([self.carry.audio, gap, audio])
        return joined[-self._max_samples:] if len(joined) > self._max_samples else joined

    def turn_ended(self, audio: Int16Array, turn_end_ns: int,
                   audio_end: int | None = None) -> None:
        """The turn (its whole utterance, `joined`) is answered: keep it, in case the
        next one continues it."""
        self._last_turn = HeldTurn(audio, self.speech_start_ns, audio_end)
        self._last_turn_end_ns = turn_end_ns
