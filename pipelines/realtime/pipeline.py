"""The realtime pipeline: the caller's audio goes to a speech-to-speech provider over the
OpenAI Realtime API (GA), and the provider's audio comes back through the session's
playout, like the cascade's.

Theory of operation. One provider connection at a time: `session.update` (24 kHz PCM
both ways, input transcription on, turn detection as configured), then caller audio
is resampled and appended as it arrives, while the receiver turns provider events
into the session's events (`voice.events`). Turns end either at the provider
(`server_vad`/`semantic_vad`: `input_audio_buffer.speech_stopped`) or by our own VAD
(`local`: we commit and ask for a response, with the cascade's turn-taking: adaptive
end of turn, backchannels that do not interrupt, continuations; `local_mode`).
Speech over a reply is a barge-in: playout stops at once, `response.cancel` and
`conversation.item.truncate` (with the milliseconds actually heard) go to the
provider, `response.interrupted` to the caller. A provider `error`, a failed
response, a dropped or refused connection, or a provider silent past
`realtime_timeout_s` end the turn with an `error` event (and a spoken apology); the
session then reconnects once, after a short backoff. If that fails too, or the
provider's circuit breaker is open (`voice.resilience`, shared by all sessions), the
local cascade serves the rest of the session when a `fallback` is given
(`realtime_fallback = cascade`: the audio the provider never heard is replayed to it,
and its `turn.latency` events say why), and otherwise the call is hung up.

This class decides; its parts keep state and do the work: `link` (the connection, its
reconnects and watchdog), `local_mode` and `local_turns` (our own turn-taking),
`conversation` (history, and which provider item is which turn), `playback` (reply
audio to the session), `fallback` (the cascade taking over).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np

from pipelines.providers.stt import SpeechToText
from pipelines.providers.tts import TextToSpeech
from pipelines.realtime.conversation import Conversation
from pipelines.realtime.fallback import Fallback, FallbackIO, UnheardAudio
from pipelines.realtime.link import ProviderLink
from pipelines.realtime.local_mode import LocalTurnTaking
from pipelines.realtime.options import RealtimeOptions
from pipelines.realtime.playback import ReplyPlayer
from pipelines.realtime.provider import RealtimeProvider, provider_error
from pipelines.realtime.provider_reply import ProviderReply
from pipelines.realtime.provider_turns import ProviderTurns
from pipelines.realtime.usage import ProviderUsage
from pipelines.tools import ToolBox, ToolCall
from voice.audio import Int16Array, StreamResampler, array_to_pcm16_bytes
from voice.clock import Clock
from voice.errors import ConfigError, ProviderError, VoiceError
from voice.events import (
    ErrorOccurred,
    ResponseDone,
    ResponseInterrupted,
    ResponseTextDelta,
    SpeechStarted,
    SpeechStopped,
)
from voice.latency import TurnTimeline
from voice.playout import Playout
from voice.resilience import CircuitBreaker
from voice.session import SessionIO
from voice.tasks import AUDIO_QUEUE_ITEMS, LatestQueue
from voice.turntaking.detector import (
    TurnEnded,
)
from voice.turntaking.listener import STARVATION_S
from voice.usage import Usage
from wire.openai_realtime import client_events as ce
from wire.openai_realtime import server_events as rt

log = logging.getLogger(__name__)

BENIGN_ERRORS = frozenset({"response_cancel_not_active"})


class RealtimePipeline:
    name = "realtime"

    def __init__(self, provider: RealtimeProvider, options: RealtimeOptions, io: SessionIO,
                 clock: Clock, tts: TextToSpeech | None = None,
                 stt: SpeechToText | None = None, breaker: CircuitBreaker | None = None,
                 fallback: Callable[[SessionIO], Fallback] | None = None,
                 tools: ToolBox | None = None) -> None:
        self._provider = provider
        self._tools = tools or None  # the operator's, run here when the provider calls
        self._options = options
        self._io = io
        self._clock = clock
        self._fallback = fallback
        self._delegate: Fallback | None = None  # the fallback, once it serves the session
        self._unheard = UnheardAudio(io.sample_rate)  # while not connected
        self._audio: LatestQueue[tuple[Int16Array, int]] = LatestQueue(
            AUDIO_QUEUE_ITEMS, "caller audio")
        self._to_provider = StreamResampler(io.sample_rate, rt.PROVIDER_RATE)
        self._local = (LocalTurnTaking(self, options, stt, clock, io.sample_rate,
                                       rt.PROVIDER_RATE)
                       if options.turn_detection == "local" else None)
        self._provider_turns = (ProviderTurns(options, io.sample_rate)
                                if self._local is None else None)
        o = options
        self._link = ProviderLink(
            provider, ce.session_update(o.instructions, o.voice, o.turn_detection, o.silence_ms,
                                        o.language, tools=[
                                            {"type": "function", **t.spec()["function"]}
                                            for t in (tools.tools.values() if tools else [])]),
            o.timeout_s, o.reconnect_backoff_s, self._on_event, self._on_link_failure,
            lambda: self._conversation.history, breaker)
        self._watchdog = self._link.watchdog
        self._turn_id = 0
        self._timeline: TurnTimeline | None = None  # the current turn, until its reply
        self._awaiting = False  # the turn ended; its reply has not started yet
        self._reply: ProviderReply | None = None
        self._conversation = Conversation()
        self._player = ReplyPlayer(io, tts, provider.name, self._conversation)
        self._tasks: asyncio.TaskGroup | None = None
        self._provider_usage = ProviderUsage(str(getattr(provider, "model", "")))
        self.usage_models = self._provider_usage.models

    @property
    def usage(self) -> Usage:
        """What the session used: the provider's responses, and the fallback's turns."""
        total = Usage()
        total.add(self._provider_usage.total)
        delegated = getattr(self._delegate, "usage", None)
        if isinstance(delegated, Usage):
            total.add(delegated)
        return total

    # -- the Pipeline protocol ---------------------------------------------------------
    @property
    def playout(self) -> Playout:
        return self._io.playout

    def push_audio(self, samples: Int16Array, arrival_ns: int) -> None:
        if self._delegate is not None:
            self._delegate.push_audio(samples, arrival_ns)
        else:
            self._audio.put_latest((samples, arrival_ns))

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tasks = tg
            pump = tg.create_task(self._pump_audio(), name="realtime-audio-in")
            why = await self._link.run()
            if self._fallback is None:
                self._io.emit(ErrorOccurred(code="realtime_unavailable", message=(
                    "the realtime provider is unavailable; ending the call")))
                await self._io.hangup("realtime provider unavailable")
                return
            pump.cancel()
            await self._fall_back(why)

    async def _fall_back(self, why: str) -> None:
        """The fallback serves the rest of the session, from the audio the provider
        never heard on."""
        assert self._fallback is not None
        reason = f"{self._provider.name}: {why}"
        log.warning("realtime provider unavailable (%s): the %s fallback serves the rest of "
                    "this session", reason, "cascade")
        delegate = self._fallback(FallbackIO(self._io, reason))
        self._link.diverted()
        for samples, arrival_ns in [*self._unheard.take(), *self._drain_queue()]:
            delegate.push_audio(samples, arrival_ns)
        self._delegate = delegate
        await delegate.run()

    def _drain_queue(self) -> list[tuple[Int16Array, int]]:
        items = []
        while not self._audio.empty():
            items.append(self._audio.get_nowait())
        return items

    def _on_link_failure(self, exc: ProviderError) -> None:
        """The connection failed: a turn in flight ends with an apology; with none in
        flight, and a fallback to go to, the caller need not hear of it."""
        in_flight = self._awaiting or (self._reply is not None and not self._reply.generated)
        if in_flight or self._fallback is None:
            self._fail_turn(exc)

    async def interrupt(self, reason: str, forget: bool = False) -> None:
        """Stop the reply now; tell the provider what the caller heard. With `forget`
        (a continuation) the reply and the user turn it answered leave the
        conversation, at the provider and here."""
        if self._delegate is not None:
            await self._delegate.interrupt(reason)
            return
        reply = self._reply
        if reply is None or reply.finished:
            return
        played_ms, played_text = await self._player.stop(reply)
        link = self._link
        if not reply.generated and reply.response_id is not None:
            await link.send(ce.response_cancel(reply.response_id, link.best_effort_id()))
            self._watchdog.disarm()
        reply.generated = True
        if forget:
            for item in self._conversation.forget(reply.item_id):
                await link.send(ce.item_delete(item, link.best_effort_id()))
        elif reply.item_id is not None and reply.provider_samples:
            heard_ms = min(played_ms, reply.received_ms)
            await link.send(ce.item_truncate(reply.item_id, heard_ms, link.best_effort_id()))
        if not forget:
            self._conversation.remember("assistant", played_text)
        self._io.emit(ResponseInterrupted(turn_id=reply.turn_id, played_ms=played_ms,
                                          played_text=played_text, reason=reason))
        log.info("turn %d interrupted (%s) after %d ms of audio", reply.turn_id, reason,
                 played_ms)

    async def announce(self, text: str) -> None:
        """Stop any reply and speak `text` with the local voice; wait until heard."""
        if self._delegate is not None:
            await self._delegate.announce(text)
            return
        await self.interrupt("announcement")
        self._io.emit(ResponseTextDelta(turn_id=self._turn_id, delta=text))
        await self._player.speak(text)
        self._conversation.remember("assistant", text)
        await self._link.send(ce.text_item_create("assistant", text))
        self._io.emit(ResponseDone(turn_id=self._turn_id, text=text))

    def update_session(self, fields: dict[str, Any]) -> dict[str, Any]:
        if self._delegate is not None:  # fallen back to the cascade: it takes them
            return self._delegate.update_session(fields)
        raise ConfigError("session.update is not supported by the realtime pipeline yet: "
                          "its settings are the service's (--realtime-*)", code="unsupported")

    async def handle_dtmf(self, digit: str) -> None:
        if self._delegate is not None:
            await self._delegate.handle_dtmf(digit)
            return
        if digit and digit == self._options.dtmf_hangup_digit:
            await self.announce(self._options.dtmf_hangup_message)
            await self._io.hangup(f"caller pressed {digit}")

    # -- caller audio ----------------------------------------------------------------------
    async def _pump_audio(self) -> None:
        while True:
            in_turn = (self._local.in_turn if self._local is not None
                       else self._provider_turns is not None and self._provider_turns.speaking)
            try:
                async with asyncio.timeout(STARVATION_S if in_turn else None):
                    samples, arrival_ns = await self._audio.get()
            except TimeoutError:
                await self._fill_starved_gap()
                continue
            if not self._link.connected:
                if self._fallback is not None:  # it may need what the provider missed
                    self._unheard.keep(samples, arrival_ns)
            elif self._unheard:
                self._unheard.clear()
            provider_samples = self._to_provider.process(samples)
            if self._provider_turns is not None:
                self._provider_turns.hear(samples, arrival_ns)
            if self._local is None:
                await self.send_input(provider_samples, arrival_ns)
            else:
                await self._local.hear(samples, provider_samples, arrival_ns)

    async def _fill_starved_gap(self) -> None:
        """The caller stopped sending mid-turn: the gap counts as silence (as in the
        cascade), so that the turn can end."""
        now, ms = self._clock.now_ns(), int(STARVATION_S * 1000)
        if self._local is not None:
            await self._local.starved(ms, now)
        else:
            await self.send_input(np.zeros(rt.PROVIDER_RATE * ms // 1000, np.int16), now)

    async def send_input(self, samples: Int16Array, arrival_ns: int) -> None:
        if not self._link.connected or not samples.size:
            return
        self._link.input_clock.add(len(samples), arrival_ns)
        await self._link.send(ce.input_audio_append(array_to_pcm16_bytes(samples)))

    # -- what the local turn-taking drives (pipelines/realtime/local_mode.py) --------------
    @property
    def turn_id(self) -> int:
        return self._turn_id

    def replying_to(self) -> int | None:
        return self._reply.turn_id if self._reply is not None else None

    async def start_turn(self, speech_start_ns: int) -> None:
        await self._start_turn(speech_start_ns, interrupt=False)

    def forget_turn(self) -> None:
        self._timeline = None  # a backchannel: no turn after all

    def turn_began_at(self, speech_start_ns: int) -> None:
        if self._timeline is not None:  # a continuation: the utterance began earlier
            self._timeline.stamps["speech_start"] = speech_start_ns

    async def clear_input(self) -> None:
        await self._link.send(ce.input_audio_clear())

    async def commit_turn(self, audio: Int16Array, event: TurnEnded) -> None:
        """Our VAD ended the turn: commit its audio and ask for the response."""
        self._conversation.committed_audio(self._turn_id, len(audio) * 1000 / rt.PROVIDER_RATE)
        self._end_turn(event.speech_end_ns, event.turn_end_ns)
        self._conversation.mark()
        if not (await self._link.send(ce.input_audio_commit())
                and await self._link.send(ce.response_create())):
            self._fail_turn(ProviderError(
                "the realtime provider is not connected", provider=self._provider.name,
                code="realtime_disconnected"))

    def spawn(self, coro: Coroutine[Any, Any, str | None], what: str) -> asyncio.Task[str | None]:
        assert self._tasks is not None
        return self._tasks.create_task(coro, name=f"realtime-turn-{self._turn_id}-{what}")

    def reply_playing(self) -> bool:
        return self._reply is not None and not self._reply.finished

    # -- turns -------------------------------------------------------------------------------
    async def _start_turn(self, speech_start_ns: int | None, interrupt: bool = True) -> None:
        if interrupt and self.reply_playing():
            await self.interrupt("barge_in")
        self._turn_id += 1
        self._provider_usage.new_turn()
        self._timeline = TurnTimeline(self._turn_id)
        if speech_start_ns is not None:
            self._timeline.mark("speech_start", speech_start_ns)
        self._io.emit(SpeechStarted(turn_id=self._turn_id))

    def _end_turn(self, speech_end_ns: int, turn_end_ns: int) -> None:
        timeline = self._timeline = self._timeline or TurnTimeline(self._turn_id)
        timeline.mark("speech_end", min(speech_end_ns, turn_end_ns))
        timeline.mark("turn_end", turn_end_ns)
        self._io.emit(SpeechStopped(turn_id=self._turn_id))
        self._awaiting = True
        self._watchdog.arm()

    # -- provider events -----------------------------------------------------------------
    async def _on_event(self, event: rt.ServerEvent) -> None:
        if isinstance(event, rt.SpeechStarted) and self._provider_turns is not None:
            self._conversation.speech_started(event.item_id, self._turn_id + 1,
                                              event.audio_start_ms)
            await self._start_turn(self._provider_turns.started(event.audio_start_ms,
                                                                self._link.input_clock))
        elif isinstance(event, rt.SpeechStopped):
            self._conversation.speech_stopped(event.item_id, event.audio_end_ms, self._turn_id)
            self._on_speech_stopped(event)
        elif isinstance(event, rt.InputCommitted):
            self._conversation.input_committed(event.item_id, self._turn_id)
        elif isinstance(event, rt.InputTranscribed):
            final = self._conversation.transcribed(event.item_id, event.transcript,
                                                   self._turn_id)
            if final is not None:
                self._io.emit(final)
        elif isinstance(event, rt.ResponseCreated):
            self._on_response_created(event.response_id)
        elif isinstance(event, rt.OutputItemAdded):
            reply = self._current(event.response_id)
            if reply is not None and event.role in (None, "assistant"):
                reply.item_id = event.item_id
        elif isinstance(event, rt.AudioDelta):
            self._on_audio(event)
        elif isinstance(event, rt.TextDelta):
            self._on_text(event)
        elif isinstance(event, rt.ResponseDone):
            self._on_response_done(event)
        elif isinstance(event, rt.ServerError):
            self._on_error(event.error)
        elif isinstance(event, rt.RateLimitsUpdated):
            for limit in event.rate_limits:
                if limit.remaining == 0:
                    log.warning("realtime provider: %s rate limit exhausted (resets in %s s)",
                                limit.name, limit.reset_seconds)

    def _on_speech_stopped(self, event: rt.SpeechStopped) -> None:
        """The provider ended the turn (provider_turns.py: where the speech ended)."""
        if self._provider_turns is None:
            return
        now = self._clock.now_ns()
        start = self._timeline.stamps.get("speech_start") if self._timeline else None
        self._end_turn(self._provider_turns.speech_end(
            event.audio_end_ms, self._link.input_clock, start, now), now)

    def _on_response_created(self, response_id: str) -> None:
        self._awaiting = False
        timeline, self._timeline = self._timeline or TurnTimeline(self._turn_id), None
        self._reply = ProviderReply(
            turn_id=self._turn_id, timeline=timeline, response_id=response_id,
            resampler=StreamResampler(rt.PROVIDER_RATE, self._io.sample_rate))
        self._watchdog.arm()

    def _current(self, response_id: str) -> ProviderReply | None:
        """The reply this event belongs to, unless it is over (cancelled, failed, stale);
        news of it keeps the watchdog quiet."""
        reply = self._reply
        if reply is None or reply.generated or reply.response_id != response_id:
            return None
        self._watchdog.feed()
        return reply

    def _on_audio(self, event: rt.AudioDelta) -> None:
        reply = self._current(event.response_id)
        if reply is None:
            return
        reply.timeline.mark("tts_first_audio", self._clock.now_ns())
        reply.item_id = reply.item_id or event.item_id
        self._player.add_audio(reply, event.pcm)

    def _on_text(self, event: rt.TextDelta) -> None:
        reply = self._current(event.response_id)
        if reply is None:
            return
        reply.text += event.delta
        self._io.emit(ResponseTextDelta(turn_id=reply.turn_id, delta=event.delta))

    def _on_response_done(self, event: rt.ResponseDone) -> None:
        if event.usage is not None:  # counted whatever became of the reply
            self._io.emit(self._provider_usage.add(self._turn_id, event.usage))
        reply = self._current(event.response_id)
        if reply is None:
            return
        self._watchdog.disarm()
        reply.generated = True
        if event.calls and self._tools is not None and event.status == "completed":
            self._run_calls(reply, event.calls)
            return
        if event.status == "failed":
            error = event.error or rt.ErrorDetail("server_error", None, "the response failed")
            self._report(provider_error(error, self._provider.name))
            self._finish(reply, apologize=True)
            return
        self._link.healthy = self._link.healthy or event.status == "completed"
        reply.text = reply.text or event.transcript
        self._finish(reply, apologize=False)

    def _run_calls(self, reply: ProviderReply, calls: tuple[rt.FunctionCall, ...]) -> None:
        """The provider asked for the operator's tools: run them, give it their outputs
        and ask for the answer, which comes as the same turn's next response."""
        assert self._tools is not None and self._tasks is not None
        tools = self._tools
        self._reply, self._timeline, self._awaiting = None, reply.timeline, True
        wanted = [ToolCall(c.call_id, c.name, c.arguments) for c in calls]
        for call in wanted:
            self._io.emit(call.event(reply.turn_id))

        async def run() -> None:
            results = await tools.run_all(wanted)
            for result in results:
                self._io.emit(result.event(reply.turn_id))
                await self._link.send(ce.function_call_output(result.call.id, result.content))
            if self._awaiting and self._turn_id == reply.turn_id:  # not spoken over since
                await self._link.send(ce.response_create())
                self._watchdog.arm()

        self._tasks.create_task(run(), name=f"realtime-turn-{reply.turn_id}-tools")

    def _on_error(self, error: rt.ErrorDetail) -> None:
        if error.code in BENIGN_ERRORS or self._link.is_best_effort(error.event_id):
            log.debug("realtime provider: %s (%s)", error.message, error.code)
            return
        log.warning("realtime provider error %s/%s: %s", error.type, error.code, error.message)
        exc = provider_error(error, self._provider.name)
        if self._awaiting or (self._reply is not None and not self._reply.generated):
            self._fail_turn(exc)
        else:
            self._report(exc)

    def _report(self, exc: VoiceError) -> None:
        self._io.emit(ErrorOccurred(code=exc.code, message=exc.message))

    # -- ending replies ------------------------------------------------------------------
    def _fail_turn(self, exc: VoiceError) -> None:
        """The pending or running reply ends now: error event, apology, response.done."""
        self._watchdog.disarm()
        self._report(exc)
        reply = self._reply
        if reply is not None and not reply.generated:
            reply.generated = True
            self._finish(reply, apologize=True)
        elif self._awaiting:
            timeline, self._timeline = self._timeline or TurnTimeline(self._turn_id), None
            reply = ProviderReply(turn_id=self._turn_id, timeline=timeline, generated=True,
                                  resampler=StreamResampler(rt.PROVIDER_RATE,
                                                            self._io.sample_rate))
            self._reply = reply
            self._finish(reply, apologize=True)
        self._awaiting = False

    def _finish(self, reply: ProviderReply, apologize: bool) -> None:
        assert self._tasks is not None
        reply.finisher = self._tasks.create_task(
            self._player.play_out(reply, apologize), name=f"realtime-turn-{reply.turn_id}-finish")
