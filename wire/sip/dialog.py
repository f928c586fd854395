"""SIP dialogs (RFC 3261 section 12): the state two user agents share for one call,
and the in-dialog requests built from it (BYE, re-INVITE, ACK for a 2xx, MESSAGE)."""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass, field

from wire.sip.headers import NameAddr, SipUri, iter_name_addrs
from wire.sip.message import Headers, SipRequest, SipResponse, malformed
from wire.sip.transaction import MAGIC_COOKIE, Address, new_via


def new_tag() -> str:
    return secrets.token_hex(6)


def new_branch() -> str:
    return MAGIC_COOKIE + secrets.token_hex(10)


def new_call_id(host: str) -> str:
    return f"{secrets.token_hex(12)}@{host}"


@dataclass
class Dialog:
    call_id: str
    local: NameAddr  # with our tag
    remote: NameAddr  # with the peer's tag
    remote_target: SipUri
    local_contact: str
    route_set: list[str] = field(default_factory=list)
    local_cseq: int = 1
    remote_cseq: int | None = None
    peer_address: Address = ("127.0.0.1", 5060)  # where its requests came from

    @property
    def local_tag(self) -> str:
        return self.local.tag or ""

    @property
    def remote_tag(self) -> str:
        return self.remote.tag or ""

    @classmethod
    def as_uas(cls, invite: SipRequest, local_tag: str, local_contact: str,
               source: Address) -> Dialog:
        contact = next(iter_name_addrs(invite.headers.get_all("Contact"), "Contact"), None)
        if contact is None:
            raise malformed("INVITE without a Contact header")
        return cls(call_id=invite.call_id, local=invite.to.with_tag(local_tag),
                   remote=invite.from_, remote_target=contact.uri, local_contact=local_contact,
                   route_set=invite.headers.get_all("Record-Route"),
                   local_cseq=secrets.randbelow(10000) + 1, remote_cseq=invite.cseq.number,
                   peer_address=source)

    @classmethod
    def as_uac(cls, invite: SipRequest, response: SipResponse, local_contact: str,
               destination: Address) -> Dialog:
        contact = next(iter_name_addrs(response.headers.get_all("Contact"), "Contact"), None)
        return cls(call_id=invite.call_id, local=invite.from_, remote=response.to,
                   remote_target=contact.uri if contact else invite.request_uri,
                   local_contact=local_contact,
                   route_set=list(reversed(response.headers.get_all("Record-Route"))),
                   local_cseq=invite.cseq.number, peer_address=destination)

    def matches(self, request: SipRequest) -> bool:
        return (request.call_id == self.call_id and request.to.tag == self.local_tag
                and request.from_.tag == self.remote_tag)

    def accept_cseq(self, request: SipRequest) -> bool:
        """In-dialog requests must not go backwards (RFC 3261 12.2.2); ACK reuses its
        INVITE's number and CANCEL its request's."""
        number = request.cseq.number
        if request.method in ("ACK", "CANCEL"):
            return True
        if self.remote_cseq is not None and number <= self.remote_cseq:
            return False
        self.remote_cseq = number
        return True

    def destination(self) -> Address:
        """First route hop, else the remote target; a host name (not an IP) falls back
        to where the peer's requests came from, which also suits NAT."""
        target = SipUri.parse(NameAddr.parse(self.route_set[0], "Route").uri.serialize()) \
            if self.route_set else self.remote_target
        host, port = target.address()
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return self.peer_address
        return host, port

    def request(self, method: str, via: Address, body: bytes = b"",
                content_type: str | None = None, cseq: int | None = None,
                extra: tuple[tuple[str, str], ...] = ()) -> SipRequest:
        if cseq is None:
            self.local_cseq += 1
            cseq = self.local_cseq
        pairs = [("Via", new_via(via[0], via[1], new_branch())), ("Max-Forwards", "70"),
                 ("From", self.local.serialize()), ("To", self.remote.serialize()),
                 ("Call-ID", self.call_id), ("CSeq", f"{cseq} {method}"),
                 ("Contact", self.local_contact)]
        pairs += [("Route", route) for route in self.route_set]
        if content_type is not None:
            pairs.append(("Content-Type", content_type))
        return SipRequest(headers=Headers.of(*pairs, *extra), body=body, method=method,
                          uri=self.remote_target.serialize())

    def ack(self, invite_cseq: int, via: Address, body: bytes = b"") -> SipRequest:
        """The ACK of a 2xx: a new transaction, the INVITE's CSeq number."""
        return self.request("ACK", via, body, "application/sdp" if body else None,
                            cseq=invite_cseq)
