"""One reply of the cascade: its production (the reply engine, `pipelines.reply_engine`:
transcribe the turn, stream the LLM, speak it sentence by sentence) and its delivery
to the session.

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

from pipelines.context import fit
from pipelines.providers.llm import Message
from pipelines.providers.models import CascadeModels
from pipelines.reply_engine import (
    APOLOGY,
    Completed,
    Failed,
    Generation,
    Heard,
    Output,
    Said,
    ToolsAnswered,
    ToolsCalled,
    Voiced,
)
from pipelines.tools import ToolBox
from voice.audio import PIPELINE_RATE, Int16Array
from voice.clock import Clock
from voice.events import (
    ErrorOccurred,
    ResponseDone,
    ResponseTextDelta,
    TranscriptFinal,
    TurnLatency,
    TurnUsage,
)
from voice.latency import TurnTimeline
from voice.playout import wait_until_played
from voice.session import SessionIO

log = logging.getLogger(__name__)


@dataclass
class ReplyContext:
    models: CascadeModels
    io: SessionIO
    clock: Clock
    history: list[Message]
    system_prompt: str
    no_speech_threshold: float
    history_tokens: int = 3000  # of the history the LLM reads (pipelines/context.py)
    tools: ToolBox | None = None
    max_tool_rounds: int = 3
    tool_filler_s: float = 0.7
    tool_filler: str = ""
    reprompt: str = ""  # said when the caller spoke but was not understood ("": nothing)
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
    # cleared while the turn is contested (said over a reply): the LLM must not see a
    # history that the verdict (barge-in or continuation) is about to change
    may_generate: asyncio.Event = field(default_factory=asyncio.Event)
    user_text: str | None = None
    asked: Message | None = None  # the user message this reply added to the history
    dropped_reason: str | None = None
    reprompted: bool = False  # the caller was asked to say it again
    text: str = ""
    _in_history: int = 0  # how much of `text` the history holds (with a tool round)
    _spoken_in_history: int = 0  # how many of `_spoken` it holds
    _failed: bool = False
    _spoken: list[_Spoken] = field(default_factory=list)
    _base: int | None = None
    _speculative: bool = False
    _generation: Generation | None = None

    def __post_init__(self) -> None:
        ctx = self.ctx
        self._generation = Generation(
            ctx.models, self._messages_for, self.audio, ctx.io.sample_rate,
            ctx.no_speech_threshold, on_transcript=lambda text: ctx.on_transcript(self, text),
            stamp=self._mark, gate=self.may_generate, hold=self.released, apology=APOLOGY,
            label=f"turn {self.turn_id}", tools=ctx.tools or None,
            max_tool_rounds=ctx.max_tool_rounds, tool_filler_s=ctx.tool_filler_s,
            tool_filler=ctx.tool_filler, reprompt=ctx.reprompt or None)

    @property
    def generation(self) -> Generation:
        assert self._generation is not None
        return self._generation

    @property
    def transcribed(self) -> asyncio.Event:
        """Set once STT is done (or failed)."""
        return self.generation.transcribed

    @property
    def heard(self) -> str | None:
        """The accepted transcript, known before release."""
        return self.generation.heard

    def release(self, turn_end_ns: int, speculative: bool) -> None:
        self._speculative = speculative
        self.timeline.mark("turn_end", turn_end_ns, overwrite=True)
        self.released.set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.generation.run(), name=f"reply-{self.turn_id}-produce")
            tg.create_task(self._deliver(), name=f"reply-{self.turn_id}-deliver")

    def _messages_for(self, heard: str | None) -> list[Message]:
        """Read after the gate opens: the history as the verdict left it."""
        return fit([{"role": "system", "content": self.ctx.system_prompt}, *self.ctx.history,
                    {"role": "user", "content": heard or ""}], self.ctx.history_tokens)

    # -- delivery (after release) ----------------------------------------------------
    async def _deliver(self) -> None:
        await self.released.wait()
        outbox = self.generation.outbox
        while not isinstance(item := await outbox.get(), Completed):
            if isinstance(item, Heard) and item.text is None:
                self.dropped_reason = item.dropped
                log.info("turn %d: %s, transcript dropped (%s)", self.turn_id,
                         "asked again" if item.reprompted else "no reply", item.dropped)
                if not item.reprompted:
                    return
                self.reprompted = True
            self._forward(item)
        if self._base is not None:
            await wait_until_played(self.ctx.io.playout, self.ctx.io.playout.enqueued_samples)
        if self.text[self._in_history:] and not self.reprompted:  # a re-prompt is
            # heard, but the conversation goes on as if it were not said
            self.ctx.history.append({"role": "assistant",
                                     "content": self.text[self._in_history:]})
        elif self._failed and self.asked is not None and not self._in_history:
            # the caller heard the apology: so does the model, and the next user
            # message does not follow this one unanswered
            self.ctx.history.append({"role": "assistant", "content": APOLOGY})
        self.ctx.io.emit(self.usage_event())
        self.ctx.io.emit(ResponseDone(turn_id=self.turn_id, text=self.text,
                                      reprompt=self.reprompted))

    def usage_event(self) -> TurnUsage:
        trace = self.generation.trace
        return TurnUsage(turn_id=self.turn_id, usage=trace.usage.to_dict(),
                         models=self.ctx.models.priced(trace.model))

    def _forward(self, item: Output) -> None:
        io = self.ctx.io
        if isinstance(item, Heard) and item.text is not None:
            self.user_text = item.text
            self.asked = {"role": "user", "content": item.text}
            self.ctx.history.append(self.asked)
            io.emit(TranscriptFinal(turn_id=self.turn_id, text=item.text,
                                    audio_ms=len(self.audio) * 1000 // PIPELINE_RATE))
        elif isinstance(item, Said):
            self.text += item.text
            io.emit(ResponseTextDelta(turn_id=self.turn_id, delta=item.text))
        elif isinstance(item, Voiced):
            self._play(item)
        elif isinstance(item, Failed):
            self._failed = True
            io.emit(ErrorOccurred(code=item.error.code, message=item.error.message))
        elif isinstance(item, ToolsCalled):
            for call in item.calls:
                io.emit(call.event(self.turn_id))
        elif isinstance(item, ToolsAnswered):
            for result in item.results:
                io.emit(result.event(self.turn_id))
            self.ctx.history.extend(item.messages())
            self._in_history = len(self.text)
            self._spoken_in_history = len(self._spoken)

    def _play(self, item: Voiced) -> None:
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
        trace = self.generation.trace
        provider = trace.served_by or self.ctx.models.llm.name
        fallback = trace.fallback
        log.info("%s%s (llm %s%s)", self.timeline.log_line(),
                 " (speculative)" if self._speculative else "", provider,
                 f", fallback: {fallback}" if fallback else "")
        self.ctx.io.emit(TurnLatency(
            turn_id=self.turn_id, stages=self.timeline.stages_ms(),
            stamps_ms=self.timeline.relative_ms(), speculative=self._speculative,
            speculations_discarded=self.speculations_discarded,
            provider=provider, fallback=fallback))

    # -- interruption ------------------------------------------------------------------
    def played(self, unrecorded: bool = False) -> tuple[int, str]:
        """Milliseconds of this reply the caller heard, and the words in them (with
        `unrecorded`, only those the history does not hold yet: the words before a
        tool round are there already, in the message that made the calls)."""
        if self._base is None:
            return 0, ""
        playout = self.ctx.io.playout
        heard = max(0, playout.played_samples() - self._base)
        words: list[str] = []
        for piece in self._spoken[self._spoken_in_history if unrecorded else 0:]:
            if heard >= piece.end:
                words.append(piece.text)
            elif heard > piece.start:
                split = piece.text.split()
                share = (heard - piece.start) / max(1, piece.end - piece.start)
                words.extend(split[: int(len(split) * share)])
        return heard * 1000 // playout.sample_rate, " ".join(words)

    def _mark(self, stamp: str) -> None:
        self.timeline.mark(stamp, self.ctx.clock.now_ns())
