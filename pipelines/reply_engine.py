"""The reply engine: how one reply is made from the cascade's models, for every path that
answers with them (the cascade pipeline, the /v1/realtime endpoint).

A `Generation` transcribes the caller's turn (when it has one), streams the LLM and
speaks the reply sentence by sentence, putting typed outputs in order into its
outbox: `Heard` (the caller's words, or None when Whisper heard noise or
hallucinated), `Said` (LLM text deltas), `Voiced` (reply audio at `output_rate`, with
the words it speaks), `Failed`, and `Completed` last. It may run *speculatively*:
whoever started it reads the outbox only once the turn is confirmed, so a confirmed
turn finds its transcript, first words and first audio ready; cancelling it leaves no
trace. A `gate` holds the LLM back after the transcript (while a turn over a reply is
judged, the history it would read may still change); a `hold` lets a speculation
speak its first sentence and no more until it is wanted, since many speculations are
thrown away unheard and speech synthesis is the largest share of a worker's CPU.
When a provider fails, an `apology` (if given) is spoken after the `Failed` output.
The latency stamps of the turn timeline are reported through `stamp`.

With `tools`, the LLM may ask for tool calls (pipelines/tools.py): the text it said
before them is spoken, the calls run at once (`ToolsCalled`), and if they have not
all answered within `tool_filler_s` the caller hears `tool_filler` once; the results
(`ToolsAnswered`, errors included: the model hears of a bad or failed call and
answers anyway) go back to the model, whose follow-up is streamed and spoken as
usual. At most `max_tool_rounds` rounds; the last request offers no tools, so the
model has to answer in words. Cancelling the generation (a barge-in) cancels a
pending tool round and its follow-up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipelines.providers.heard import Judged, judge
from pipelines.providers.llm import TURN_TRACE, Message, ProviderTrace
from pipelines.providers.models import CascadeModels
from pipelines.sentences import SentenceSplitter, clean_for_speech
from pipelines.tools import ToolBox, ToolCall, ToolResult
from voice.audio import (
    PIPELINE_RATE,
    Int16Array,
    array_to_pcm16_bytes,
    resample,
    trim_leading_silence,
)
from voice.errors import ProviderError
from voice.scheduler import DEMAND, current_demand

log = logging.getLogger(__name__)

APOLOGY = "Sorry, I'm having trouble answering right now. Please try again."


@dataclass(frozen=True)
class Heard:
    """The caller's words (None: dropped as noise or a Whisper hallucination)."""

    text: str | None
    dropped: str = ""  # why, when text is None
    reprompted: bool = False  # the caller spoke but was not understood: asked again


@dataclass(frozen=True)
class Said:
    text: str  # an LLM text delta


@dataclass(frozen=True)
class Voiced:
    pcm: bytes  # reply audio at the generation's output rate
    text: str = ""  # the words it speaks ("" for an apology, which is not the reply)


@dataclass(frozen=True)
class Failed:
    error: ProviderError


@dataclass(frozen=True)
class ToolsCalled:
    calls: list[ToolCall]


@dataclass(frozen=True)
class ToolsAnswered:
    said: str  # the reply's text before the calls (the assistant message that made them)
    results: list[ToolResult]

    def messages(self) -> list[Message]:
        """The round as the conversation history holds it."""
        asked: Message = {"role": "assistant", "content": self.said or None, "tool_calls": [
            {"id": r.call.id, "type": "function",
             "function": {"name": r.call.name, "arguments": r.call.arguments}}
            for r in self.results]}
        return [asked, *({"role": "tool", "tool_call_id": r.call.id, "content": r.content}
                         for r in self.results)]


@dataclass(frozen=True)
class Completed:
    pass


@dataclass(frozen=True)
class _Unrecorded:
    text: str  # spoken, but not part of the reply (the filler while a tool works)


Output = Heard | Said | Voiced | Failed | ToolsCalled | ToolsAnswered | Completed
MessagesFor = Callable[[str | None], list[Message]]  # the prompt, given the caller's words


def _no_stamp(stamp: str) -> None:
    pass


@dataclass
class Generation:
    models: CascadeModels
    messages_for: MessagesFor
    audio: Int16Array | None  # the turn at 16 kHz; None: answer the conversation as it is
    output_rate: int
    no_speech_threshold: float
    speak: bool = True
    speech_end: int = 0  # which turn audio a speculation was started on
    on_transcript: Callable[[str | None], None] | None = None  # told at once, before release
    stamp: Callable[[str], None] = _no_stamp
    gate: asyncio.Event | None = None
    hold: asyncio.Event | None = None  # set when the reply is wanted: until then, a
    # speculation speaks its first sentence only (most are thrown away unheard)
    apology: str | None = None
    # said when the caller spoke but was not understood (pipelines/providers/heard.py)
    reprompt: str | None = None
    tools: ToolBox | None = None
    # tools the client runs (/v1/realtime's function tools), in the Chat Completions
    # form: calls the model makes end the generation with `ToolsCalled`
    client_tools: list[dict[str, Any]] | None = None
    max_tool_rounds: int = 3
    tool_filler_s: float = 0.7
    tool_filler: str = ""
    outbox: asyncio.Queue[Output] = field(default_factory=asyncio.Queue)
    transcribed: asyncio.Event = field(default_factory=asyncio.Event)  # STT done or failed
    heard: str | None = None
    trace: ProviderTrace = field(default_factory=ProviderTrace)  # which LLM endpoint served
    label: str = "reply"  # for the log: "turn 3"
    _first_audio: bool = True
    _filled: bool = False  # the filler was spoken in this reply
    _plays_until: float = 0.0  # (time.monotonic) when the audio voiced so far has played

    async def run(self) -> None:
        # the inference queues run a reply nobody waits for yet after the work of those
        # who do, and its later sentences after the first ones of others
        DEMAND.set(current_demand().with_(wanted=self.hold))
        try:
            heard: str | None = None
            if self.audio is not None:
                try:
                    judged = await self._transcribe(self.audio)
                finally:
                    self.transcribed.set()
                heard = self.heard = judged.text
                if self.on_transcript is not None:
                    self.on_transcript(heard)
                if heard is not None:
                    heard = self.heard = await self._final_pass(self.audio, heard)
                reprompt = judged.unclear and bool(self.reprompt)
                self.outbox.put_nowait(Heard(heard, judged.dropped, reprompt))
                if reprompt and self.reprompt:
                    await self._reprompt(self.reprompt)
            if self.audio is None or heard is not None:
                if self.gate is not None:
                    await self.gate.wait()
                await self._generate(self.messages_for(heard))
        except ProviderError as exc:
            log.warning("%s: %s failed: %s", self.label, exc.provider, exc)
            self.outbox.put_nowait(Failed(exc))
            if self.apology:
                await self._apologize(self.apology)
        self.outbox.put_nowait(Completed())

    async def _transcribe(self, audio: Int16Array) -> Judged:
        self.trace.usage.stt_seconds += len(audio) / PIPELINE_RATE
        transcript = await self.models.stt.transcribe(audio)
        final_pass = bool(getattr(self.models.stt, "final_beam_size", 0))
        if not final_pass:
            self.stamp("stt_final")
        judged = await asyncio.to_thread(judge, transcript, audio, self.no_speech_threshold)
        if final_pass and judged.text is None:
            self.stamp("stt_final")  # no words for a final pass to hear again
        return judged

    async def _final_pass(self, audio: Int16Array, heard: str) -> str:
        """The words the reply is given: the final pass's (a wider beam, when the
        speech model has one: `stt_final_beam_size`), or the speculative decode's
        when there is none or it heard nothing worth keeping."""
        final_pass = getattr(self.models.stt, "final_pass", None)
        transcript = await final_pass(audio) if final_pass is not None else None
        self.stamp("stt_final")
        if transcript is None:
            return heard
        judged = await asyncio.to_thread(judge, transcript, audio, self.no_speech_threshold)
        if judged.text is not None and judged.text != heard:
            log.debug("%s: the final pass heard %r, not %r", self.label, judged.text, heard)
        return judged.text or heard

    async def _reprompt(self, text: str) -> None:
        """Ask the caller to say it again: heard like a reply, not part of the
        conversation the model reads."""
        self.outbox.put_nowait(Said(text))
        try:
            await self._voice(text, record=False)
        except ProviderError as exc:
            log.warning("%s: cannot speak the re-prompt: %s", self.label, exc)

    async def _apologize(self, text: str) -> None:
        try:
            await self._voice(text, record=False)
        except ProviderError as exc:  # TTS itself is down: the error must do
            log.warning("%s: cannot speak the apology: %s", self.label, exc)

    async def _generate(self, messages: list[Message]) -> None:
        pieces: asyncio.Queue[str | _Unrecorded | None] = asyncio.Queue()
        failure: ProviderError | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                if self.speak:
                    tg.create_task(self._speak_pieces(pieces), name="reply-tts")
                try:
                    await self._stream_llm(messages, pieces)
                except ProviderError as exc:
                    failure = exc
                finally:
                    pieces.put_nowait(None)
        except* ProviderError as group:  # the TTS failed inside the group
            failure = failure or next(e for e in group.exceptions if isinstance(e, ProviderError))
        if failure is not None:
            raise failure

    async def _stream_llm(self, messages: list[Message],
                          pieces: asyncio.Queue[str | _Unrecorded | None]) -> None:
        splitter = SentenceSplitter()
        TURN_TRACE.set(self.trace)  # this task's context: the LLM chain reports into it
        messages = list(messages)
        said = ""  # this reply's text so far
        for round_ in range(self.max_tool_rounds + 1):
            offer = self.tools.specs() if self.tools and round_ < self.max_tool_rounds else None
            if self.client_tools:
                offer = self.client_tools
            calls: list[ToolCall] = []
            before = len(said)
            deltas = (self.models.llm.stream(messages, offer, calls) if offer
                      else self.models.llm.stream(messages))
            async for delta in deltas:
                self.stamp("llm_first_token")
                said += delta
                self.outbox.put_nowait(Said(delta))
                for piece in splitter.push(delta):
                    pieces.put_nowait(piece)
            if not calls:
                break
            for piece in splitter.flush():  # what it said before asking is spoken now
                pieces.put_nowait(piece)
            if self.client_tools:  # the client runs them, and asks for the follow-up
                self.outbox.put_nowait(ToolsCalled(calls))
                return
            answered = ToolsAnswered(said[before:], await self._use_tools(calls, pieces))
            if not said:  # the first words waited for the tools
                self.stamp("tool_result")
            self.outbox.put_nowait(answered)
            messages.extend(answered.messages())
        for piece in splitter.flush():
            pieces.put_nowait(piece)

    async def _use_tools(self, calls: list[ToolCall],
                         pieces: asyncio.Queue[str | _Unrecorded | None]) -> list[ToolResult]:
        assert self.tools is not None
        if self.hold is not None:
            await self.hold.wait()  # a tool acts on the world: never for a speculation
        self.outbox.put_nowait(ToolsCalled(calls))
        self.trace.usage.tool_calls += len(calls)
        running = asyncio.ensure_future(self.tools.run_all(calls))
        try:
            done, _ = await asyncio.wait({running}, timeout=self.tool_filler_s)
            if not done and self.tool_filler and not self._filled:
                self._filled = True  # once a reply: a slow tool hears no chorus of fillers
                pieces.put_nowait(_Unrecorded(self.tool_filler))
            return await running
        finally:
            running.cancel()  # a barge-in: the tools' answers are no longer wanted

    async def _speak_pieces(self, pieces: asyncio.Queue[str | _Unrecorded | None]) -> None:
        while (piece := await pieces.get()) is not None:
            if isinstance(piece, _Unrecorded):
                seconds = await self._voice(piece.text, record=False)
            else:
                seconds = await self._voice(piece)
            if self.hold is not None:
                await self.hold.wait()  # a speculation's audio plays once it is wanted
            # the next sentence is needed when this one has played (the caller hears
            # the audio about as it is voiced: playout keeps only a short lead)
            self._plays_until = max(self._plays_until, time.monotonic()) + seconds
            DEMAND.set(current_demand().with_(later=True, due=self._plays_until))

    async def _voice(self, text: str, record: bool = True) -> float:
        """Synthesize `text` into the outbox; the seconds of audio it made."""
        spoken = clean_for_speech(text)
        if not spoken:
            return 0.0
        self.stamp("tts_first_text")
        tts = self.models.tts
        samples = await tts.synthesize(spoken)
        self.trace.usage.tts_characters += len(spoken)
        self.trace.usage.tts_seconds += len(samples) / tts.sample_rate
        if self._first_audio:
            samples = trim_leading_silence(samples, tts.sample_rate)
            self._first_audio = False
        self.stamp("tts_first_audio")
        pcm = array_to_pcm16_bytes(resample(samples, tts.sample_rate, self.output_rate))
        self.outbox.put_nowait(Voiced(pcm, text if record else ""))
        return len(samples) / tts.sample_rate


async def transcribe(models: CascadeModels, audio: Int16Array,
                     no_speech_threshold: float) -> str | None:
    """The words in `audio` (16 kHz), or None if Whisper heard none worth keeping."""
    transcript = await models.stt.transcribe(audio)
    judged = await asyncio.to_thread(judge, transcript, audio, no_speech_threshold)
    if judged.text is None:
        log.info("transcript dropped (%s)", judged.dropped)
    return judged.text
