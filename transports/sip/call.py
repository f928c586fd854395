"""One answered (or placed) phone call: a dialog, its RTP media and a voice session.

The session runs the pipeline with `send_audio=None`: the media clock thread pulls
20 ms of reply audio per packet from `session.playout`, a `SharedPlayout` that it may
take from safely (`media_clock.py`). Caller audio goes from the
jitter buffer straight into `session.push_audio` at 8 kHz; RFC 4733 (or SIP INFO)
digits go to `session.on_dtmf`, and the session's digits go out the same way. The
session's hang-up hook sends BYE; its transfer hook
sends REFER (RFC 3515: a blind transfer, whose progress comes in NOTIFY requests with
a message/sipfrag body; once the new leg answers, BYE). A call ends on
BYE from either side, on RTP silence longer than the RTP timeout, or when the
service stops; its tasks share one TaskGroup and none outlives it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from transports.sip.endpoint import SipEndpoint
from transports.sip.media import CallMedia, RtpSocket
from transports.sip.media_clock import MediaClock, SharedPlayout
from voice.audio import Int16Array
from voice.clock import Clock
from voice.errors import SipError
from voice.events import Event, ResponseTextDelta
from voice.session import PipelineFactory, Session
from voice.tasks import DIGIT_QUEUE_ITEMS, CappedQueue
from wire.rtp.plan import MediaPlan
from wire.sip.dialog import Dialog
from wire.sip.message import SipRequest, SipResponse
from wire.sip.sdp import (
    LocalMedia,
    SessionDescription,
    answer_offer,
    plan_from_answer,
)
from wire.sip.transaction import Address, ServerTransaction

log = logging.getLogger(__name__)

SAMPLE_RATE = 8000
EVENT_TIMEOUT_S = 2.0
TRANSFER_TIMEOUT_S = 30.0  # from REFER to the NOTIFY that tells how the new leg went
_SIPFRAG = re.compile(r"^SIP/2\.0\s+(\d{3})")


@dataclass(frozen=True)
class CallOptions:
    playout_lead_ms: int
    rtp_timeout_s: float
    send_events: bool = False  # the caller asked for JSON events in SIP MESSAGE requests
    on_event: Callable[[Event], None] | None = None  # a local observer (`voice dial`)


class CallHost(Protocol):
    endpoint: SipEndpoint
    media_clock: MediaClock

    @property
    def via(self) -> Address: ...


class SipCall:
    def __init__(self, host: CallHost, dialog: Dialog, socket: RtpSocket, plan: MediaPlan,
                 allowed_hosts: set[str], local: LocalMedia, clock: Clock,
                 options: CallOptions, jitter_s: float) -> None:
        self.host = host
        self.dialog = dialog
        self.media = CallMedia(socket, plan, allowed_hosts, jitter_s, self._audio, self._digit)
        self.local = local
        self.local_description = SessionDescription(origin="-")  # our SDP in the 200 OK
        self.options = options
        self.ended = asyncio.Event()
        self.end_reason = ""
        self.session = Session(SAMPLE_RATE, self._send_event, None, clock,
                               options.playout_lead_ms, hangup=self.hangup,
                               transfer=self.transfer, send_dtmf=self.send_dtmf)
        # before the pipeline exists: the one it gets is the one the clock thread may pull
        self.session.playout = SharedPlayout(SAMPLE_RATE, clock, options.playout_lead_ms,
                                             asyncio.get_running_loop())
        self._digits: CappedQueue[str] = CappedQueue(DIGIT_QUEUE_ITEMS, "keypad digits")
        self._early: list[Int16Array] = []
        self._byes: list[asyncio.Future[SipResponse]] = []
        self._started_at = 0.0
        self._transfer: asyncio.Future[int] | None = None  # the new leg's final status

    @property
    def call_id(self) -> str:
        return self.dialog.call_id

    async def run(self, factory: PipelineFactory) -> None:
        self._started_at = asyncio.get_running_loop().time()
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(self.session.run(factory), name=f"{self.session.id}-session"),
                    tg.create_task(self.media.run(self.host.media_clock,
                                                  self.session.playout.pull),
                                   name=f"{self.session.id}-rtp-media"),
                    tg.create_task(self._dtmf_loop(), name=f"{self.session.id}-dtmf"),
                    tg.create_task(self._watch_rtp(), name=f"{self.session.id}-rtp-timeout"),
                ]
                try:
                    await self.ended.wait()
                finally:
                    for task in tasks:
                        task.cancel()
        finally:
            self.media.close()
            stats, clock = self.media.inbound.stats, self.media.clock_stats
            log.info("call %s ended (%s): rtp in %d (lost %d, late %d), out %d, clock gaps %d, "
                     "max late %.1f ms", self.call_id, self.end_reason, stats.packets,
                     self.media.inbound.jitter.stats.lost, self.media.inbound.jitter.stats.late,
                     clock.packets, clock.gaps, clock.max_late_ms)

    def _audio(self, samples: Int16Array) -> None:
        jitter = self.media.inbound.jitter.stats  # /metrics: voice_audio_frames_total
        self.session.frames_concealed, self.session.frames_dropped = jitter.lost, jitter.late
        if self.session.pipeline is None:  # RTP can beat the session's first step
            self._early.append(samples)
            return
        for early in self._early:
            self.session.push_audio(early)
        self._early.clear()
        self.session.push_audio(samples)

    def _digit(self, digit: str) -> None:
        self._digits.offer(digit)

    def deliver_digit(self, digit: str) -> None:
        """A digit that came as SIP INFO rather than RTP."""
        self._digits.offer(digit)

    async def _dtmf_loop(self) -> None:
        while True:
            digit = await self._digits.get()
            log.info("call %s: DTMF %s", self.call_id, digit)
            await self.session.on_dtmf(digit)

    async def _watch_rtp(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, self.options.rtp_timeout_s / 4))
            if not self.media.plan.receives:
                continue  # on hold: the peer is not expected to send
            last = self.media.inbound.last_packet_at or self._started_at
            if loop.time() - last > self.options.rtp_timeout_s:
                await self.hangup(f"no RTP for {self.options.rtp_timeout_s:g} s")
                return

    def end(self, reason: str) -> None:
        """The call is over (BYE received, or the transaction layer gave up)."""
        if not self.ended.is_set():
            self.end_reason = reason
            self.ended.set()

    async def hangup(self, reason: str) -> None:
        """Send BYE and end the call (the session's hang-up hook)."""
        if self.ended.is_set():
            return
        bye = self.dialog.request("BYE", self.host.via)
        self._byes.append(self.host.endpoint.start_request(bye, self.dialog.destination()))
        log.info("call %s: BYE sent (%s)", self.call_id, reason)
        self.end(reason)

    async def send_dtmf(self, digits: str) -> None:
        """Press keypad digits on the line (RFC 4733 events in our RTP); returns once
        the last has been sent. A `ProtocolError` says why not (a bad digit, a phone
        that did not offer telephone-event, too many waiting)."""
        if self.ended.is_set() or self.media.out is None:
            raise SipError(481, "the call has ended", code="sip_no_call")
        seconds = self.media.out.send_digits(digits)
        log.info("call %s: pressing %s", self.call_id, digits)
        await asyncio.sleep(seconds)

    async def transfer(self, target: str) -> None:
        """A blind transfer to `target` (a SIP URI): REFER, then the NOTIFY that says
        the new leg answered, then BYE. A `SipError` says why it did not happen (the
        phone refused the REFER, the new leg failed or never answered); the call goes
        on then."""
        if self.ended.is_set():
            raise SipError(481, "the call has ended", code="sip_no_call")
        loop = asyncio.get_running_loop()
        self._transfer = loop.create_future()
        refer = self.dialog.request("REFER", self.host.via, extra=(
            ("Refer-To", f"<{target}>"), ("Referred-By", self.dialog.local_contact)))
        log.info("call %s: REFER to %s", self.call_id, target)
        answer = await self.host.endpoint.start_request(refer, self.dialog.destination())
        if answer.status >= 300:
            raise SipError(answer.status, f"the phone refused the transfer ({answer.status} "
                           f"{answer.reason})", code="sip_transfer_refused")
        try:
            async with asyncio.timeout(TRANSFER_TIMEOUT_S):
                status = await self._transfer
        except TimeoutError as exc:
            raise SipError(408, "no word of the transfer within "
                           f"{TRANSFER_TIMEOUT_S:g} s", code="sip_transfer_failed") from exc
        if status >= 300:
            raise SipError(status, f"the transfer target answered {status}",
                           code="sip_transfer_failed")
        await self.hangup(f"transferred to {target}")

    def notified(self, notify: SipRequest) -> None:
        """A NOTIFY of our REFER's subscription: a final status ends the wait."""
        match = _SIPFRAG.match(notify.body.decode("utf-8", "replace").lstrip())
        if match is None or self._transfer is None or self._transfer.done():
            return
        status = int(match.group(1))
        log.info("call %s: transfer progress %d", self.call_id, status)
        if status >= 200:
            self._transfer.set_result(status)

    async def wait_bye_answered(self, timeout: float) -> None:
        if self._byes:
            await asyncio.wait(self._byes, timeout=timeout)

    def acknowledged(self, ack: SipRequest) -> None:
        """The ACK of our 2xx; for a delayed offer it carries the caller's answer."""
        if ack.body and ack.content_type == "application/sdp":
            try:
                plan = plan_from_answer(SessionDescription.parse(ack.body))
            except SipError as exc:
                log.info("call %s: unusable answer in ACK (%s)", self.call_id, exc)
                return
            self.media.update(plan, self.media.inbound.allowed_hosts | {plan.remote_host})

    def reinvite(self, transaction: ServerTransaction) -> None:
        """Hold, resume or a codec change: answer the new offer, keep the call."""
        request = transaction.request
        endpoint = self.host.endpoint
        try:
            if request.content_type not in ("", "application/sdp"):
                raise SipError(415, "only application/sdp bodies", code="sip_media_type")
            if not request.body:
                raise SipError(488, "re-INVITE without an offer is not supported",
                               code="sdp_not_acceptable")
            plan, answer = answer_offer(SessionDescription.parse(request.body), self.local)
        except SipError as exc:
            endpoint.reply(transaction, exc.status, headers=(("Accept", "application/sdp"),))
            return
        self.media.update(plan, self.media.inbound.allowed_hosts | {plan.remote_host})
        log.info("call %s: re-INVITE, now %s, payload type %d", self.call_id, plan.direction,
                 plan.payload_type)
        endpoint.reply(transaction, 200, headers=(("Contact", self.dialog.local_contact),
                                                  ("Content-Type", "application/sdp")),
                       body=answer.serialize())

    async def _send_event(self, event: Event) -> None:
        if self.options.on_event is not None:
            self.options.on_event(event)
        if not self.options.send_events or isinstance(event, ResponseTextDelta):
            return
        body = json.dumps(event.to_dict()).encode()
        message = self.dialog.request("MESSAGE", self.host.via, body, "application/json")
        try:
            async with asyncio.timeout(EVENT_TIMEOUT_S):
                await self.host.endpoint.request(message, self.dialog.destination())
        except TimeoutError:
            log.info("call %s: event MESSAGE unanswered; events off", self.call_id)
            self.options = replace(self.options, send_events=False)
