"""WebSocket transport: one connection at /ws is one session.

The reader validates every message through the sans-I/O protocol module; a bad
message gets an `error` event and, where the contract says so, a close code. The
session (pipeline, playout, events) runs beside the reader in one TaskGroup; when
either ends, the other is cancelled.
"""

from __future__ import annotations

import asyncio
import logging

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from voice.clock import Clock
from voice.errors import CapacityError, MessageTooLarge, ProtocolError
from voice.events import ErrorOccurred, Event, SessionCreated
from voice.session import FactoryLookup, PipelineFactory, Session
from voice.settings import Settings
from wire.websocket import (
    CLOSE_IDLE,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_TOO_LARGE,
    CLOSE_TRY_AGAIN,
    AudioMessage,
    encode_event,
    parse_client_message,
    parse_query_param,
    parse_sample_rate,
)

log = logging.getLogger(__name__)



class _EndSession(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class WebSocketTransport:
    def __init__(self, settings: Settings, pipelines: FactoryLookup, clock: Clock) -> None:
        self._settings = settings
        self._pipelines = pipelines
        self._clock = clock
        self.sessions: dict[str, ServerConnection] = {}

    async def handle(self, ws: ServerConnection) -> None:
        query = ws.request.path.partition("?")[2] if ws.request else ""
        try:
            sample_rate = parse_sample_rate(query)
            pipeline_name, factory = self._pipelines(parse_query_param(query, "pipeline"))
            if len(self.sessions) >= self._settings.max_sessions:  # raced the HTTP check
                raise CapacityError(f"at capacity: {self._settings.max_sessions} sessions open")
        except (ProtocolError, CapacityError) as exc:
            await self._refuse(ws, exc)
            return

        async def send_event(event: Event) -> None:
            await ws.send(encode_event(event))

        async def hang_up(reason: str) -> None:
            await session.flush_events()
            await ws.close(CLOSE_NORMAL, reason[:120])

        session = Session(sample_rate, send_event, ws.send, self._clock,
                          self._settings.playout_lead_ms, hangup=hang_up)
        self.sessions[session.id] = ws
        log.info("session %s opened from %s (%d Hz, %s)", session.id, ws.remote_address,
                 sample_rate, pipeline_name)
        try:
            await self._run(ws, session, factory, pipeline_name)
        finally:
            del self.sessions[session.id]
            log.info("session %s closed (%s)", session.id, ws.close_code)

    async def _run(self, ws: ServerConnection, session: Session, factory: PipelineFactory,
                   pipeline_name: str) -> None:
        session.emit(SessionCreated(session_id=session.id, sample_rate=session.sample_rate,
                                    pipeline=pipeline_name))
        try:
            async with asyncio.TaskGroup() as tg:
                running = tg.create_task(session.run(factory), name=f"{session.id}-session")
                try:
                    await self._read(ws, session)
                finally:
                    running.cancel()
        except* _EndSession as group:
            end = group.exceptions[0]
            assert isinstance(end, _EndSession)
            await self._close(ws, session, end.code, end.reason)
        except* ConnectionClosed:
            pass

    async def _read(self, ws: ServerConnection, session: Session) -> None:
        while True:
            try:
                async with asyncio.timeout(self._settings.idle_timeout_s):
                    message = await ws.recv()
            except TimeoutError:
                session.emit(ErrorOccurred(code="idle_timeout", message=(
                    f"no message for {self._settings.idle_timeout_s:g} s; closing")))
                raise _EndSession(CLOSE_IDLE, "idle timeout") from None
            except ConnectionClosed:
                return
            await self._dispatch(session, message)

    async def _dispatch(self, session: Session, message: bytes | str) -> None:
        try:
            parsed = parse_client_message(message, self._settings.max_message_bytes)
        except MessageTooLarge as exc:
            session.emit(ErrorOccurred(code=exc.code, message=exc.message))
            raise _EndSession(CLOSE_TOO_LARGE, "message too large") from None
        except ProtocolError as exc:
            if exc.code == "invalid_audio":
                session.frames_dropped += 1
            session.emit(ErrorOccurred(code=exc.code, message=exc.message))
            return
        if isinstance(parsed, AudioMessage):
            session.push_audio(parsed.samples)
        elif await session.on_client_message(parsed.type, parsed.data):
            raise _EndSession(CLOSE_NORMAL, "session ended by client")

    async def _close(self, ws: ServerConnection, session: Session, code: int,
                     reason: str) -> None:
        try:
            await session.flush_events()
            await ws.close(code, reason)
        except ConnectionClosed:
            pass

    async def _refuse(self, ws: ServerConnection, exc: ProtocolError | CapacityError) -> None:
        code = CLOSE_TRY_AGAIN if isinstance(exc, CapacityError) else CLOSE_POLICY
        try:
            await ws.send(encode_event(ErrorOccurred(code=exc.code, message=exc.message)))
            await ws.close(code, exc.message[:120])
        except ConnectionClosed:
            pass
