"""WebRTC transport: a call negotiated on the `/rtc` WebSocket, carried by aiortc.

One signalling WebSocket is one call. The handler sends the ICE servers, answers the
offer, then runs the session beside the watchers of the call in one TaskGroup; the
first of them to end the call ends all of them, and the peer connection is closed in
`finally`, whatever happened:

- the session (pipeline, events);
- caller audio: decoded frames, downmixed to 48 kHz mono, pushed to the session; no
  frame for `rtc_peer_timeout_s` means the peer has gone (close 4008);
- the connection: ICE + DTLS must complete within `rtc_peer_timeout_s` (close 4008),
  and a connection that fails or is closed by the peer ends the call;
- the event channel's client messages (`ping`, `response.cancel`, `dtmf`,
  `session.end`: the WebSocket contract's);
- the signalling socket: its close ends the call;
- the session's own hang-up (the keypad's hang-up digit).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiortc.mediastreams import MediaStreamError
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from transports.webrtc.ice import allow_loopback, ice_servers_from
from transports.webrtc.media import RTC_RATE, CallerAudio
from transports.webrtc.peer import Peer
from transports.webrtc.tracks import frame_samples, next_audio
from voice.clock import Clock
from voice.errors import CapacityError, MessageTooLarge, ProtocolError
from voice.events import ErrorOccurred, Event, SessionCreated
from voice.session import FactoryLookup, PipelineFactory, Session
from voice.settings import Settings
from wire.rtc_signalling import (
    CLOSE_NORMAL,
    CLOSE_PEER_TIMEOUT,
    CLOSE_POLICY,
    CLOSE_TRY_AGAIN,
    IceServer,
    Offer,
    encode_answer,
    encode_config,
    encode_error,
    parse_offer,
)
from wire.websocket import (
    ControlMessage,
    encode_event,
    parse_client_message,
    parse_query_param,
)

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 2.0


class _EndCall(Exception):
    """Raised by whichever task ends the call; `code` None: the socket is already gone."""

    def __init__(self, code: int | None, reason: str, error: str | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.error = error  # an error code to report before closing, if any


class WebRTCTransport:
    def __init__(self, settings: Settings, pipelines: FactoryLookup, clock: Clock,
                 open_sessions: Callable[[], int]) -> None:
        self._settings = settings
        self._pipelines = pipelines
        self._clock = clock
        self._open_sessions = open_sessions
        self.ice_servers: tuple[IceServer, ...] = ice_servers_from(
            settings.rtc_stun_server, settings.rtc_turn_server,
            settings.rtc_turn_username, settings.rtc_turn_password)
        if settings.rtc_allow_loopback:
            allow_loopback()
        self.sessions: dict[str, ServerConnection] = {}

    async def handle(self, ws: ServerConnection) -> None:
        query = ws.request.path.partition("?")[2] if ws.request else ""
        try:
            pipeline_name, factory = self._pipelines(parse_query_param(query, "pipeline"))
            if self._open_sessions() >= self._settings.max_sessions:  # raced the HTTP check
                raise CapacityError(f"at capacity: {self._settings.max_sessions} sessions open")
            await ws.send(encode_config(self.ice_servers))
            offer = await self._read_offer(ws)
        except (ProtocolError, CapacityError) as exc:
            code = CLOSE_TRY_AGAIN if isinstance(exc, CapacityError) else CLOSE_POLICY
            await _refuse(ws, code, exc.code, exc.message)
            return
        except TimeoutError:
            await _refuse(ws, CLOSE_PEER_TIMEOUT, "offer_timeout",
                          f"no offer within {self._settings.rtc_peer_timeout_s:g} s")
            return
        except ConnectionClosed:
            return
        await self._call(ws, offer, factory, pipeline_name)

    async def _read_offer(self, ws: ServerConnection) -> Offer:
        async with asyncio.timeout(self._settings.rtc_peer_timeout_s):
            message = await ws.recv()
        return parse_offer(message, self._settings.max_message_bytes)

    async def _call(self, ws: ServerConnection, offer: Offer, factory: PipelineFactory,
                    pipeline_name: str) -> None:
        hung_up = asyncio.Event()

        async def hang_up(reason: str) -> None:
            hung_up.set()

        peer: Peer | None = None

        async def send_event(event: Event) -> None:
            assert peer is not None
            await peer.send_text(encode_event(event))

        session = Session(RTC_RATE, send_event, None, self._clock,
                          self._settings.playout_lead_ms, hangup=hang_up)
        peer = Peer(self.ice_servers, session.playout.pull, self._clock)
        self.sessions[session.id] = ws
        log.info("webrtc session %s opened from %s (%s)", session.id, ws.remote_address,
                 pipeline_name)
        end: _EndCall | None = None
        try:
            try:
                await ws.send(encode_answer(await peer.answer(offer.sdp)))
            except ProtocolError as exc:
                await _refuse(ws, CLOSE_POLICY, exc.code, exc.message)
                return
            session.emit(SessionCreated(session_id=session.id, sample_rate=RTC_RATE,
                                        pipeline=pipeline_name))
            end = await self._run(ws, session, peer, factory, hung_up)
            await self._finish(ws, session, peer, end)
        except ConnectionClosed:
            pass
        finally:
            await peer.close()
            del self.sessions[session.id]
            log.info("webrtc session %s closed (%s)", session.id,
                     end.reason if end else "signalling closed")

    async def _run(self, ws: ServerConnection, session: Session, peer: Peer,
                   factory: PipelineFactory, hung_up: asyncio.Event) -> _EndCall:
        end: _EndCall | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                sid = session.id
                tg.create_task(session.run(factory), name=f"{sid}-session")
                tg.create_task(self._watch_connection(peer), name=f"{sid}-connection")
                tg.create_task(self._pump_audio(peer, session), name=f"{sid}-caller-audio")
                tg.create_task(self._read_channel(peer, session), name=f"{sid}-channel")
                tg.create_task(_watch_signalling(ws), name=f"{sid}-signalling")
                tg.create_task(_watch_hangup(hung_up), name=f"{sid}-hangup")
        except* _EndCall as group:
            first = group.exceptions[0]
            assert isinstance(first, _EndCall)
            end = first
        if end is None:
            raise AssertionError("the call's tasks ended without ending the call")
        return end

    async def _finish(self, ws: ServerConnection, session: Session, peer: Peer,
                      end: _EndCall) -> None:
        if end.error is not None:
            session.emit(ErrorOccurred(code=end.error, message=end.reason))
        if peer.channel_open.is_set():  # else events could wait forever for a channel
            await session.flush_events()
            await peer.drain()
        if end.code is None:
            return
        if end.error is not None:
            await ws.send(encode_error(end.error, end.reason))
        await peer.close()  # before the socket: its close tells the client all is sent
        try:  # a vanished peer never answers the closing handshake: do not wait for it
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await ws.close(end.code, end.reason[:120])
        except TimeoutError:
            ws.transport.abort()

    async def _watch_connection(self, peer: Peer) -> None:
        timeout_s = self._settings.rtc_peer_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                await peer.connected.wait()
        except TimeoutError:
            raise _EndCall(CLOSE_PEER_TIMEOUT, f"ICE did not complete within {timeout_s:g} s",
                           "ice_timeout") from None
        await peer.failed.wait()
        state = peer.pc.connectionState
        if state == "closed":
            raise _EndCall(CLOSE_NORMAL, "the peer closed the connection")
        raise _EndCall(CLOSE_PEER_TIMEOUT, f"the peer connection {state}", "peer_timeout")

    async def _pump_audio(self, peer: Peer, session: Session) -> None:
        await peer.connected.wait()
        if peer.incoming is None:
            raise _EndCall(CLOSE_POLICY, "the offer has no audio track", "invalid_offer")
        caller = CallerAudio(RTC_RATE)
        timeout_s = self._settings.rtc_peer_timeout_s
        while True:
            try:
                frame = await next_audio(peer.incoming, timeout_s)
            except TimeoutError:
                raise _EndCall(CLOSE_PEER_TIMEOUT, f"no audio from the peer for {timeout_s:g} s",
                               "peer_timeout") from None
            except MediaStreamError:
                raise _EndCall(CLOSE_NORMAL, "the peer ended its audio") from None
            session.push_audio(caller.convert(*frame_samples(frame)))

    async def _read_channel(self, peer: Peer, session: Session) -> None:
        while True:
            message = await peer.messages.get()
            if isinstance(message, bytes):
                session.emit(ErrorOccurred(code="invalid_message", message=(
                    "the event channel carries JSON text; audio goes on the audio track")))
                continue
            try:
                parsed = parse_client_message(message, self._settings.max_message_bytes)
            except MessageTooLarge as exc:
                session.emit(ErrorOccurred(code=exc.code, message=exc.message))
                continue
            except ProtocolError as exc:
                session.emit(ErrorOccurred(code=exc.code, message=exc.message))
                continue
            assert isinstance(parsed, ControlMessage)
            if await session.on_client_message(parsed.type, parsed.data):
                raise _EndCall(CLOSE_NORMAL, "session ended by client")

    async def close_all(self, code: int, reason: str) -> None:
        """Close every call's signalling socket (shutdown); each handler then cleans up."""
        await asyncio.gather(*(ws.close(code, reason) for ws in list(self.sessions.values())),
                             return_exceptions=True)


async def _watch_signalling(ws: ServerConnection) -> None:
    """The socket carries nothing after the answer; its close ends the call."""
    try:
        async for _ in ws:
            pass
    except ConnectionClosed:
        pass
    raise _EndCall(None, "the signalling socket closed")


async def _watch_hangup(hung_up: asyncio.Event) -> None:
    await hung_up.wait()
    raise _EndCall(CLOSE_NORMAL, "the assistant hung up")


async def _refuse(ws: ServerConnection, close_code: int, code: str, message: str) -> None:
    try:
        await ws.send(encode_error(code, message))
        await ws.close(close_code, message[:120])
    except ConnectionClosed:
        pass
