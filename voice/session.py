"""A session binds one transport connection to one pipeline.

It owns the session's tasks (one TaskGroup: playout, event sender, pipeline), its
outgoing event queue and its paced audio playout. Sessions share nothing but the
loaded models, which the pipeline factory closes over.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from voice.audio import Int16Array
from voice.clock import Clock
from voice.errors import VoiceError
from voice.events import (
    DtmfReceived,
    ErrorOccurred,
    Event,
    Pong,
    SessionUpdated,
    SessionUsage,
    TurnLatency,
)
from voice.logs import SESSION_ID
from voice.playout import Playout
from voice.scheduler import DEMAND, Demand
from voice.tasks import EVENT_QUEUE_ITEMS, CappedQueue
from voice.usage import Usage

log = logging.getLogger(__name__)


class SessionIO(Protocol):
    """What a pipeline sees of its session: the caller's rate, the playout of reply
    audio, events out, and hanging up. `Session` is one; tests and fallbacks wrap it."""

    sample_rate: int
    playout: Playout

    def emit(self, event: Event) -> None: ...

    async def hangup(self, reason: str) -> None: ...

    async def transfer(self, target: str) -> None:
        """Hand the call to `target` (a phone line's blind transfer), then end it; a
        `VoiceError` says why not (another transport, a refusal)."""
        ...

    async def send_dtmf(self, digits: str) -> None:
        """Press keypad digits on a phone line (RFC 4733); a `VoiceError` says why not
        (another transport, a bad digit, a phone without telephone-event)."""
        ...


class Pipeline(Protocol):
    name: str

    def push_audio(self, samples: Int16Array, arrival_ns: int) -> None: ...

    async def run(self) -> None: ...

    async def interrupt(self, reason: str) -> None: ...

    async def announce(self, text: str) -> None:
        """Stop any reply and speak `text` (no LLM); return once it has been heard."""
        ...

    async def handle_dtmf(self, digit: str) -> None: ...

    def update_session(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Apply a client's `session.update` (fields checked for shape), all of it or
        none: a `VoiceError` names the field refused. Returns the session settings as
        they now are."""
        ...


GOODBYE_TIMEOUT_S = 15.0  # longest a goodbye may take to be heard
MAX_INPUT_SPEED = 1.5  # caller audio faster than this x real time is dropped ...
INPUT_BURST_S = 2.0  # ... beyond a burst this long (a client catching up after a stall)


class InputPace:
    """A token bucket over the caller's audio: it refills at `MAX_INPUT_SPEED` x real
    time and holds `INPUT_BURST_S` of audio. A microphone never empties it; a client
    that uploads a recording as fast as its link allows does, and the excess is
    dropped, so one session cannot fill the shared models with minutes of audio."""

    def __init__(self, rate: int, now_ns: int) -> None:
        self._rate = rate
        self._capacity = INPUT_BURST_S * rate
        self._tokens = self._capacity
        self._at_ns = now_ns

    def admit(self, samples: int, now_ns: int) -> bool:
        elapsed = max(0, now_ns - self._at_ns) / 1e9
        self._at_ns = now_ns
        self._tokens = min(self._capacity,
                           self._tokens + elapsed * MAX_INPUT_SPEED * self._rate)
        if samples > self._tokens:
            return False
        self._tokens -= samples
        return True


PipelineFactory = Callable[["Session"], Pipeline]
# A transport's way to the pipelines: the pipeline a client asked for (None: the
# default) -> its name and factory; raises ProtocolError for an unknown name.
FactoryLookup = Callable[[str | None], tuple[str, PipelineFactory]]
SendEvent = Callable[[Event], Awaitable[None]]
SendAudio = Callable[[bytes], Awaitable[None]]
Hangup = Callable[[str], Awaitable[None]]  # also a transfer's target, digits to press


def new_session_id() -> str:
    return "sess_" + secrets.token_hex(8)


class Session:
    """`send_audio=None` means the transport drains `playout.pull()` on its own media
    clock (RTP, WebRTC); otherwise the playout pushes paced chunks through it."""

    def __init__(self, sample_rate: int, send_event: SendEvent, send_audio: SendAudio | None,
                 clock: Clock, playout_lead_ms: int, session_id: str | None = None,
                 hangup: Hangup | None = None, transfer: Hangup | None = None,
                 send_dtmf: Hangup | None = None) -> None:
        self.id = session_id or new_session_id()
        self.sample_rate = sample_rate
        self.clock = clock
        self.started_ns = clock.now_ns()
        self.end_reason = ""  # why we ended it (set by `hangup`); "": the caller did
        self.trace_id = ""  # its trace's id when traces are exported (service/tracing.py)
        self.audio_taps: list[Callable[[Int16Array], None]] = []  # the caller's audio,
        # as the pipeline gets it (a call recording)
        self._pushes_audio = send_audio is not None
        self.playout = Playout(send_audio or _pull_only, sample_rate, clock,
                               lead_ms=playout_lead_ms)
        self._send_event = send_event
        self._hangup = hangup
        self._transfer = transfer
        self._send_dtmf = send_dtmf
        self._events: CappedQueue[Event] = CappedQueue(
            EVENT_QUEUE_ITEMS, f"session {self.id}: events the client has not read")
        self.pipeline: Pipeline | None = None
        self.observers: list[Callable[[Event], None]] = []  # see every event (metrics)
        self.ended = asyncio.Event()  # set when run() returns, however it ends
        self.frames_dropped = 0  # caller audio frames lost (late or unusable)
        self.frames_concealed = 0  # caller audio frames made up for lost ones
        self._pace = InputPace(sample_rate, clock.now_ns())
        self.time_limit: tuple[float, str] | None = None  # (seconds, goodbye), set by the
        # pipeline factory: the session ends with the goodbye when the time is up
        self._warned_fast_ns: int | None = None

    def emit(self, event: Event) -> None:
        """Queue an event for the client; never blocks the caller. (A client that
        reads nothing loses events beyond EVENT_QUEUE_ITEMS, and the WebSocket
        keepalive closes it.)"""
        if self.trace_id and isinstance(event, TurnLatency):
            event = dataclasses.replace(event, trace_id=self.trace_id)
        self._events.offer(event)
        for observer in self.observers:
            observer(event)

    def push_audio(self, samples: Int16Array) -> None:
        if self.pipeline is None or not samples.size:
            return
        now = self.clock.now_ns()
        if not self._pace.admit(len(samples), now):
            self.frames_dropped += 1
            if self._warned_fast_ns is None or now - self._warned_fast_ns > 1_000_000_000:
                self._warned_fast_ns = now  # one error event a second, not one a frame
                self.emit(ErrorOccurred(code="audio_too_fast", message=(
                    f"audio is arriving faster than {MAX_INPUT_SPEED:g}x real time; "
                    "the excess is dropped")))
            return
        for tap in self.audio_taps:
            tap(samples)
        self.pipeline.push_audio(samples, now)

    async def on_client_message(self, kind: str, data: dict[str, Any]) -> bool:
        """A control message of the client (docs/protocol.md: ping, response.cancel,
        dtmf, session.end), already checked; True when it asks to end the session."""
        if kind == "ping":
            self.emit(Pong())
        elif kind == "response.cancel" and self.pipeline is not None:
            await self.pipeline.interrupt("client_cancel")
        elif kind == "dtmf":
            await self.on_dtmf(str(data["digit"]))
        elif kind == "session.update" and self.pipeline is not None:
            try:
                current = self.pipeline.update_session(data["session"])
            except VoiceError as exc:
                self.emit(ErrorOccurred(code=exc.code, message=exc.message))
            else:
                self.emit(SessionUpdated(session=current))
        return kind == "session.end"

    async def on_dtmf(self, digit: str) -> None:
        """A keypad digit from the caller (SIP RFC 4733, or a client message)."""
        self.emit(DtmfReceived(digit=digit))
        if self.pipeline is not None:
            await self.pipeline.handle_dtmf(digit)

    def usage_event(self) -> SessionUsage | None:
        """What the session used so far (its pipeline's count), None if it keeps none."""
        usage: Usage | None = getattr(self.pipeline, "usage", None)
        if usage is None:
            return None
        return SessionUsage(usage=usage.to_dict(),
                            models=dict(getattr(self.pipeline, "usage_models", {})),
                            seconds=round((self.clock.now_ns() - self.started_ns) / 1e9, 3))

    async def hangup(self, reason: str) -> None:
        """End the call from our side (SIP BYE, WebSocket close), telling the client
        what the session used first."""
        log.info("session %s: hanging up (%s)", self.id, reason)
        self.end_reason = self.end_reason or reason
        if (usage := self.usage_event()) is not None:
            self.emit(usage)
        if self._hangup is not None:
            await self._hangup(reason)

    async def transfer(self, target: str) -> None:
        if self._transfer is None:
            raise VoiceError("only phone calls can be transferred", code="unsupported")
        log.info("session %s: transferring to %s", self.id, target)
        await self._transfer(target)

    async def send_dtmf(self, digits: str) -> None:
        if self._send_dtmf is None:
            raise VoiceError("only phone calls have keys to press", code="unsupported")
        await self._send_dtmf(digits)

    async def run(self, factory: PipelineFactory) -> None:
        SESSION_ID.set(self.id)  # every log line of this session's tasks carries it
        DEMAND.set(Demand(owner=self.id))  # and every inference job it asks for
        try:
            self.pipeline = factory(self)
            async with asyncio.TaskGroup() as tg:
                if self._pushes_audio:
                    tg.create_task(self.playout.run(), name=f"{self.id}-playout")
                tg.create_task(self._send_events(), name=f"{self.id}-events")
                tg.create_task(self.pipeline.run(), name=f"{self.id}-pipeline")
                if self.time_limit is not None:
                    tg.create_task(self._end_at_time_limit(*self.time_limit),
                                   name=f"{self.id}-time-limit")
        finally:
            self.ended.set()

    async def _end_at_time_limit(self, seconds: float, goodbye: str) -> None:
        await asyncio.sleep(seconds)
        log.info("session %s: time limit of %g s reached", self.id, seconds)
        await self.say_goodbye(goodbye, "maximum session length")

    async def say_goodbye(self, text: str, reason: str) -> None:
        """Speak `text` (at most GOODBYE_TIMEOUT_S of it), then end the call; a goodbye
        that cannot be spoken (TTS down, too slow) does not keep the call open."""
        try:
            async with asyncio.timeout(GOODBYE_TIMEOUT_S):
                if self.pipeline is not None:
                    await self.pipeline.announce(text)
        except (TimeoutError, VoiceError) as exc:
            log.warning("session %s: no goodbye (%s)", self.id, exc or "too slow")
        await self.hangup(reason)

    async def _send_events(self) -> None:
        while True:
            event = await self._events.get()
            await self._send_event(event)

    async def flush_events(self) -> None:
        """Send whatever events are still queued (before a close)."""
        while not self._events.empty():
            await self._send_event(self._events.get_nowait())


async def _pull_only(chunk: bytes) -> None:
    raise RuntimeError("this session's transport pulls audio; nothing may push it")
