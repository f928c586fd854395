"""The cascade pipeline of one session: turn-taking, speculative replies, barge-in.

Audio arrives at the session rate, is resampled to 16 kHz and cut into VAD frames for
the turn detector, whose end-of-turn policy (`voice.turntaking.endpointing`) waits longer when
the speculative transcript reads as unfinished.

- On the first silent frame after speech a reply starts *speculatively* (STT, LLM,
  first TTS piece). If the caller goes on, it is cancelled without a trace; when the
  turn is confirmed, it is released.
- Speech while a reply is speaking first *pauses* its audio (after
  `barge_in_pause_ms`); the turn is then *contested* until its words are known. A
  backchannel ("uh-huh"), a cough or a click resumes the reply where it stopped. Real
  words (or `barge_in_confirm_ms` of speech) interrupt it: history keeps what the
  caller heard.
- Real words within `continuation_window_ms` of the previous turn's end *continue*
  that turn: the reply stops, it and the previous user message leave the history,
  and the whole utterance is answered once.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import numpy as np

from pipelines.providers.models import CascadeModels
from pipelines.reply import Reply, ReplyContext
from voice.audio import (
    PIPELINE_RATE,
    Int16Array,
    StreamResampler,
    array_to_pcm16_bytes,
    resample,
)
from voice.clock import Clock
from voice.events import (
    ErrorOccurred,
    ResponseDone,
    ResponseInterrupted,
    ResponseTextDelta,
    SpeechStarted,
    SpeechStopped,
)
from voice.latency import TurnTimeline
from voice.playout import wait_until_played
from voice.session import SessionIO
from voice.settings import Settings
from voice.tasks import cancel_and_wait
from voice.turntaking.backchannel import is_backchannel
from voice.turntaking.detector import (
    OnsetAbandoned,
    SpeechOnset,
    SpeechPaused,
    SpeechResumed,
    TurnDetector,
    TurnEnded,
    TurnEvent,
    TurnStarted,
)
from voice.turntaking.endpointing import CallerPauses, build_policy
from voice.turntaking.prosody import final_pitch_ratio
from voice.turntaking.vad import FrameClassifier

log = logging.getLogger(__name__)

STARVATION_S = 0.1  # no audio this long inside a turn counts as silence
JOIN_GAP_S = 0.3  # silence put between the parts of a continued utterance
JUDGE_TIMEOUT_S = 2.0  # longest wait for a contested turn's transcript at its end


@dataclass
class _Running:
    reply: Reply
    task: asyncio.Task[None]


@dataclass
class _Carry:
    """The previous turn, carried into a continuation."""

    audio: Int16Array
    speech_start_ns: int


class CascadePipeline:
    name = "cascade"

    def __init__(self, models: CascadeModels, settings: Settings, io: SessionIO,
                 clock: Clock) -> None:
        self._models = models
        self._settings = settings
        self._io = io
        self._clock = clock
        self.pauses = CallerPauses()
        policy = build_policy(settings.turn_preset, settings.min_wait_ms, settings.max_wait_ms,
                              settings.silence_ms, self.pauses)
        classifier = FrameClassifier(settings.vad_aggressiveness, settings.vad_frame_ms)
        self._detector = TurnDetector(classifier, policy, settings.min_speech_ms,
                                      settings.max_turn_s, onset_ms=settings.barge_in_pause_ms)
        self._resampler = StreamResampler(io.sample_rate, PIPELINE_RATE)
        self._pending = np.zeros(0, dtype=np.int16)
        self._audio: asyncio.Queue[tuple[Int16Array, int]] = asyncio.Queue()
        self.history: list[dict[str, str]] = []
        self._turn_id = 0
        self._speech_start_ns = 0
        self._speculation: _Running | None = None
        self._active: _Running | None = None
        self._discarded = 0
        self._contested = False  # this turn began over a reply, verdict pending
        self._carry: _Carry | None = None
        self._last_turn: _Carry | None = None
        self._last_turn_end_ns = 0
        self._final_pitch: float | None = None
        self._tasks: asyncio.TaskGroup | None = None

    def push_audio(self, samples: Int16Array, arrival_ns: int) -> None:
        self._audio.put_nowait((samples, arrival_ns))

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tasks = tg
            try:
                await self._consume_audio()
            finally:
                await _cancel(self._speculation)
                await _cancel(self._active)

    # -- audio intake ------------------------------------------------------------------
    async def _consume_audio(self) -> None:
        while True:
            try:
                async with asyncio.timeout(STARVATION_S if self._detector.in_turn else None):
                    samples, arrival_ns = await self._audio.get()
            except TimeoutError:
                await self._fill_starved_gap()
                continue
            resampled = self._resampler.process(samples)
            self._pending = np.concatenate([self._pending, resampled])
            await self._push_frames(arrival_ns)

    async def _push_frames(self, arrival_ns: int) -> None:
        size = self._detector.frame_samples
        while len(self._pending) >= size:
            frame, self._pending = self._pending[:size], self._pending[size:]
            await self._push_frame(frame, arrival_ns)

    async def _push_frame(self, frame: Int16Array, arrival_ns: int) -> None:
        for event in self._detector.push(frame, arrival_ns):
            await self._on_turn_event(event)
        if self._contested and self._detector.speech_ms >= self._settings.barge_in_confirm_ms:
            await self._confirm_contested("long speech")

    async def _fill_starved_gap(self) -> None:
        """The client stopped sending mid-turn: treat the gap as silence (fillers, taken
        out again if the audio was only late)."""
        for _ in range(int(STARVATION_S * 1000) // self._settings.vad_frame_ms):
            if not self._detector.in_turn:
                return
            for event in self._detector.push_filler(self._clock.now_ns()):
                await self._on_turn_event(event)

    async def _on_turn_event(self, event: TurnEvent) -> None:
        if isinstance(event, SpeechOnset):
            if self._reply_running() and self._io.playout.speaking:
                self._io.playout.pause()
        elif isinstance(event, OnsetAbandoned):
            if not self._contested:
                self._io.playout.resume()
        elif isinstance(event, TurnStarted):
            await self._on_turn_started(event)
        elif isinstance(event, SpeechPaused):
            await self._discard_speculation()
            self._final_pitch = final_pitch_ratio(event.audio)
            self._speculation = self._start_reply(event.audio, event.speech_end_ns)
        elif isinstance(event, SpeechResumed):
            self.pauses.record(event.pause_ms)
            await self._discard_speculation()
        elif isinstance(event, TurnEnded):
            await self._on_turn_ended(event)

    # -- turns -------------------------------------------------------------------------
    async def _on_turn_started(self, event: TurnStarted) -> None:
        self._turn_id += 1
        self._speech_start_ns = event.speech_start_ns
        self._discarded = 0
        self._carry = None
        self._contested = self._reply_running()
        if self._contested:
            self._io.playout.pause()
        self._io.emit(SpeechStarted(turn_id=self._turn_id))

    async def _discard_speculation(self) -> None:
        if self._speculation is not None:
            await _cancel(self._speculation)
            self._speculation = None
            self._discarded += 1

    async def _on_turn_ended(self, event: TurnEnded) -> None:
        if self._contested:
            await self._judge_at_turn_end(event)
            if self._contested:  # only a backchannel or noise: the reply goes on
                self._contested = False
                await self._discard_speculation()
                self._io.playout.resume()
                return
        self._io.emit(SpeechStopped(turn_id=self._turn_id))
        running, speculative = self._speculation, True
        self._speculation = None
        if (running is None or running.task.done()
                or running.reply.timeline.stamps["speech_end"] != event.speech_end_ns):
            await _cancel(running)
            running, speculative = self._start_reply(event.audio, event.speech_end_ns), False
        running.reply.release(event.turn_end_ns, speculative=speculative)
        self._active = running
        self._last_turn = _Carry(self._joined(event.audio), self._carry_start())
        self._last_turn_end_ns = event.turn_end_ns

    def _start_reply(self, audio: Int16Array, speech_end_ns: int) -> _Running:
        assert self._tasks is not None
        timeline = TurnTimeline(self._turn_id)
        timeline.mark("speech_start", self._carry_start())
        timeline.mark("speech_end", speech_end_ns)
        context = ReplyContext(
            models=self._models, io=self._io, clock=self._clock, history=self.history,
            system_prompt=self._settings.system_prompt,
            no_speech_threshold=self._settings.stt_no_speech_threshold,
            on_transcript=self._on_transcript)
        reply = Reply(self._turn_id, self._joined(audio), context, timeline,
                      speculations_discarded=self._discarded)
        if not self._contested:
            reply.may_generate.set()
        task = self._tasks.create_task(self._guarded(reply), name=f"turn-{self._turn_id}-reply")
        return _Running(reply, task)

    def _joined(self, audio: Int16Array) -> Int16Array:
        if self._carry is None:
            return audio
        gap = np.zeros(int(JOIN_GAP_S * PIPELINE_RATE), dtype=np.int16)
        return np.concatenate([self._carry.audio, gap, audio])

    def _carry_start(self) -> int:
        return self._carry.speech_start_ns if self._carry else self._speech_start_ns

    def _on_transcript(self, reply: Reply, text: str | None) -> None:
        if self._speculation is None or self._speculation.reply is not reply:
            return
        self._detector.set_transcript(reply.timeline.stamps["speech_end"], text or "",
                                      self._final_pitch)

    # -- contested turns: barge-in, continuation or backchannel ------------------------
    async def _judge_at_turn_end(self, event: TurnEnded) -> None:
        running = self._speculation
        if running is None or running.reply.timeline.stamps["speech_end"] != event.speech_end_ns:
            await self._discard_speculation()
            running = self._speculation = self._start_reply(event.audio, event.speech_end_ns)
        try:
            async with asyncio.timeout(JUDGE_TIMEOUT_S):
                await running.reply.transcribed.wait()
        except TimeoutError:
            log.warning("turn %d: no transcript to judge the barge-in by", self._turn_id)
        if not is_backchannel(running.reply.heard):
            await self._confirm_contested(f"words: {running.reply.heard!r}")
        else:
            log.info("turn %d: not a barge-in (%r); the reply goes on", self._turn_id,
                     running.reply.heard)

    async def _confirm_contested(self, why: str) -> None:
        self._contested = False
        since_last_end = self._speech_start_ns - self._last_turn_end_ns
        previous = self._active.reply if self._active else None
        if (previous is not None and self._last_turn is not None
                and since_last_end <= self._settings.continuation_window_ms * 1_000_000):
            log.info("turn %d continues turn %d (%s)", self._turn_id, previous.turn_id, why)
            self._carry = self._last_turn
            await self.interrupt("continuation", forget=True)
            if self._speculation is not None:  # redo it with the whole utterance
                old = self._speculation.reply
                await self._discard_speculation()
                self._speculation = self._start_reply(old.audio, old.timeline.stamps["speech_end"])
        else:
            log.info("turn %d interrupts the reply (%s)", self._turn_id, why)
            await self.interrupt("barge_in")
            if self._speculation is not None:
                self._speculation.reply.may_generate.set()

    def _reply_running(self) -> bool:
        return self._active is not None and not self._active.task.done()

    async def _guarded(self, reply: Reply) -> None:
        """A bug in one reply ends that reply with an error event, never the session."""
        try:
            await reply.run()
        except Exception:
            log.exception("turn %d: reply failed", reply.turn_id)
            if not reply.released.is_set():
                return  # an unconfirmed speculation leaves no trace; the turn end retries
            self._io.playout.clear()
            self._io.emit(ErrorOccurred(code="internal_error",
                                        message="the reply failed; please try again"))

    # -- control -----------------------------------------------------------------------
    async def announce(self, text: str) -> None:
        """Stop any reply and speak `text` as the assistant (no LLM); wait until heard."""
        await self.interrupt("announcement")
        tts = self._models.tts
        samples = resample(await tts.synthesize(text), tts.sample_rate, self._io.sample_rate)
        playout = self._io.playout
        playout.enqueue(array_to_pcm16_bytes(samples))
        self.history.append({"role": "assistant", "content": text})
        self._io.emit(ResponseTextDelta(turn_id=self._turn_id, delta=text))
        await wait_until_played(playout, playout.enqueued_samples)
        self._io.emit(ResponseDone(turn_id=self._turn_id, text=text))

    async def handle_dtmf(self, digit: str) -> None:
        if digit and digit == self._settings.dtmf_hangup_digit:
            await self.announce(self._settings.dtmf_hangup_message)
            await self._io.hangup(f"caller pressed {digit}")

    async def interrupt(self, reason: str, forget: bool = False) -> None:
        """Stop the active reply now. History keeps what the caller heard, or (`forget`,
        for a continuation) loses the reply and the user message it answered."""
        running, self._active = self._active, None
        if running is None or running.task.done():
            return
        played_ms, played_text = running.reply.played()
        self._io.playout.clear()
        await _cancel(running)
        reply = running.reply
        if forget and reply.history_mark is not None:
            del self.history[reply.history_mark:]
        elif reply.user_text is not None and played_text:
            self.history.append({"role": "assistant", "content": played_text})
        self._io.emit(ResponseInterrupted(turn_id=reply.turn_id, played_ms=played_ms,
                                          played_text=played_text, reason=reason))
        log.info("turn %d interrupted (%s) after %d ms of audio", reply.turn_id, reason,
                 played_ms)


async def _cancel(running: _Running | None) -> None:
    if running is not None:
        await cancel_and_wait(running.task)
