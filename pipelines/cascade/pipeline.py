"""The cascade pipeline of one session: turn detection, speculative replies, barge-in.

Audio arrives at the session rate, is resampled to 16 kHz and cut into VAD frames for
the turn detector. On the first silent frame after speech a reply starts
speculatively (STT, LLM, first TTS piece); if the caller goes on speaking it is
cancelled without a trace; when the turn is confirmed it is released. Speech that
starts while a released reply is still running or playing is a barge-in: the audio
stops at once, the reply is cancelled, and history keeps only what was heard.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import numpy as np

from pipelines.cascade.models import CascadeModels
from pipelines.cascade.reply import Reply, ReplyContext, SessionIO
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
from voice.settings import Settings
from voice.turns import (
    FixedSilence,
    SpeechPaused,
    SpeechResumed,
    TurnDetector,
    TurnEnded,
    TurnEvent,
    TurnStarted,
)
from voice.vad import FrameClassifier

log = logging.getLogger(__name__)

STARVATION_S = 0.1  # no audio this long inside a turn counts as silence


@dataclass
class _Running:
    reply: Reply
    task: asyncio.Task[None]


class CascadePipeline:
    name = "cascade"

    def __init__(self, models: CascadeModels, settings: Settings, io: SessionIO,
                 clock: Clock) -> None:
        self._models = models
        self._settings = settings
        self._io = io
        self._clock = clock
        classifier = FrameClassifier(settings.vad_aggressiveness, settings.vad_frame_ms)
        self._detector = TurnDetector(classifier, FixedSilence(settings.silence_ms),
                                      settings.min_speech_ms, settings.max_turn_s)
        self._resampler = StreamResampler(io.sample_rate, PIPELINE_RATE)
        self._pending = np.zeros(0, dtype=np.int16)
        self._audio: asyncio.Queue[tuple[Int16Array, int]] = asyncio.Queue()
        self.history: list[dict[str, str]] = []
        self._turn_id = 0
        self._speech_start_ns = 0
        self._speculation: _Running | None = None
        self._active: _Running | None = None
        self._discarded = 0
        self._tasks: asyncio.TaskGroup | None = None

    def push_audio(self, samples: Int16Array, arrival_ns: int) -> None:
        self._audio.put_nowait((samples, arrival_ns))

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tasks = tg
            try:
                await self._consume_audio()
            finally:
                await self._cancel(self._speculation)
                await self._cancel(self._active)

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
            for event in self._detector.push(frame, arrival_ns):
                await self._on_turn_event(event)

    async def _fill_starved_gap(self) -> None:
        """The client stopped sending mid-turn: treat the gap as silence."""
        frames = int(STARVATION_S * 1000) // self._settings.vad_frame_ms
        for _ in range(frames):
            if not self._detector.in_turn:
                return
            for event in self._detector.push(self._detector.silence_frame(), self._clock.now_ns()):
                await self._on_turn_event(event)

    async def _on_turn_event(self, event: TurnEvent) -> None:
        if isinstance(event, TurnStarted):
            await self._on_turn_started(event)
        elif isinstance(event, SpeechPaused):
            await self._speculate(event)
        elif isinstance(event, SpeechResumed):
            await self._discard_speculation()
        elif isinstance(event, TurnEnded):
            await self._on_turn_ended(event)

    async def _on_turn_started(self, event: TurnStarted) -> None:
        self._turn_id += 1
        self._speech_start_ns = event.speech_start_ns
        self._discarded = 0
        if self._active is not None and not self._active.task.done():
            await self.interrupt("barge_in")
        self._io.emit(SpeechStarted(turn_id=self._turn_id))

    async def _speculate(self, event: SpeechPaused) -> None:
        await self._discard_speculation()
        self._speculation = self._start_reply(event.audio, event.speech_end_ns)

    async def _discard_speculation(self) -> None:
        if self._speculation is not None:
            await self._cancel(self._speculation)
            self._speculation = None
            self._discarded += 1

    async def _on_turn_ended(self, event: TurnEnded) -> None:
        self._io.emit(SpeechStopped(turn_id=self._turn_id))
        running, speculative = self._speculation, True
        self._speculation = None
        if (running is None or running.task.done()
                or running.reply.timeline.stamps["speech_end"] != event.speech_end_ns):
            await self._cancel(running)
            running, speculative = self._start_reply(event.audio, event.speech_end_ns), False
        running.reply.release(event.turn_end_ns, speculative=speculative)
        self._active = running

    def _start_reply(self, audio: Int16Array, speech_end_ns: int) -> _Running:
        assert self._tasks is not None
        timeline = TurnTimeline(self._turn_id)
        timeline.mark("speech_start", self._speech_start_ns)
        timeline.mark("speech_end", speech_end_ns)
        context = ReplyContext(
            models=self._models, io=self._io, clock=self._clock, history=self.history,
            system_prompt=self._settings.system_prompt,
            no_speech_threshold=self._settings.stt_no_speech_threshold)
        reply = Reply(self._turn_id, audio, context, timeline,
                      speculations_discarded=self._discarded)
        task = self._tasks.create_task(self._guarded(reply), name=f"turn-{self._turn_id}-reply")
        return _Running(reply, task)

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

    async def interrupt(self, reason: str) -> None:
        """Stop the active reply now; keep in history only what the caller heard."""
        running, self._active = self._active, None
        if running is None or running.task.done():
            return
        played_ms, played_text = running.reply.played()
        self._io.playout.clear()
        await self._cancel(running)
        reply = running.reply
        if reply.user_text is not None and played_text:
            self.history.append({"role": "assistant", "content": played_text})
        self._io.emit(ResponseInterrupted(turn_id=reply.turn_id, played_ms=played_ms,
                                          played_text=played_text, reason=reason))
        log.info("turn %d interrupted (%s) after %d ms of audio", reply.turn_id, reason,
                 played_ms)

    @staticmethod
    async def _cancel(running: _Running | None) -> None:
        if running is None or running.task.done():
            return
        running.task.cancel()
        try:
            await running.task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
