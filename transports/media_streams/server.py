"""Telephony media streams: one provider WebSocket (Twilio `<Connect><Stream>` at
/twilio, Telnyx `stream_url` at /telnyx) is one session, beside the SIP bridge.

The provider's frames go through the sans-I/O parser (`wire/media_streams.py`):
`connected`, then `start` (which must come within `START_TIMEOUT_S`) opens the
session at 8 kHz; `media` frames are decoded from G.711 and pushed to it; `dtmf`
digits go to `session.on_dtmf`; `mark` echoes tell the playout what the caller has
heard; `stop` ends the session. A malformed frame is logged and answered with an
`error` session event and the stream goes on (one bad frame must not end a call);
a frame over `max_message_bytes` ends it (close 1009). Reply audio goes out through
`MarkedPlayout` (media, marks, and `clear` on barge-in) and one writer task; hanging
up closes the WebSocket, which ends the provider's `<Connect>` (Twilio goes on to the
next TwiML verb; with none the call ends); with `--telnyx-api-key` a Telnyx call is
also hung up through Call Control (`call_control.py`). Session events go out only to a client
that asked with the custom parameter `voice_events=json` (test and bench clients:
neither provider knows them).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from transports.media_streams.call_control import CallControl
from transports.media_streams.playout import MarkedPlayout
from voice.audio import Int16Array, pcm16_bytes_to_array
from voice.clock import Clock
from voice.errors import CapacityError, MessageTooLarge, ProtocolError
from voice.events import ErrorOccurred, Event, SessionCreated
from voice.session import FactoryLookup, Session
from voice.settings import Settings
from voice.tasks import DIGIT_QUEUE_ITEMS, CappedQueue
from wire import media_streams as wire
from wire.rtp import g711
from wire.websocket import CLOSE_NORMAL, CLOSE_TOO_LARGE, CLOSE_TRY_AGAIN

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0  # from the WebSocket opening to the provider's `start`
OUTBOX_ITEMS = 4000  # messages to the provider not sent yet (20 ms media, marks, events)
EARLY_FRAMES = 50  # caller audio kept for a pipeline that is not made yet (1 s)
CLOSE_PROTOCOL = 1002
PAYLOAD_TYPES = {"PCMU": g711.PCMU, "PCMA": g711.PCMA}


class _Stream:
    """One provider connection's outgoing side, and the `StreamSink` of its playout."""

    def __init__(self, ws: ServerConnection, provider: str, started: wire.StreamStarted) -> None:
        self.ws = ws
        self.provider = provider
        self.started = started
        self.payload_type = PAYLOAD_TYPES[started.encoding]
        self.events = started.parameters.get("voice_events") == "json"
        self.outbox: CappedQueue[str] = CappedQueue(
            OUTBOX_ITEMS, f"{provider} stream {started.stream_id[:40]}: messages not sent")
        self.keys: CappedQueue[str] = CappedQueue(DIGIT_QUEUE_ITEMS, "keypad digits")

    def media(self, pcm: bytes) -> None:
        payload = g711.encode(pcm16_bytes_to_array(pcm), self.payload_type)
        self.outbox.offer(wire.media_message(self.provider, self.started.stream_id, payload))

    def mark(self, name: str) -> None:
        self.outbox.offer(wire.mark_message(self.provider, self.started.stream_id, name))

    def clear(self) -> None:
        self.outbox.offer(wire.clear_message(self.provider, self.started.stream_id))

    async def send_event(self, event: Event) -> None:
        if self.events:
            self.outbox.offer(wire.voice_event_message(self.provider, self.started.stream_id,
                                                       event.to_dict()))

    async def write(self) -> None:
        while True:
            await self.ws.send(await self.outbox.get())


class _End(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


class MediaStreamTransport:
    def __init__(self, settings: Settings, pipelines: Mapping[str, FactoryLookup],
                 clock: Clock) -> None:
        """`pipelines`: each provider's way to the pipelines (its sessions' label)."""
        self._settings = settings
        self._pipelines = pipelines
        self._clock = clock
        self.sessions: dict[str, ServerConnection] = {}
        self.call_control = (CallControl(settings.telnyx_api_key, settings.telnyx_api_url)
                             if settings.telnyx_api_key else None)

    async def close(self) -> None:
        """Waits for the Telnyx hang-ups still under way."""
        if self.call_control is not None:
            await self.call_control.close()

    async def handle(self, ws: ServerConnection, provider: str) -> None:
        try:
            started = await self._wait_start(ws, provider)
            name, factory = self._pipelines[provider](None)
            if len(self.sessions) >= self._settings.max_sessions:  # raced the HTTP check
                raise CapacityError(f"at capacity: {self._settings.max_sessions} sessions open")
        except (TimeoutError, ConnectionClosed):
            return
        except (ProtocolError, CapacityError) as exc:
            log.warning("%s stream refused: %s", provider, exc)
            await ws.close(CLOSE_TRY_AGAIN if isinstance(exc, CapacityError)
                           else CLOSE_PROTOCOL, exc.message[:120])
            return
        stream = _Stream(ws, provider, started)
        session = self._open_session(stream, name)
        try:
            async with asyncio.TaskGroup() as tg:
                running = tg.create_task(session.run(factory), name=f"{session.id}-session")
                writer = tg.create_task(stream.write(), name=f"{session.id}-writer")
                digits = tg.create_task(self._digits(session, stream), name=f"{session.id}-dtmf")
                try:
                    await self._read(ws, session, stream)
                finally:
                    for task in (running, writer, digits):
                        task.cancel()
        except* _End as group:
            end = group.exceptions[0]
            assert isinstance(end, _End)
            await _flush_and_close(stream, session, end.code, end.reason)
        except* ConnectionClosed:
            pass
        finally:
            del self.sessions[session.id]
            playout = session.playout
            assert isinstance(playout, MarkedPlayout)
            log.info("session %s closed (%s): marks %d sent, %d echoed, %d clears",
                     session.id, ws.close_code, playout.marks_sent, playout.marks_echoed,
                     playout.clears_sent)

    def _open_session(self, stream: _Stream, pipeline: str) -> Session:
        started = stream.started

        async def hang_up(reason: str) -> None:
            if self.call_control is not None and stream.provider == "telnyx" \
                    and started.call_id:  # its own task: this one ends as the stream closes
                self.call_control.hang_up(started.call_id, f"{session.id}-hangup")
            await _flush_and_close(stream, session, CLOSE_NORMAL, reason[:120])

        session = Session(wire.SAMPLE_RATE, stream.send_event, _never, self._clock,
                          self._settings.playout_lead_ms, hangup=hang_up)
        session.playout = MarkedPlayout(stream, wire.SAMPLE_RATE, self._clock,
                                        self._settings.playout_lead_ms)
        self.sessions[session.id] = stream.ws
        log.info("session %s opened: %s stream %s, call %s (%s, %s)", session.id,
                 stream.provider, started.stream_id[:40], started.call_id[:40],
                 started.encoding, pipeline)
        session.emit(SessionCreated(session_id=session.id, sample_rate=wire.SAMPLE_RATE,
                                    pipeline=pipeline))
        return session

    async def _wait_start(self, ws: ServerConnection, provider: str) -> wire.StreamStarted:
        """`connected` (optional) then `start`; anything else first is refused."""
        async with asyncio.timeout(START_TIMEOUT_S):
            while True:
                message = wire.parse_message(await ws.recv(), provider,
                                             self._settings.max_message_bytes)
                if isinstance(message, wire.StreamStarted):
                    return message
                if not isinstance(message, wire.StreamConnected):
                    raise ProtocolError(f"{type(message).__name__} before start",
                                        code="invalid_message")

    async def _read(self, ws: ServerConnection, session: Session, stream: _Stream) -> None:
        early: list[Int16Array] = []
        while True:
            try:
                async with asyncio.timeout(self._settings.idle_timeout_s):
                    frame = await ws.recv()
            except TimeoutError:
                raise _End(CLOSE_NORMAL, "idle timeout") from None
            except ConnectionClosed:
                return
            try:
                message = wire.parse_message(frame, stream.provider,
                                             self._settings.max_message_bytes)
            except MessageTooLarge as exc:
                session.emit(ErrorOccurred(code=exc.code, message=exc.message))
                raise _End(CLOSE_TOO_LARGE, "message too large") from None
            except ProtocolError as exc:
                log.info("session %s: bad %s frame (%s): %s", session.id, stream.provider,
                         exc.code, exc.message)
                session.frames_dropped += exc.code == "invalid_audio"
                session.emit(ErrorOccurred(code=exc.code, message=exc.message))
                continue
            if self._handle(session, stream, message, early):
                return

    def _handle(self, session: Session, stream: _Stream, message: wire.StreamMessage,
                early: list[Int16Array]) -> bool:
        """True when the stream has ended."""
        if isinstance(message, wire.MediaReceived):
            if message.track not in ("inbound", "inbound_track"):
                return False  # Telnyx both_tracks: our own reply coming back
            samples = g711.decode(message.payload, stream.payload_type)
            if session.pipeline is None:
                early.append(samples)
                del early[:-EARLY_FRAMES]
                return False
            for frame in early:
                session.push_audio(frame)
            early.clear()
            session.push_audio(samples)
        elif isinstance(message, wire.MarkPlayed):
            assert isinstance(session.playout, MarkedPlayout)
            session.playout.on_mark(message.name, self._clock.now_ns())
        elif isinstance(message, wire.KeyPressed):
            stream.keys.offer(message.digit)
        elif isinstance(message, wire.StreamStopped):
            session.end_reason = session.end_reason or message.reason
            log.info("session %s: %s stream stopped", session.id, stream.provider)
            return True
        elif isinstance(message, wire.ProviderReported):
            log.warning("session %s: %s reported error %s: %s", session.id, stream.provider,
                        message.code, message.detail[:200])
        return False

    async def _digits(self, session: Session, stream: _Stream) -> None:
        while True:
            digit = await stream.keys.get()
            log.info("session %s: DTMF %s", session.id, digit)
            await session.on_dtmf(digit)


async def _flush_and_close(stream: _Stream, session: Session, code: int, reason: str) -> None:
    try:
        await session.flush_events()
        while not stream.outbox.empty():
            await stream.ws.send(stream.outbox.get_nowait())
        await stream.ws.close(code, reason)
    except ConnectionClosed:
        pass


async def _never(chunk: bytes) -> None:
    raise RuntimeError("a media stream's playout sends through its stream")
