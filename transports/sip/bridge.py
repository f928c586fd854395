"""The SIP bridge of the service: answers calls on a UDP port and runs each one as a
voice session (docs/sip.md).

INVITE gets 100 Trying, 180 Ringing and 200 OK with the SDP answer (or 415 for a
non-SDP body, 488 for no usable audio, 486 beyond `sip_max_calls`, 401 when digest
authentication is required and missing); CANCEL before the answer gets 200 and the
INVITE 487; BYE ends a call from either side; OPTIONS gets 200 (trunk keep-alives);
re-INVITE changes hold state or codec; INFO carries DTMF (application/dtmf-relay);
anything else gets 501. Requests from outside the allow-list are ignored unless they
belong to a call we placed. Calls are tasks of the bridge's TaskGroup; a failing call
is logged and hung up (an INVITE we could not answer gets 500), never taking the bridge
down. Should a task of the bridge itself ever end, `failure` says why: OPTIONS and new
INVITEs get 503 and the service's /readyz fails, so a dispatcher routes elsewhere.
Who may call is `access.py`'s (allow-list, digest auth); calls we place are
`outbound.py`'s.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from transports.sip.access import Access
from transports.sip.call import CallOptions, SipCall
from transports.sip.endpoint import SipEndpoint
from transports.sip.media import RtpSocket, open_rtp_socket, parse_port_range
from transports.sip.media_clock import MediaClock
from transports.sip.outbound import Outbound
from transports.sip.register import Registration
from transports.sip.uac import ALLOW, Credentials
from voice.admission import Admission, Refused, Ticket
from voice.clock import Clock
from voice.errors import ConfigError, ProtocolError, SipError
from voice.events import Event
from voice.session import FactoryLookup, PipelineFactory
from voice.settings import Settings
from wire.rtp.plan import MediaPlan
from wire.sip.dialog import Dialog, new_tag
from wire.sip.headers import SipUri
from wire.sip.message import SipRequest
from wire.sip.sdp import (
    LocalMedia,
    SessionDescription,
    answer_offer,
    make_offer,
)
from wire.sip.transaction import Address, ServerTransaction

log = logging.getLogger(__name__)

DTMF_INFO_TYPES = ("application/dtmf-relay", "application/dtmf")


@dataclass
class _Ringing:
    transaction: ServerTransaction
    ticket: Ticket | None  # its place among the worker's sessions
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)


DRAINING_RETRY_AFTER_S = 30
DRAINING_HEADERS = (("Retry-After", str(DRAINING_RETRY_AFTER_S)),
                    ("Warning", '399 - "draining: this worker is shutting down"'))


class SipBridge:
    def __init__(self, settings: Settings, pipelines: FactoryLookup, clock: Clock,
                 admission: Admission | None = None) -> None:
        self.settings = settings
        self._admission = admission  # the worker's count of sessions, shared with the rest
        self._pipelines = pipelines
        self.draining = False  # SIGTERM: new calls and OPTIONS probes get 503
        self._clock = clock
        self._access = Access(settings)
        self._rtp_ports = parse_port_range(settings.sip_rtp_ports)
        self.advertise = settings.sip_advertise or settings.host
        if ipaddress.ip_address(self.advertise).is_unspecified:
            raise ConfigError("set --sip-advertise when --host is a wildcard address")
        self._credentials = Credentials(settings.sip_user, settings.sip_password) \
            if settings.sip_user else None
        self.outbound = Outbound(self, pipelines, clock, self._rtp_ports, self._credentials)
        self.endpoint = SipEndpoint(self, admits=self._admits)
        self.endpoint.on_stray_2xx = self.outbound.re_ack
        self.media_clock = MediaClock(clock, settings.sip_rtp_priority)  # sends all RTP
        self.calls: dict[str, SipCall] = {}
        self._ringing: dict[str, _Ringing] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._task: asyncio.Task[None] | None = None
        self.registration: Registration | None = None
        self.failure: str | None = None  # why the bridge stopped working, if it did

    @property
    def via(self) -> Address:
        return self.advertise, self.endpoint.local_address[1]

    @property
    def contact(self) -> str:
        host, port = self.via
        return f"<sip:assistant@{host}:{port}>"

    # --- lifecycle -----------------------------------------------------------------

    async def start(self, port: int | None = None) -> None:
        # The objects alive now (modules, the loaded models) live as long as the service;
        # a full collection that scans them holds the GIL for ~0.1 s, and stops the media
        # clock thread with it. Leave them out of collections.
        gc.freeze()
        await self.endpoint.open(self.settings.host,
                                 self.settings.sip_port if port is None else port)
        ready = asyncio.Event()
        self._task = asyncio.create_task(self._run(ready), name="sip-bridge")
        await ready.wait()
        log.info("SIP bridge on udp:%s:%d (allow %s)", self.settings.host,
                 self.endpoint.local_address[1], self.settings.sip_allow)

    async def _run(self, ready: asyncio.Event) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self.endpoint.run(), name="sip-transactions")
                if self.settings.sip_register:
                    self.registration = self._registration()
                    tg.create_task(self.registration.run(), name="sip-register")
                ready.set()
        except Exception as exc:
            self.failure = f"SIP bridge task failed: {type(exc).__name__}"
            log.exception("%s; answering 503 from now on", self.failure)
            ready.set()

    def _registration(self) -> Registration:
        if self._credentials is None:
            raise ConfigError("sip_register needs --sip-user and --sip-password")
        host, port = self.via
        return Registration(self.endpoint, SipUri.parse(self.settings.sip_register),
                            self._credentials, SipUri(host=host, user=self._credentials.username,
                                                      port=port),
                            self.settings.sip_register_expires)

    async def stop(self) -> None:
        calls = list(self.calls.values())
        log.info("SIP bridge stopping: hanging up %d call(s)", len(calls))
        for call in calls:
            await call.hangup("service stopping")
        for call in calls:
            await call.wait_bye_answered(1.0)
        if self.registration is not None:
            try:
                async with asyncio.timeout(1.0):
                    await self.registration.unregister()
            except TimeoutError:
                pass
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.endpoint.close()
        await asyncio.to_thread(self.media_clock.close)

    # --- requests ------------------------------------------------------------------

    def handle_request(self, transaction: ServerTransaction) -> None:
        request = transaction.request
        call = self._call_of(request)
        if call is None and not self._access.allows(transaction.address[0]):
            log.debug("ignored %s from %s (not in sip_allow)", request.method,
                      transaction.address)
            return
        handler = {"INVITE": self._on_invite, "ACK": self._on_ack, "BYE": self._on_bye,
                   "CANCEL": self._on_cancel, "OPTIONS": self._on_options,
                   "INFO": self._on_info, "NOTIFY": self._on_notify}.get(request.method)
        if handler is None:
            self.endpoint.reply(transaction, 501, headers=(("Allow", ALLOW),))
            return
        try:
            handler(transaction, call)
        except _Handled:
            pass
        except SipError as exc:
            if request.method != "ACK":
                self._refuse(transaction, exc.status, exc.message)

    def unacknowledged(self, transaction: ServerTransaction) -> None:
        call = self.calls.get(transaction.request.call_id)
        if call is not None and transaction.last_response is not None \
                and transaction.last_response.status < 300:
            self.spawn(call.hangup("our 200 OK was never acknowledged"), "no-ack-bye")

    def _admits(self, host: str) -> bool:
        """Datagrams are read from the allow-list, and from the peers of our calls and
        of our requests (a callee we dialled, a registrar) wherever they are."""
        if self._access.allows(host):
            return True
        if any(call.dialog.peer_address[0] == host for call in self.calls.values()):
            return True
        return any(t.address[0] == host for t in self.endpoint.layer.clients.values())

    def _call_of(self, request: SipRequest) -> SipCall | None:
        call = self.calls.get(request.call_id)
        if call is None:
            return None
        tags = {request.from_.tag, request.to.tag}
        return call if call.dialog.local_tag in tags and call.dialog.remote_tag in tags else None

    def _on_options(self, transaction: ServerTransaction, call: SipCall | None) -> None:
        if call is None and (self.draining or self.failure):  # a balancer's probe
            self.endpoint.reply(transaction, 503, headers=self._unavailable_headers())
            return
        self.endpoint.reply(transaction, 200, headers=(
            ("Allow", ALLOW), ("Accept", "application/sdp"), ("Supported", ""),
            ("Contact", self.contact)))

    def _on_bye(self, transaction: ServerTransaction, call: SipCall | None) -> None:
        if call is None:
            raise SipError(481, "no such call", code="sip_no_call")
        self.endpoint.reply(transaction, 200)
        call.end("caller hung up (BYE)")

    def _on_ack(self, transaction: ServerTransaction, call: SipCall | None) -> None:
        if call is not None:
            request = transaction.request
            self.endpoint.layer.acknowledge_2xx(request.call_id, request.cseq.number,
                                                self.endpoint.now())
            call.acknowledged(request)

    def _on_cancel(self, transaction: ServerTransaction, call: SipCall | None) -> None:
        invite = self.endpoint.layer.invite_for_cancel(transaction.request)
        if invite is None:
            raise SipError(481, "no INVITE to cancel", code="sip_no_call")
        self.endpoint.reply(transaction, 200)
        ringing = self._ringing.get(invite.request.call_id)
        if not invite.final and ringing is not None:
            ringing.cancelled.set()
            self.endpoint.reply(invite, 487, to_tag=new_tag())

    def _on_info(self, transaction: ServerTransaction, call: SipCall | None) -> None:
        if call is None:
            raise SipError(481, "no such call", code="sip_no_call")
        request = transaction.request
        if request.content_type not in DTMF_INFO_TYPES:
            raise SipError(415, f"INFO of type {request.content_type[:40]!r}",
                           code="sip_media_type")
        digit = _info_digit(request.body)
        self.endpoint.reply(transaction, 200)
        if digit:
            call.deliver_digit(digit)

    def _on_notify(self, transaction: ServerTransaction, call: SipCall | None) -> None:
        """The progress of a transfer we asked for (RFC 3515: a message/sipfrag body)."""
        if call is None:
            raise SipError(481, "no such call", code="sip_no_call")
        self.endpoint.reply(transaction, 200)
        call.notified(transaction.request)

    def _on_invite(self, transaction: ServerTransaction, call: SipCall | None) -> None:
        request = transaction.request
        if request.to.tag is not None:
            if call is None:
                raise SipError(481, "no such call", code="sip_no_call")
            if not call.dialog.accept_cseq(request):
                raise SipError(500, "CSeq out of order", code="sip_cseq")
            call.reinvite(transaction)
            return
        self._check_new_call(transaction)
        ringing = _Ringing(transaction, self._admit(transaction))
        self._ringing[request.call_id] = ringing
        self.endpoint.reply(transaction, 100)
        self.spawn(self._answer(ringing), f"sip-call-{request.call_id[:16]}")

    def _check_new_call(self, transaction: ServerTransaction) -> None:
        request = transaction.request
        unsupported = [r for r in request.headers.get_all("Require") if r]
        if unsupported:
            self.endpoint.reply(transaction, 420, headers=(("Unsupported",
                                                            ", ".join(unsupported)),))
            raise _Handled
        challenges = self._access.challenges(request, self.endpoint.now())
        if challenges:
            self.endpoint.reply(transaction, 401, headers=tuple(
                ("WWW-Authenticate", challenge) for challenge in challenges))
            raise _Handled
        if self.draining or self.failure:
            self.endpoint.reply(transaction, 503, headers=self._unavailable_headers())
            raise _Handled
        if request.call_id in self.calls or request.call_id in self._ringing:
            raise SipError(482, "this Call-ID is already in use", code="sip_loop")
        if len(self.calls) + len(self._ringing) >= self.settings.sip_max_calls:
            raise SipError(486, f"at capacity: {self.settings.sip_max_calls} calls",
                           code="capacity")
        if request.body and request.content_type != "application/sdp":
            self.endpoint.reply(transaction, 415, headers=(("Accept", "application/sdp"),))
            raise _Handled

    def _admit(self, transaction: ServerTransaction) -> Ticket | None:
        """A place among the worker's sessions, or the INVITE is answered here: 503 with
        Retry-After at capacity or without headroom (a dispatcher tries another
        worker), 486 for a caller address over its own limit."""
        if self._admission is None:
            return None
        ticket = self._admission.take(transaction.address[0])
        if isinstance(ticket, Refused):
            self._refuse(transaction, 486 if ticket.code == "address_limit" else 503,
                         ticket.message, ("Retry-After", str(DRAINING_RETRY_AFTER_S)))
            raise _Handled
        return ticket

    def _refuse(self, transaction: ServerTransaction, status: int, why: str,
                *headers: tuple[str, str]) -> None:
        self.endpoint.reply(transaction, status,
                            headers=(*headers, ("Warning", f'399 - "{why[:100]}"')))

    def _unavailable_headers(self) -> tuple[tuple[str, str], ...]:
        if self.draining or self.failure is None:
            return DRAINING_HEADERS
        return (("Retry-After", str(DRAINING_RETRY_AFTER_S)),
                ("Warning", '399 - "this worker\'s SIP bridge failed"'))

    async def _answer(self, ringing: _Ringing) -> None:
        transaction = ringing.transaction
        request = transaction.request
        socket: RtpSocket | None = None
        try:
            pipeline = request.headers.get("X-Voice-Pipeline")
            _, factory = self._pipelines(pipeline)
            socket = await open_rtp_socket(self.settings.host, self._rtp_ports,
                                           {c.media.socket.port for c in self.calls.values()})
            call = self._new_call(transaction, socket)
            self.endpoint.reply(transaction, 180, to_tag=call.dialog.local_tag)
            if not await self._rang(ringing):
                return  # cancelled while ringing
            self._accept(transaction, call)
        except SipError as exc:
            self._refuse(transaction, exc.status, exc.message)
            return
        except ProtocolError as exc:  # an unknown pipeline
            self._refuse(transaction, 400, exc.message)
            return
        except Exception:  # a bug of ours answering this INVITE: this call only
            log.exception("call %r could not be answered", request.call_id[:64])
            self._refuse(transaction, 500, "internal error")
            return
        finally:
            self._ringing.pop(request.call_id, None)
            if request.call_id not in self.calls:
                if socket is not None:
                    socket.close()
                if ringing.ticket is not None:
                    ringing.ticket.release()
        try:
            await self.run_call(call, factory)
        finally:
            if ringing.ticket is not None:
                ringing.ticket.release()

    async def _rang(self, ringing: _Ringing) -> bool:
        """Ring for `sip_ring_ms`; False if the caller cancelled meanwhile."""
        if self.settings.sip_ring_ms > 0:
            try:
                async with asyncio.timeout(self.settings.sip_ring_ms / 1000):
                    await ringing.cancelled.wait()
            except TimeoutError:
                pass
        return not ringing.cancelled.is_set()

    def _new_call(self, transaction: ServerTransaction, socket: RtpSocket) -> SipCall:
        request = transaction.request
        local = LocalMedia(self.advertise, socket.port, secrets.randbelow(2**31))
        if request.body:
            plan, description = answer_offer(SessionDescription.parse(request.body), local)
        else:  # delayed offer: we offer in the 200 OK, the answer comes in the ACK
            description = make_offer(local)
            plan = MediaPlan(codec=0, payload_type=0, dtmf_payload_type=None,
                             remote_host=transaction.address[0], remote_port=0,
                             direction="inactive")
        dialog = Dialog.as_uas(request, new_tag(), self.contact, transaction.address)
        options = CallOptions(self.settings.playout_lead_ms, self.settings.sip_rtp_timeout_s,
                              send_events=(request.headers.get("X-Voice-Events") or "") == "json")
        call = SipCall(self, dialog, socket, plan, {plan.remote_host, transaction.address[0]},
                       local, self._clock, options, self.settings.sip_jitter_ms / 1000)
        call.local_description = description
        return call

    def _accept(self, transaction: ServerTransaction, call: SipCall) -> None:
        self.calls[call.call_id] = call
        self.endpoint.reply(transaction, 200, to_tag=call.dialog.local_tag, headers=(
            ("Contact", self.contact), ("Allow", ALLOW), ("Content-Type", "application/sdp")),
            body=call.local_description.serialize())
        log.info("call %s answered from %s: %s", call.call_id, transaction.address,
                 call.media.plan)

    async def run_call(self, call: SipCall, factory: PipelineFactory) -> None:
        try:
            await call.run(factory)
        except Exception:
            log.exception("call %s failed", call.call_id)
            await call.hangup("internal error")
        finally:
            self.calls.pop(call.call_id, None)

    def spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        assert self._tg is not None
        self._tg.create_task(_contained(coroutine, name), name=name)

    # --- calls we place (transports/sip/outbound.py) -----------------------------------

    async def dial(self, target: str, greeting: str = "", pipeline: str | None = None,
                   answer_timeout: float = 60.0,
                   on_event: Callable[[Event], None] | None = None) -> SipCall:
        """Call `target` (sip:user@host[:port]); returns the answered call, running."""
        return await self.outbound.dial(target, greeting, pipeline, answer_timeout, on_event)


class _Handled(SipError):
    """The request was already answered; nothing more to send."""

    def __init__(self) -> None:
        super().__init__(0, "answered")


async def _contained(coroutine: Coroutine[Any, Any, None], name: str) -> None:
    """Run one call's task; an exception it lets through is logged, never raised into
    the bridge's task group (which would cancel every other call)."""
    try:
        await coroutine
    except Exception:
        log.exception("SIP task %s failed", name)


def _info_digit(body: bytes) -> str | None:
    text = body.decode("utf-8", "replace").strip()
    for line in text.splitlines():
        name, _, value = line.partition("=")
        if name.strip().lower() == "signal" and value.strip():
            return value.strip()[:1].upper()
    return text[:1].upper() if len(text) == 1 else None
