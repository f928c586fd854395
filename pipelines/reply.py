"""One reply: transcribe a turn, stream the LLM, speak it sentence by sentence.

A reply may start *speculatively*, before the turn is confirmed: it produces into a
private outbox and nothing reaches the caller (no event, no audio, no history) until
`release()`. Cancelling an unreleased reply leaves no trace. Once released, the
deliverer forwards the outbox to the session in order and the reply lives until its
audio has been heard, so a barge-in can always stop it and know what was played.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from pipelines.providers.llm import TURN_TRACE, Message, ProviderTrace
from pipelines.providers.models import CascadeModels
from pipelines.providers.stt import hallucination_reason
from pipelines.sentences import SentenceSplitter, clean_for_speech
from voice.audio import (
    PIPELINE_RATE,
    Int16Array,
    array_to_pcm16_bytes,
    resample,
    trim_leading_silence,
)
from voice.clock import Clock
from voice.errors import ProviderError, VoiceError
from voice.events import (
    ErrorOccurred,
    ResponseDone,
    ResponseTextDelta,
    TranscriptFinal,
    TurnLatency,
)
from voice.latency import TurnTimeline
from voice.playout import wait_until_played
from voice.session import SessionIO

log = logging.getLogger(__name__)

APOLOGY = "Sorry, I'm having trouble answering right now. Please try again."


@dataclass(frozen=True)
class _Transcribed:
    text: str


@dataclass(frozen=True)
class _Delta:
    text: str


@dataclass(frozen=True)
class _Speech:
    text: str
    pcm: bytes


@dataclass(frozen=True)
class _Failed:
    error: VoiceError


@dataclass(frozen=True)
class _Dropped:
    reason: str


@dataclass(frozen=True)
class _Finished:
    pass


_Item = _Transcribed | _Delta | _Speech | _Failed | _Dropped | _Finished


@dataclass
class ReplyContext:
    models: CascadeModels
    io: SessionIO
    clock: Clock
    history: list[Message]
    system_prompt: str
    no_speech_threshold: float
    # told the transcript as soon as it is known (None: dropped as noise), even before
    # release: the end-of-turn policy and the barge-in judge use it
    on_transcript: Callable[[Reply, str | None], None] = lambda reply, text: None


@dataclass
class _Spoken:
    text: str
    start: int  # reply-relative sample offsets at the session rate
    end: int


@dataclass
class Reply:
    turn_id: int
    audio: Int16Array
    ctx: ReplyContext
    timeline: TurnTimeline
    speculations_discarded: int = 0
    released: asyncio.Event = field(default_factory=asyncio.Event)
    transcribed: asyncio.Event = field(default_factory=asyncio.Event)  # STT done or failed
    # cleared while the turn is contested (said over a reply): the LLM must not see a
    # history that the verdict (barge-in or continuation) is about to change
    may_generate: asyncio.Event = field(default_factory=asyncio.Event)
    user_text: str | None = None
    heard: str | None = None  # the accepted transcript, known before release
    history_mark: int | None = None  # len(history) before this reply added to it
    dropped_reason: str | None = None
    text: str = ""
    _outbox: asyncio.Queue[_Item] = field(default_factory=asyncio.Queue)
    _spoken: list[_Spoken] = field(default_factory=list)
    _base: int | None = None
    _speculative: bool = False
    _trace: ProviderTrace = field(default_factory=ProviderTrace)

    def release(self, turn_end_ns: int, speculative: bool) -> None:
        self._speculative = speculative
        self.timeline.mark("turn_end", turn_end_ns, overwrite=True)
        self.released.set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._produce(), name=f"reply-{self.turn_id}-produce")
            tg.create_task(self._deliver(), name=f"reply-{self.turn_id}-deliver")

    # -- production (may run before release) ---------------------------------------
    async def _produce(self) -> None:
        try:
            try:
                transcript = await self.ctx.models.stt.transcribe(self.audio)
            finally:
                self.transcribed.set()
            self._mark("stt_final")
            reason = hallucination_reason(transcript, self.ctx.no_speech_threshold)
            if reason is not None:
                self.ctx.on_transcript(self, None)
                self._put(_Dropped(f"{reason}: {transcript.text!r}"))
                return
            self.heard = transcript.text
            self.ctx.on_transcript(self, transcript.text)
            self._put(_Transcribed(transcript.text))
            await self.may_generate.wait()
            messages = [{"role": "system", "content": self.ctx.system_prompt},
                        *self.ctx.history, {"role": "user", "content": transcript.text}]
            await self._generate(messages)
        except ProviderError as exc:
            log.warning("turn %d: %s failed: %s", self.turn_id, exc.provider, exc)
            self._put(_Failed(exc))
            await self._apologize()
        self._put(_Finished())

    async def _apologize(self) -> None:
        try:
            await self._speak(APOLOGY, record=False)
        except ProviderError as exc:  # TTS itself is down: the error event must do
            log.warning("turn %d: cannot speak the apology: %s", self.turn_id, exc)

    async def _generate(self, messages: list[Message]) -> None:
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        failure: ProviderError | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._speak_pieces(pieces), name=f"reply-{self.turn_id}-tts")
                try:
                    await self._stream_llm(messages, pieces)
                except ProviderError as exc:
                    failure = exc
                finally:
                    pieces.put_nowait(None)
        except* ProviderError as group:  # TTS failed inside the group
            failure = failure or next(e for e in group.exceptions if isinstance(e, ProviderError))
        if failure is not None:
            raise failure

    async def _stream_llm(self, messages: list[Message], pieces: asyncio.Queue[str | None]) -> None:
        splitter = SentenceSplitter()
        TURN_TRACE.set(self._trace)  # this task's context: the chain reports into it
        async for delta in self.ctx.models.llm.stream(messages):
            self._mark("llm_first_token")
            self._put(_Delta(delta))
            for piece in splitter.push(delta):
                pieces.put_nowait(piece)
        for piece in splitter.flush():
            pieces.put_nowait(piece)

    async def _speak_pieces(self, pieces: asyncio.Queue[str | None]) -> None:
        while (piece := await pieces.get()) is not None:
            await self._speak(piece)

    async def _speak(self, text: str, record: bool = True) -> None:
        spoken = clean_for_speech(text)
        if not spoken:
            return
        self._mark("tts_first_text")
        tts = self.ctx.models.tts
        samples = await tts.synthesize(spoken)
        if not self.timeline.has("tts_first_audio"):
            samples = trim_leading_silence(samples, tts.sample_rate)
        self._mark("tts_first_audio")
        pcm = array_to_pcm16_bytes(resample(samples, tts.sample_rate, self.ctx.io.sample_rate))
        self._put(_Speech(text if record else "", pcm))

    # -- delivery (after release) ----------------------------------------------------
    async def _deliver(self) -> None:
        await self.released.wait()
        while not isinstance(item := await self._outbox.get(), _Finished | _Dropped):
            self._forward(item)
        if isinstance(item, _Dropped):
            self.dropped_reason = item.reason
            log.info("turn %d: no reply, transcript dropped (%s)", self.turn_id, item.reason)
            return
        if self._base is not None:
            await wait_until_played(self.ctx.io.playout, self.ctx.io.playout.enqueued_samples)
        if self.text:
            self.ctx.history.append({"role": "assistant", "content": self.text})
        self.ctx.io.emit(ResponseDone(turn_id=self.turn_id, text=self.text))

    def _forward(self, item: _Item) -> None:
        io = self.ctx.io
        if isinstance(item, _Transcribed):
            self.user_text = item.text
            self.history_mark = len(self.ctx.history)
            self.ctx.history.append({"role": "user", "content": item.text})
            io.emit(TranscriptFinal(turn_id=self.turn_id, text=item.text,
                                    audio_ms=len(self.audio) * 1000 // PIPELINE_RATE))
        elif isinstance(item, _Delta):
            self.text += item.text
            io.emit(ResponseTextDelta(turn_id=self.turn_id, delta=item.text))
        elif isinstance(item, _Speech):
            self._play(item)
        elif isinstance(item, _Failed):
            io.emit(ErrorOccurred(code=item.error.code, message=item.error.message))

    def _play(self, item: _Speech) -> None:
        playout = self.ctx.io.playout
        if self._base is None:
            self._base = playout.enqueued_samples
            playout.on_first_send = self._first_audio_out
        start = playout.enqueued_samples - self._base
        playout.enqueue(item.pcm)
        if item.text:
            self._spoken.append(_Spoken(item.text, start, start + len(item.pcm) // 2))

    def _first_audio_out(self, now_ns: int) -> None:
        self.timeline.mark("first_audio_out", now_ns)
        provider = self._trace.served_by or self.ctx.models.llm.name
        fallback = self._trace.fallback
        log.info("%s%s (llm %s%s)", self.timeline.log_line(),
                 " (speculative)" if self._speculative else "", provider,
                 f", fallback: {fallback}" if fallback else "")
        self.ctx.io.emit(TurnLatency(
            turn_id=self.turn_id, stages=self.timeline.stages_ms(),
            stamps_ms=self.timeline.relative_ms(), speculative=self._speculative,
            speculations_discarded=self.speculations_discarded,
            provider=provider, fallback=fallback))

    # -- interruption ------------------------------------------------------------------
    def played(self) -> tuple[int, str]:
        """Milliseconds of this reply the caller heard, and the words in them."""
        if self._base is None:
            return 0, ""
        playout = self.ctx.io.playout
        heard = max(0, playout.played_samples() - self._base)
        words: list[str] = []
        for piece in self._spoken:
            if heard >= piece.end:
                words.append(piece.text)
            elif heard > piece.start:
                split = piece.text.split()
                share = (heard - piece.start) / max(1, piece.end - piece.start)
                words.extend(split[: int(len(split) * share)])
        return heard * 1000 // playout.sample_rate, " ".join(words)

    def _mark(self, stamp: str) -> None:
        self.timeline.mark(stamp, self.ctx.clock.now_ns())

    def _put(self, item: _Item) -> None:
        self._outbox.put_nowait(item)
