"""The cascade pipeline of one session: turn-taking, speculative replies, barge-in.

Audio arrives at the session rate; the `Listener` (`voice.turntaking.listener`)
resamples it, cuts it into VAD frames for the turn detector, and its end-of-turn
policy (`voice.turntaking.endpointing`) waits longer when the speculative transcript
reads as unfinished. Speech over a reply is decided by the `Floor`
(`voice.turntaking.floor`), the same rules as the realtime pipeline's local turns:

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
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from pipelines.cascade.reply import Reply, ReplyContext
from pipelines.context import keep_from
from pipelines.providers.models import CascadeModels
from pipelines.providers.tts import voice_name
from pipelines.tools import Tool
from voice.audio import PIPELINE_RATE, Int16Array, array_to_pcm16_bytes, resample
from voice.clock import Clock
from voice.errors import ConfigError, VoiceError
from voice.events import (
    ErrorOccurred,
    ResponseDone,
    ResponseInterrupted,
    ResponseTextDelta,
    SpeechStarted,
    SpeechStopped,
)
from voice.latency import TurnTimeline
from voice.playout import Playout, wait_until_played
from voice.session import SessionIO
from voice.settings import Settings
from voice.tasks import AUDIO_QUEUE_ITEMS, LatestQueue, cancel_and_wait
from voice.turntaking.detector import (
    OnsetAbandoned,
    SpeechOnset,
    SpeechPaused,
    SpeechResumed,
    TurnEnded,
    TurnEvent,
    TurnStarted,
)
from voice.turntaking.endpointing import TURN_PRESETS
from voice.turntaking.floor import Floor, Verdict
from voice.turntaking.listener import STARVATION_S, Listener, TurnConfig
from voice.turntaking.prosody import final_pitch_ratio
from voice.usage import Usage

log = logging.getLogger(__name__)

MAX_DTMF_DIGITS = 32  # keys one send_dtmf call may press


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
        config = TurnConfig.from_settings(settings)
        self._listener = Listener(config, io.sample_rate)
        if settings.echo_cancellation:
            self._listener.cancel_echo_of(io.playout)
        self._floor = Floor(self, config.barge_in_confirm_ms, config.continuation_window_ms,
                            PIPELINE_RATE, config.max_turn_s)
        self._audio: LatestQueue[tuple[Int16Array, int]] = LatestQueue(
            AUDIO_QUEUE_ITEMS, "caller audio")
        self.history: list[dict[str, Any]] = []
        self._turn_id = 0
        self._speculation: _Running | None = None
        self._active: _Running | None = None
        self._discarded = 0
        self._final_pitch: float | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._builtin = self._call_tools(settings.call_tools)
        self._tools = models.tools.with_tools(self._builtin)
        self._system_prompt = settings.system_prompt
        self._preset = settings.turn_preset
        self._end_after_reply: str | None = None  # end_call was used: why
        self.usage = Usage()  # the session's: every reply's, thrown-away ones too
        self.usage_models: dict[str, str] = models.priced("")
        self._transfer_after_reply = False  # transfer_call was used

    @property
    def playout(self) -> Playout:
        return self._io.playout

    def push_audio(self, samples: Int16Array, arrival_ns: int) -> None:
        self._audio.put_latest((samples, arrival_ns))

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
                async with asyncio.timeout(STARVATION_S if self._listener.in_turn else None):
                    samples, arrival_ns = await self._audio.get()
            except TimeoutError:  # the client stopped sending mid-turn: silence
                for event in self._listener.push_silence(STARVATION_S * 1000,
                                                         self._clock.now_ns()):
                    await self._on_turn_event(event)
                continue
            for frame in self._listener.frames(samples):
                await self._push_frame(frame, arrival_ns)

    async def _push_frame(self, frame: Int16Array, arrival_ns: int) -> None:
        for event in self._listener.hear(frame, arrival_ns):
            await self._on_turn_event(event)
        if self._floor.speech_confirms(self._listener.speech_ms):
            await self._confirm_contested("long speech")

    async def _on_turn_event(self, event: TurnEvent) -> None:
        if isinstance(event, SpeechOnset):
            self._floor.onset()
        elif isinstance(event, OnsetAbandoned):
            self._floor.onset_abandoned()
        elif isinstance(event, TurnStarted):
            await self._on_turn_started(event)
        elif isinstance(event, SpeechPaused):
            await self._discard_speculation()
            self._final_pitch = final_pitch_ratio(event.audio)
            self._speculation = self._start_reply(event.audio, event.speech_end_ns)
        elif isinstance(event, SpeechResumed):
            await self._discard_speculation()
        elif isinstance(event, TurnEnded):
            await self._on_turn_ended(event)

    # -- turns -------------------------------------------------------------------------
    async def _on_turn_started(self, event: TurnStarted) -> None:
        self._turn_id += 1
        self._discarded = 0
        self._floor.turn_started(event.speech_start_ns, event.audio_start)
        self._io.emit(SpeechStarted(turn_id=self._turn_id))

    async def _discard_speculation(self) -> None:
        if self._speculation is not None:
            await _cancel(self._speculation)
            self._speculation = None
            self._discarded += 1

    async def _on_turn_ended(self, event: TurnEnded) -> None:
        if self._floor.contested and await self._dismissed(event):
            await self._discard_speculation()  # only a backchannel or noise
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
        self._floor.turn_ended(self._floor.joined(event.audio), event.turn_end_ns,
                               event.audio_end)

    def _start_reply(self, audio: Int16Array, speech_end_ns: int) -> _Running:
        assert self._tasks is not None
        timeline = TurnTimeline(self._turn_id)
        timeline.mark("speech_start", self._floor.speech_start_ns)
        timeline.mark("speech_end", speech_end_ns)
        context = ReplyContext(
            models=self._models, io=self._io, clock=self._clock, history=self.history,
            system_prompt=self._instructions(),
            no_speech_threshold=self._settings.stt_no_speech_threshold,
            history_tokens=self._settings.llm_history_tokens,
            tools=self._tools, max_tool_rounds=self._settings.max_tool_rounds,
            tool_filler_s=self._settings.tool_filler_ms / 1000,
            tool_filler=self._settings.tool_filler_message,
            reprompt=self._settings.reprompt_message,
            on_transcript=self._on_transcript)
        reply = Reply(self._turn_id, self._floor.joined(audio), context, timeline,
                      speculations_discarded=self._discarded)
        if not self._floor.contested:
            reply.may_generate.set()
        task = self._tasks.create_task(self._guarded(reply), name=f"turn-{self._turn_id}-reply")
        return _Running(reply, task)

    def _on_transcript(self, reply: Reply, text: str | None) -> None:
        if self._speculation is None or self._speculation.reply is not reply:
            return
        self._listener.set_transcript(reply.timeline.stamps["speech_end"], text or "",
                                      self._final_pitch)

    # -- contested turns: barge-in, continuation or backchannel (voice.turntaking.floor)
    async def _dismissed(self, event: TurnEnded) -> bool:
        """Judge the contested turn by its words; True if it was only a backchannel."""
        running = self._speculation
        if running is None or running.reply.timeline.stamps["speech_end"] != event.speech_end_ns:
            await self._discard_speculation()
            running = self._speculation = self._start_reply(event.audio, event.speech_end_ns)

        async def heard(reply: Reply) -> str | None:
            await reply.transcribed.wait()
            return reply.heard

        words = await self._floor.judge(heard(running.reply), self._turn_id)
        if self._floor.dismisses(words, self._turn_id):
            return True
        await self._confirm_contested(f"words: {words!r}")
        return False

    async def _confirm_contested(self, why: str) -> None:
        previous = self._active.reply.turn_id if self._active else None
        verdict = await self._floor.confirm(why, self._turn_id, previous)
        if self._speculation is None:
            return
        if verdict is Verdict.CONTINUATION:  # redo it with the whole utterance
            old = self._speculation.reply
            await self._discard_speculation()
            self._speculation = self._start_reply(old.audio, old.timeline.stamps["speech_end"])
        else:
            self._speculation.reply.may_generate.set()

    def reply_playing(self) -> bool:
        return self._reply_running()

    def _reply_running(self) -> bool:
        return self._active is not None and not self._active.task.done()

    def update_session(self, fields: dict[str, Any]) -> dict[str, Any]:
        """A client's `session.update`: checked whole, then applied (voice.session)."""
        allowed = {f.strip() for f in self._settings.client_settings.split(",")}
        for name in fields:
            if name not in allowed:
                raise ConfigError(f"session.{name} is set by the service and cannot be "
                                  "changed by a client", code="setting_locked")
        tools = self._tools
        if "tools" in fields:
            unknown = [t for t in fields["tools"] if t not in self._models.tools.tools
                       and t not in {b.name for b in self._builtin}]
            if unknown:
                raise ConfigError(f"session.tools: no tool named {unknown[0][:64]!r}; the "
                                  f"tools are: {', '.join(self._all_tool_names()) or 'none'}",
                                  code="invalid_session_update")
            tools = self._models.tools.with_tools(self._builtin).subset(fields["tools"])
        preset = fields.get("turn_preset", self._preset)
        if preset not in TURN_PRESETS:
            raise ConfigError(f"session.turn_preset: one of {', '.join(TURN_PRESETS)}",
                              code="invalid_session_update")
        models = self._models
        if "voice" in fields:
            voices = self._models.voices or {voice_name(models.tts): models.tts}
            if fields["voice"] not in voices:
                raise ConfigError(f"session.voice: no voice named {fields['voice'][:64]!r}; "
                                  f"the voices are: {', '.join(voices)}",
                                  code="invalid_session_update")
            models = dataclasses.replace(models, tts=voices[fields["voice"]])
        if "language" in fields:
            for_language = getattr(models.stt, "for_language", None)
            if for_language is None:
                raise ConfigError(f"session.language: the speech-to-text in use "
                                  f"({models.stt.name}) takes no language",
                                  code="invalid_session_update")
            models = dataclasses.replace(models, stt=for_language(fields["language"]))
        self._models = models  # all checked: now applied, together
        self._tools = tools
        if preset != self._preset:
            self._listener.use_preset(preset)
            self._preset = preset
        self._system_prompt = fields.get("instructions", self._system_prompt)
        log.info("session updated: %s", ", ".join(sorted(fields)))
        return self.session_settings()

    def session_settings(self) -> dict[str, Any]:
        return {"instructions": self._system_prompt, "tools": list(self._tools.tools),
                "turn_preset": self._preset, "voice": voice_name(self._models.tts),
                "language": getattr(self._models.stt, "language", "")}

    def _instructions(self) -> str:
        """The system prompt, and the session's language when a client chose one other
        than the service's: the model answers in it."""
        language = getattr(self._models.stt, "language", "")
        if language and language != self._settings.stt_language:
            return (f"{self._system_prompt}\n\nThe caller speaks the language whose "
                    f"ISO 639-1 code is {language!r}: always answer in that language.")
        return self._system_prompt

    def _all_tool_names(self) -> list[str]:
        return [*self._models.tools.tools, *(b.name for b in self._builtin)]

    async def _transfer(self) -> None:
        target = self._settings.transfer_target
        try:
            await self._io.transfer(target)
        except VoiceError as exc:
            log.warning("transfer to %s did not happen: %s", target, exc)
            self._io.emit(ErrorOccurred(code=exc.code, message=exc.message))
            await self.announce(self._settings.transfer_failed_message)

    def _call_tools(self, names: str) -> list[Tool]:
        """The built-in call-control tools asked for (`call_tools`)."""
        async def end_call(arguments: dict[str, Any]) -> str:
            self._end_after_reply = "the assistant ended the call"
            return "The call ends once your reply has been heard: say goodbye briefly."

        async def transfer_call(arguments: dict[str, Any]) -> str:
            self._transfer_after_reply = True
            return ("The caller is transferred to a person once your reply has been heard: "
                    "tell them so, briefly.")

        async def send_dtmf(arguments: dict[str, Any]) -> str:
            digits = str(arguments["digits"]).upper().replace(" ", "")
            if not 0 < len(digits) <= MAX_DTMF_DIGITS:
                raise ValueError(f"digits: 1 to {MAX_DTMF_DIGITS} keys")
            await self._io.send_dtmf(digits)
            return f"Pressed {' '.join(digits)}."

        nothing = {"type": "object", "properties": {}, "additionalProperties": False}
        keys = {"type": "object", "additionalProperties": False, "required": ["digits"],
                "properties": {"digits": {"type": "string", "description":
                               "The keys in order: 0-9, * and # (A-D on some lines), at "
                               f"most {MAX_DTMF_DIGITS}."}}}
        known = {"end_call": Tool(
            "end_call", "Ends the call, after your reply has been heard. Use it when the "
            "caller says goodbye or asks to hang up.", nothing, end_call),
            "transfer_call": Tool(
            "transfer_call", "Transfers the caller to a person, after your reply has been "
            "heard. Use it when the caller asks for a human or you cannot help.",
            nothing, transfer_call),
            "send_dtmf": Tool(
            "send_dtmf", "Presses keys on the phone line now, as a caller would on a "
            "keypad: use it to answer another system's phone menu or to dial an extension.",
            keys, send_dtmf)}
        return [known[n.strip()] for n in names.split(",") if n.strip() in known]

    async def _guarded(self, reply: Reply) -> None:
        """A bug in one reply ends that reply with an error event, never the session.
        Whatever becomes of the reply, the session's usage gets what it used."""
        try:
            await self._run_reply(reply)
        finally:
            self.usage.add(reply.generation.trace.usage)
            self.usage_models = reply.ctx.models.priced(
                reply.generation.trace.model or self.usage_models.get("llm", ""))

    async def _run_reply(self, reply: Reply) -> None:
        try:
            await reply.run()
            # what the LLM will never read again leaves memory too (the budget is
            # counted without the system prompt: a little more is kept than read)
            del self.history[:keep_from(self.history, self._settings.llm_history_tokens)]
            if self._transfer_after_reply and reply.released.is_set():
                self._transfer_after_reply = False
                await self._transfer()
            if self._end_after_reply and reply.released.is_set():
                await self._io.hangup(self._end_after_reply)
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
        unrecorded = running.reply.played(unrecorded=True)[1]
        self._io.playout.clear()
        await _cancel(running)
        reply = running.reply
        if forget and reply.asked is not None:
            at = next((i for i, m in enumerate(self.history) if m is reply.asked), None)
            if at is not None:
                del self.history[at:]
        elif reply.user_text is not None and unrecorded:
            self.history.append({"role": "assistant", "content": unrecorded})
        self._io.emit(reply.usage_event())
        self._io.emit(ResponseInterrupted(turn_id=reply.turn_id, played_ms=played_ms,
                                          played_text=played_text, reason=reason))
        log.info("turn %d interrupted (%s) after %d ms of audio", reply.turn_id, reason,
                 played_ms)


async def _cancel(running: _Running | None) -> None:
    if running is not None:
        await cancel_and_wait(running.task)
