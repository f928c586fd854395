"""The service: one HTTP/WebSocket listener, shared models, clean shutdown. (What the
worker says about itself, /healthz and /readyz, is `service.health`'s.)

Routes: `GET /healthz` (JSON status), `GET /ws` (WebSocket sessions, see
docs/protocol.md), `GET /rtc` (WebRTC signalling), `GET /v1/realtime` (the
OpenAI-Realtime-compatible endpoint, docs/realtime.md), `GET /` (the demo page) and
`GET /widget/...` (the browser widget); `GET /twilio` and `GET /telnyx` take the
providers' telephony media streams (docs/telephony.md). Models are loaded once before listening.
SIGINT/SIGTERM close every open session with code 1001 and stop the listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import signal
import time
from collections.abc import Callable
from contextvars import ContextVar
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from apis.openai_audio import AudioApi
from apis.openai_realtime.server import PATH as REALTIME_API_PATH
from apis.openai_realtime.server import RealtimeApiEndpoint
from pipelines.cascade.pipeline import CascadePipeline
from pipelines.providers.models import CascadeModels
from pipelines.providers.registry import breaker_for, load_models
from pipelines.providers.stt import WhisperSTT
from pipelines.realtime.options import RealtimeOptions
from pipelines.realtime.pipeline import RealtimePipeline
from pipelines.realtime.provider import WebSocketProvider
from service.access import MEDIA_STREAM_PATHS, Door, select_subprotocol, session_route
from service.call_records import CallRecorder, CallRecords
from service.health import LiveSessions, breakers, readiness, replies_running
from service.local_llm import LocalLLM, start_local_llm
from service.recording import CallRecording
from service.static import StaticFiles
from service.tracing import SessionTrace, Tracing, endpoint_from
from transports.media_streams.server import MediaStreamTransport
from transports.sip.bridge import SipBridge
from transports.webrtc.server import WebRTCTransport
from transports.websocket.server import WebSocketTransport
from voice.admission import Admission, Refused
from voice.auth import Credentials
from voice.clock import MONOTONIC, Clock
from voice.errors import ProtocolError
from voice.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from voice.metrics import LiveSession, ModelQueue, ServiceMetrics, WorkerLoad
from voice.scheduler import Headroom, InferenceQueue
from voice.session import Pipeline, PipelineFactory, Session, SessionIO
from voice.settings import Settings
from voice.turntaking.denoise import make_denoiser
from voice.usage import Prices
from wire.websocket import CLOSE_GOING_AWAY, CLOSE_TRY_AGAIN

TELEPHONE_TRANSPORTS = ("sip", "twilio", "telnyx")  # 8 kHz G.711 calls

log = logging.getLogger(__name__)

RECORDING_FLUSH_S = 1.0  # how often a call recording is written out

# who opened the session being set up: the label of its credential ("key 2"), "" if none
TENANT: ContextVar[str] = ContextVar("tenant", default="")


def http_response(status: HTTPStatus, body: bytes, content_type: str,
                  retry_after: int | None = None) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-store"), ("Connection", "close")])
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return Response(status.value, status.phrase, headers, body)


def json_response(status: HTTPStatus, data: object) -> Response:
    return http_response(status, json.dumps(data).encode(), "application/json")


class Service:
    def __init__(self, settings: Settings, models: CascadeModels, clock: Clock = MONOTONIC) -> None:
        self.settings = settings
        make_denoiser(settings.denoiser)  # a denoiser that cannot load stops the start
        self.models = models
        self.clock = clock
        self.draining = False
        queues = [queue for model in (models.stt, models.tts)
                  if isinstance(queue := getattr(model, "queue", None), InferenceQueue)]
        # the sessions that share the models: callers' sessions and /v1/realtime clients,
        # all of them holding a ticket of the one admission
        self.headroom = Headroom(queues, lambda: self.admission.open,
                                 max_busy=settings.shed_busy,
                                 max_wait_s=settings.shed_wait_ms / 1000)
        self.admission = Admission(settings.max_sessions, settings.max_sessions_per_address,
                                   pressure=self.headroom.refusal)
        self.live = LiveSessions()
        self.metrics = ServiceMetrics(self.live.live, self.load, self.breakers,
                                      self.live.audio_frames)
        self.records = CallRecords(settings.call_records_dir, settings.call_records_url,
                                   settings.call_records_secret, settings.call_records_days,
                                   Prices.load(settings.price_table))
        self._recording: set[asyncio.Task[None]] = set()
        if self.records.enabled:
            log.info("call records: %s%s; audio recording %s",
                     f"to {self.records.directory}" if self.records.directory else "",
                     " and the webhook" if settings.call_records_url else "",
                     "ON (both sides, WAV)" if settings.record_calls else "off")
        endpoint = endpoint_from(settings.otlp_endpoint)
        self.tracing = Tracing.to_otlp(endpoint) if endpoint else None
        self.websocket = WebSocketTransport(settings, self._factory_for("ws"), clock)
        self.realtime_api = RealtimeApiEndpoint(settings, models)
        self.realtime_provider = WebSocketProvider(
            settings.realtime_url, settings.realtime_model, settings.openai_api_key,
            settings.realtime_timeout_s)
        self.realtime_breaker = breaker_for(self.realtime_provider.name, settings)
        self.webrtc = WebRTCTransport(settings, self._factory_for("webrtc"), clock,
                                      self.open_sessions)
        # calls at 8 kHz decode with the telephone preset's beam (docs/recognition.md)
        self.telephone_models = models
        if isinstance(models.stt, WhisperSTT) and (
                settings.telephone_stt_beam_size != settings.stt_beam_size):
            self.telephone_models = dataclasses.replace(
                models, stt=models.stt.with_beam(settings.telephone_stt_beam_size))
        self.media_streams = MediaStreamTransport(
            settings, {p: self._factory_for(p) for p in MEDIA_STREAM_PATHS.values()}, clock)
        self.static = StaticFiles()
        self.sip = (SipBridge(settings, self._factory_for("sip"), clock, self.admission)
                    if settings.sip_port else None)
        self._server: Server | None = None
        credentials = Credentials.load(settings.api_keys, settings.api_keys_file)
        self.door = Door(credentials, settings.allowed_origins, settings.pipeline,
                         http_response, settings.twilio_auth_token,
                         settings.media_stream_public_url)
        self.audio_api = (AudioApi(models.stt, models.tts, settings.audio_api_key,
                                   credentials, settings.client_secret_ttl_s)
                          if settings.audio_api_port else None)

    def pipeline_factory(self, name: str | None) -> tuple[str, PipelineFactory]:
        """The one table of pipelines; `name` None: the service's default."""
        pipelines: dict[str, PipelineFactory] = {
            "cascade": self._cascade, "realtime": self._realtime}
        name = name or self.settings.pipeline
        if name not in pipelines:
            raise ProtocolError(f"unknown pipeline {name[:40]!r}; available: "
                                + ", ".join(pipelines), code="invalid_pipeline")
        return name, pipelines[name]

    def _factory_for(self, transport: str) -> Callable[[str | None],
                                                       tuple[str, PipelineFactory]]:
        """`pipeline_factory` for one transport: its sessions are tracked (metrics,
        drain) from the moment their pipeline is made."""
        def lookup(name: str | None) -> tuple[str, PipelineFactory]:
            chosen, make = self.pipeline_factory(name)

            def build(session: Session) -> Pipeline:
                live = LiveSession(transport, chosen)
                self.live.add(session, live)
                self.metrics.session_started(live)
                session.observers.append(functools.partial(self.metrics.observe, chosen))
                recorder = CallRecorder(session.id, transport, chosen, TENANT.get())
                session.observers.append(recorder.observe)
                traced = None
                if self.tracing is not None:
                    traced = self.tracing.session(session.id, transport, chosen)
                    session.trace_id = traced.trace_id
                    session.observers.append(traced.observe)
                    log.info("session %s: trace %s", session.id, traced.trace_id)
                recording = self._start_recording(session) if self.settings.record_calls \
                    else None
                task = asyncio.create_task(self._record(session, recorder, traced, recording),
                                           name=f"{session.id}-record")
                self._recording.add(task)
                task.add_done_callback(self._recording.discard)
                if self.settings.max_session_s:
                    session.time_limit = (self.settings.max_session_s,
                                          self.settings.max_session_message)
                if chosen == "cascade" and transport in TELEPHONE_TRANSPORTS:
                    return self._cascade(session, self.telephone_models)
                return make(session)
            return chosen, build
        return lookup

    def _start_recording(self, session: Session) -> CallRecording:
        assert self.records.directory is not None
        day = time.strftime("%Y-%m-%d", time.gmtime())  # the record's own folder (UTC)
        path = self.records.directory / day / f"{session.id}.wav"
        recording = CallRecording(path, session.clock.now_ns())
        rate, playout = session.sample_rate, session.playout
        session.audio_taps.append(lambda samples: recording.caller(samples, rate))
        playout.taps.append(
            lambda pcm, heard_ns: recording.assistant(pcm, playout.sample_rate, heard_ns))
        return recording

    async def _record(self, session: Session, recorder: CallRecorder,
                      traced: SessionTrace | None, recording: CallRecording | None) -> None:
        """While `session` runs: its recording written as it goes. When it ends: its
        usage into /metrics, its record delivered, its trace's session span ended."""
        while recording is not None and not session.ended.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.ended.wait(), RECORDING_FLUSH_S)
            await asyncio.to_thread(recording.flush)
        await session.ended.wait()
        reason = session.end_reason or "the caller hung up"
        if traced is not None:
            traced.end(reason)
        usage = session.usage_event()
        record = recorder.record(reason, usage, self.records.prices)
        if recording is not None:
            await asyncio.to_thread(recording.flush, True)
            record["recording"] = {"path": str(recording.path), "format": "wav",
                                   "rate": 16000, "channels": ["caller", "assistant"]}
        if usage is not None:
            self.metrics.session_used(recorder.tenant or "none", usage.usage,
                                      record["cost"]["usd"])
        if self.records.enabled:
            self.records.deliver(record)

    def load(self) -> WorkerLoad:
        queues = tuple(ModelQueue(s.name, s.busy, sum(s.waiting.values()), s.now_wait_p90_s,
                                  s.jobs, s.dropped, s.speculative)
                       for s in self.headroom.stats())
        return WorkerLoad(len(self.live.live()), self.settings.max_sessions, self.draining,
                          headroom=self.headroom.headroom(), queues=queues)

    def readiness(self) -> tuple[bool, dict[str, object]]:
        return readiness(self.load(), self.admission, self.sip)

    def _cascade(self, session: Session, models: CascadeModels | None = None
                 ) -> CascadePipeline:
        return CascadePipeline(models or self.models, self.settings, session, self.clock)

    def _realtime(self, session: Session) -> RealtimePipeline:
        def cascade(io: SessionIO) -> CascadePipeline:
            return CascadePipeline(self.models, self.settings, io, self.clock)

        return RealtimePipeline(
            self.realtime_provider, RealtimeOptions.from_settings(self.settings), session,
            self.clock, tts=self.models.tts, stt=self.models.stt, breaker=self.realtime_breaker,
            fallback=cascade if self.settings.realtime_fallback == "cascade" else None,
            tools=self.models.tools)

    def breakers(self) -> dict[str, dict[str, object]]:
        return breakers(self.models, self.realtime_breaker)

    def open_sessions(self) -> int:
        return (len(self.websocket.sessions) + len(self.webrtc.sessions)
                + len(self.media_streams.sessions))

    async def route(self, connection: ServerConnection) -> None:
        path = connection.request.path.partition("?")[0] if connection.request else ""
        ticket = self.admission.take(str(connection.remote_address[0]))
        if isinstance(ticket, Refused):  # raced past the HTTP check with others: too late
            log.warning("refused a session on %s: %s", session_route(path), ticket.message)
            self.door.turn_away(connection)
            await connection.close(CLOSE_TRY_AGAIN, ticket.message[:120])
            return
        grant = self.door.grant_of(connection)
        TENANT.set(grant.label if grant is not None else "")
        with ticket:
            if path == REALTIME_API_PATH:
                await self.realtime_api.handle(connection, grant.session if grant else {})
            elif path == "/rtc":
                await self.webrtc.handle(connection)
            elif (provider := MEDIA_STREAM_PATHS.get(session_route(path) or "")) is not None:
                await self.media_streams.handle(connection, provider)
            else:
                await self.websocket.handle(connection)

    def health(self) -> dict[str, object]:
        sip_failure = None if self.sip is None else self.sip.failure
        return {
            "status": "degraded" if sip_failure else "ok",
            "sip_failure": sip_failure,
            "sessions": self.open_sessions(),
            "max_sessions": self.settings.max_sessions,
            "pipeline": self.settings.pipeline,
            "realtime_provider": self.realtime_provider.name,
            "realtime_api_sessions": len(self.realtime_api.connections),
            "stt": self.models.stt.name,
            "tts": self.models.tts.name,
            "llm": self.models.llm.name,
            "sip_calls": None if self.sip is None else len(self.sip.calls),
            "sip_port": None if self.sip is None else self.sip.endpoint.local_address[1],
            # SIP transactions held, and datagrams dropped unread (outside --sip-allow)
            "sip_transactions": None if self.sip is None else
            len(self.sip.endpoint.layer.servers),
            "sip_blocked": None if self.sip is None else self.sip.endpoint.stats.blocked,
            "audio_api_port": None if self.audio_api is None else self.audio_api.port,
            "replies_running": replies_running(),
            "tasks": len(asyncio.all_tasks()),  # all of the worker's: a leak shows here
            "breakers": self.breakers(),
        }

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.partition("?")[0]
        if path == "/healthz":
            return json_response(HTTPStatus.OK, self.health())
        if path == "/readyz":
            ready, body = self.readiness()
            return json_response(HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE, body)
        if path == "/metrics":
            return http_response(HTTPStatus.OK, self.metrics.render(), METRICS_CONTENT_TYPE)
        session_path = session_route(path) is not None
        if session_path and (denied := self.door.check(connection, request)):
            return denied
        if self.draining and session_path:
            log.info("refused a session on %s: draining", session_route(path))
            self.door.turn_away(connection)
            return http_response(HTTPStatus.SERVICE_UNAVAILABLE,
                                 b"draining: this worker is shutting down; connect to "
                                 b"another\n", "text/plain", retry_after=5)
        if session_path:
            refused = self.admission.refusal(str(connection.remote_address[0]))
            if refused is not None:
                log.warning("refused a session on %s: %s", session_route(path),
                            refused.message)
                self.door.turn_away(connection)
                return http_response(HTTPStatus.SERVICE_UNAVAILABLE,
                                     f"{refused.message}\n".encode(), "text/plain",
                                     retry_after=5)
            return None
        static = self.static.lookup(path)
        if static is not None:
            return http_response(HTTPStatus.OK, static.body, static.content_type)
        return http_response(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

    async def start(self) -> None:
        self.records.start()
        if self.sip is not None:
            await self.sip.start()
        if self.audio_api is not None:
            await self.audio_api.start(self.settings.host, self.settings.audio_api_port)
        self._server = await serve(
            self.route, self.settings.host, self.settings.port,
            process_request=self.process_request, compression=None,
            select_subprotocol=select_subprotocol,
            max_size=self.settings.max_message_bytes * 4, ping_interval=20, ping_timeout=20,
            server_header="voice-assistant-service")
        log.info("listening on http://%s:%d (WebSocket at ws://%s:%d/ws, health at /healthz)",
                 self.settings.host, self.port, self.settings.host, self.port)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def drain(self, timeout_s: float, stop_now: asyncio.Event) -> None:
        """Take no new sessions; let the active ones finish for up to `timeout_s` (or
        until `stop_now`); then say goodbye to those left and hang up."""
        self.draining = True
        if self.sip is not None:
            self.sip.draining = True
        started = time.monotonic()
        log.info("draining: %d session(s) active; no new sessions; up to %g s",
                 len(self.live.live()), timeout_s)
        ended = asyncio.gather(*(session.ended.wait() for session in self.live.sessions()))
        stopped = asyncio.ensure_future(stop_now.wait())
        waiters: list[asyncio.Future[Any]] = [ended, stopped]
        await asyncio.wait(waiters, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        ended.cancel()
        stopped.cancel()
        left = [session for session in self.live.sessions() if not session.ended.is_set()]
        if left and not stop_now.is_set():
            log.info("drain timeout: ending %d session(s) with a goodbye", len(left))
            await asyncio.gather(*(self._goodbye(s) for s in left), return_exceptions=True)
        log.info("drained in %.1f s", time.monotonic() - started)

    async def _goodbye(self, session: Session) -> None:
        await session.say_goodbye(self.settings.drain_message, "the service is shutting down")

    async def stop(self) -> None:
        if self._server is None:
            return
        connections = [*self.websocket.sessions.values(), *self.realtime_api.connections.values(),
                       *self.media_streams.sessions.values()]
        log.info("shutting down: closing %d open session(s)", len(connections))
        self._server.close(close_connections=False)
        await asyncio.gather(*(c.close(CLOSE_GOING_AWAY, "server shutting down")
                               for c in connections), return_exceptions=True)
        await self.webrtc.close_all(CLOSE_GOING_AWAY, "server shutting down")
        if self.sip is not None:
            await self.sip.stop()
        if self.audio_api is not None:
            await self.audio_api.stop()
        await self.media_streams.close()
        await self._server.wait_closed()
        if self._recording:  # the records of the sessions just closed
            await asyncio.wait(set(self._recording), timeout=5)
        await self.records.close()
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)  # the last spans go out
        log.info("stopped")


async def serve_forever(settings: Settings) -> None:
    log.info("loading models (settings: %s)", settings.redacted())
    settings, local_llm = await start_local_llm(settings)
    try:
        await _serve(settings, local_llm)
    finally:
        if local_llm is not None:
            await local_llm.stop()


async def _serve(settings: Settings, local_llm: LocalLLM | None) -> None:
    models = await asyncio.to_thread(load_models, settings)
    if local_llm is not None:
        await local_llm.warm_up(models, settings.system_prompt)
    service = Service(settings, models)
    await service.start()
    stop, drain = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, drain.set)
    stopping = asyncio.ensure_future(stop.wait())
    draining = asyncio.ensure_future(drain.wait())
    await asyncio.wait([stopping, draining], return_when=asyncio.FIRST_COMPLETED)
    if drain.is_set() and not stop.is_set():
        loop.add_signal_handler(signal.SIGTERM, stop.set)  # a second SIGTERM: stop now
        await service.drain(settings.drain_timeout_s, stop)
    stopping.cancel()
    draining.cancel()
    await service.stop()
