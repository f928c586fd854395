"""Calls the bridge places (`voice dial`, docs/sip.md): an INVITE with our offer (digest
auth if the peer asks), the peer's answer, then the call runs as an answered one does.
The ACK of each 2xx is kept, to be sent again when the peer retransmits its 2xx."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from transports.sip.call import CallHost, CallOptions, SipCall
from transports.sip.media import open_rtp_socket
from transports.sip.uac import Credentials, place_call
from voice.clock import Clock
from voice.events import Event
from voice.session import FactoryLookup, PipelineFactory
from voice.settings import Settings
from wire.sip.headers import SipUri
from wire.sip.message import SipResponse
from wire.sip.sdp import LocalMedia, SessionDescription, make_offer, plan_from_answer
from wire.sip.transaction import Address


class Placer(CallHost, Protocol):
    """What of the bridge a call we place needs."""

    settings: Settings
    advertise: str
    calls: dict[str, SipCall]

    @property
    def contact(self) -> str: ...

    def spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None: ...

    async def run_call(self, call: SipCall, factory: PipelineFactory) -> None: ...


class Outbound:
    def __init__(self, host: Placer, pipelines: FactoryLookup, clock: Clock,
                 rtp_ports: tuple[int, int], credentials: Credentials | None) -> None:
        self._host = host
        self._pipelines = pipelines
        self._clock = clock
        self._rtp_ports = rtp_ports
        self._credentials = credentials
        self._acks: dict[str, tuple[bytes, Address]] = {}

    async def dial(self, target: str, greeting: str = "", pipeline: str | None = None,
                   answer_timeout: float = 60.0,
                   on_event: Callable[[Event], None] | None = None) -> SipCall:
        """Call `target` (sip:user@host[:port]); returns the answered call, running."""
        host, settings = self._host, self._host.settings
        uri = SipUri.parse(target)
        _, factory = self._pipelines(pipeline)
        socket = await open_rtp_socket(settings.host, self._rtp_ports, set())
        local = LocalMedia(host.advertise, socket.port, secrets.randbelow(2**31))
        try:
            placed = await place_call(host.endpoint, uri, self._credentials.username
                                      if self._credentials else "assistant", host.contact,
                                      make_offer(local).serialize(), self._credentials,
                                      answer_timeout=answer_timeout)
            plan = plan_from_answer(SessionDescription.parse(placed.response.body))
        except BaseException:
            socket.close()
            raise
        options = CallOptions(settings.playout_lead_ms, settings.sip_rtp_timeout_s,
                              on_event=on_event)
        call = SipCall(host, placed.dialog, socket, plan,
                       {plan.remote_host, placed.dialog.peer_address[0]}, local, self._clock,
                       options, settings.sip_jitter_ms / 1000)
        host.calls[call.call_id] = call
        self._acks[call.call_id] = (placed.ack, placed.dialog.destination())
        host.spawn(self._run(call, factory), f"sip-dial-{call.call_id[:16]}")
        if greeting:
            host.spawn(self._greet(call, greeting), f"sip-greet-{call.call_id[:16]}")
        return call

    async def _run(self, call: SipCall, factory: PipelineFactory) -> None:
        try:
            await self._host.run_call(call, factory)
        finally:
            self._acks.pop(call.call_id, None)

    async def _greet(self, call: SipCall, text: str) -> None:
        for _ in range(500):  # the session creates its pipeline as soon as it runs
            if call.session.pipeline is not None or call.ended.is_set():
                break
            await asyncio.sleep(0.01)
        if call.session.pipeline is not None and not call.ended.is_set():
            await call.session.pipeline.announce(text)

    def re_ack(self, response: SipResponse) -> None:
        """The peer sent its 2xx again: our ACK was lost."""
        ack = self._acks.get(response.call_id)
        if ack is not None:
            self._host.endpoint.send_raw(*ack)
