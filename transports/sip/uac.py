"""Placing a call (the UAC side of INVITE): offer, provisional responses, digest
challenges (401/407) answered once, CANCEL on timeout, ACK of the 2xx. Used by the
bridge (`voice dial`) and by the Python phone client."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass

from transports.sip.endpoint import SipEndpoint
from voice.errors import SipError
from wire.sip.auth import DigestChallenge
from wire.sip.dialog import Dialog, new_branch, new_call_id, new_tag
from wire.sip.headers import NameAddr, SipUri
from wire.sip.message import Headers, SipRequest, SipResponse
from wire.sip.transaction import Address, new_via

ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, MESSAGE, NOTIFY"


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


@dataclass(frozen=True)
class PlacedCall:
    invite: SipRequest
    response: SipResponse
    dialog: Dialog
    ack: bytes


async def resolve(uri: SipUri) -> Address:
    host, port = uri.address()
    try:
        ipaddress.ip_address(host)
        return host, port
    except ValueError:
        pass
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM,
                                                         family=socket.AF_INET)
    if not infos:
        raise SipError(404, f"cannot resolve {host}", code="sip_unresolved")
    return str(infos[0][4][0]), port


def build_invite(target: SipUri, local: NameAddr, contact: str, via: Address, body: bytes,
                 call_id: str, cseq: int = 1,
                 extra: tuple[tuple[str, str], ...] = ()) -> SipRequest:
    headers = Headers.of(
        ("Via", new_via(via[0], via[1], new_branch())), ("Max-Forwards", "70"),
        ("From", local.serialize()), ("To", NameAddr(target).serialize()),
        ("Call-ID", call_id), ("CSeq", f"{cseq} INVITE"), ("Contact", contact),
        ("Allow", ALLOW), ("Content-Type", "application/sdp"), *extra)
    return SipRequest(headers=headers, body=body, method="INVITE", uri=target.serialize())


def with_credentials(request: SipRequest, challenge: SipResponse,
                     credentials: Credentials) -> SipRequest:
    """The same request, a new branch and CSeq, answering a 401/407 challenge."""
    header = "WWW-Authenticate" if challenge.status == 401 else "Proxy-Authenticate"
    answer = "Authorization" if challenge.status == 401 else "Proxy-Authorization"
    chosen = DigestChallenge.best(challenge.headers.get_all(header))
    authorization = chosen.authorization(credentials.username, credentials.password,
                                         request.method, request.uri)
    via = request.vias[0]
    params = tuple((k, new_branch() if k == "branch" else v) for k, v in via.params)
    headers = (request.headers.without("Via", "CSeq", answer)
               .plus(("CSeq", f"{request.cseq.number + 1} {request.method}"))
               .plus((answer, authorization)))
    via_line = type(via)(via.host, via.port, via.transport, params).serialize()
    return SipRequest(headers=Headers((("Via", via_line),) + headers.items), body=request.body,
                      method=request.method, uri=request.uri)


def cancel_for(invite: SipRequest) -> SipRequest:
    headers = Headers.of(("Via", invite.headers.get_all("Via")[0]), ("Max-Forwards", "70"),
                         ("From", invite.headers.get("From") or ""),
                         ("To", invite.headers.get("To") or ""), ("Call-ID", invite.call_id),
                         ("CSeq", f"{invite.cseq.number} CANCEL"))
    return SipRequest(headers=headers, body=b"", method="CANCEL", uri=invite.uri)


async def place_call(endpoint: SipEndpoint, target: SipUri, local_user: str, contact: str,
                     offer: bytes, credentials: Credentials | None = None,
                     extra: tuple[tuple[str, str], ...] = (), answer_timeout: float = 60.0,
                     on_provisional: Callable[[SipResponse], None] | None = None) -> PlacedCall:
    """INVITE `target`; returns once the call is answered and ACKed. A refusal raises
    `SipError` with the peer's status (487 if we cancelled it on timeout)."""
    destination = await resolve(target)
    via = endpoint.local_address
    local = NameAddr(SipUri(host=via[0], user=local_user, port=via[1]),
                     params=(("tag", new_tag()),))
    invite = build_invite(target, local, contact, via, offer, new_call_id(via[0]), extra=extra)
    for attempt in range(2):
        pending = endpoint.start_request(invite, destination, on_provisional)
        try:
            async with asyncio.timeout(answer_timeout):
                response = await asyncio.shield(pending)
        except TimeoutError:
            endpoint.start_request(cancel_for(invite), destination)
            async with asyncio.timeout(5):
                response = await pending
        if response.status in (401, 407) and credentials is not None and attempt == 0:
            invite = with_credentials(invite, response, credentials)
            continue
        break
    if response.status >= 300:
        raise SipError(response.status, f"{target} answered {response.status} {response.reason}",
                       code="sip_call_failed")
    dialog = Dialog.as_uac(invite, response, contact, destination)
    ack = dialog.ack(invite.cseq.number, via).serialize()
    endpoint.send_raw(ack, dialog.destination())
    return PlacedCall(invite, response, dialog, ack)
