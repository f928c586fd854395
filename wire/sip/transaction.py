"""SIP transactions over UDP (RFC 3261 section 17, with RFC 6026's Accepted state).

Theory of operation. A transaction is one request and its responses. Over UDP the
sender retransmits until it hears back: the client retransmits its request (Timer A
for INVITE, E otherwise: T1, doubling, capped at T2 for non-INVITE) until a response
arrives or it gives up (Timers B/F, 64*T1); a server retransmits its final INVITE
response (Timer G) until the ACK comes (or Timer H/L), and answers every
retransmitted request with its last response. Completed transactions linger (Timers
D, I, J, K) to absorb stray retransmissions. No clock here: the layer is told `now`,
reports `next_deadline()`, and `handle_timeout(now)` fires what is due. Datagrams to
send accumulate in `outgoing` for the I/O layer to drain.

                 INVITE server                          non-INVITE server
  proceeding --1xx--> proceeding               trying/proceeding --final--> completed
  proceeding --2xx--> accepted --ACK/L--> gone           completed --J--> gone
  proceeding --3-6xx--> completed --ACK--> confirmed --I--> gone;  --H--> gone (timed out)

A request the transaction user never answers (one from a source it ignores, say) is
forgotten after 64*T1, or 3 minutes for an INVITE; and the table holds at most
`max_servers` server transactions: beyond that a new request gets 503 at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wire.sip.headers import Via
from wire.sip.message import Headers, SipMessage, SipRequest, SipResponse, response_to

T1, T2, T4 = 0.5, 4.0, 5.0
UNANSWERED_INVITE_S = 180.0  # an INVITE the TU never answers (RFC 3261 16.6 Timer C)
MAX_SERVER_TRANSACTIONS = 4096  # beyond this, new requests get 503 at once
MAGIC_COOKIE = "z9hG4bK"
Address = tuple[str, int]


def server_key(request: SipRequest) -> str:
    """Matches retransmissions and non-2xx ACKs to their server transaction (17.2.3)."""
    via = request.vias[0]
    method = "INVITE" if request.method == "ACK" else request.method
    if via.branch.startswith(MAGIC_COOKIE):
        return f"{via.branch}|{via.host}|{via.port}|{method}"
    return (f"{request.call_id}|{request.cseq.number}|{request.from_.tag}|"
            f"{via.serialize()}|{method}")


def client_key(message: SipMessage) -> str:
    return f"{message.vias[0].branch}|{message.cseq.method}"


@dataclass
class ServerTransaction:
    request: SipRequest
    address: Address
    state: str = "proceeding"
    last_response: SipResponse | None = None
    timed_out: bool = False  # a final response was never acknowledged
    _resend_at: float | None = None
    _interval: float = T1
    _end_at: float | None = None

    @property
    def is_invite(self) -> bool:
        return self.request.method == "INVITE"

    @property
    def final(self) -> bool:
        return self.last_response is not None and self.last_response.status >= 200

    def respond(self, response: SipResponse, now: float) -> bytes | None:
        if self.state not in ("proceeding", "trying"):
            return None  # already final: a second final response is a TU bug, drop it
        self.last_response = response
        if response.status < 200:
            return response.serialize()
        if self.is_invite:
            self.state = "accepted" if response.status < 300 else "completed"
            self._resend_at, self._interval, self._end_at = now + T1, T1, now + 64 * T1
        else:
            self.state, self._end_at = "completed", now + 64 * T1
        return response.serialize()

    def unanswered_until(self, now: float) -> None:
        """A request the TU never answers is forgotten after this long (an INVITE may
        ring for minutes, as a proxy's Timer C allows; anything else 64*T1)."""
        self._end_at = now + (UNANSWERED_INVITE_S if self.is_invite else 64 * T1)

    def retransmission(self) -> bytes | None:
        """The request came again: answer with the last response (if any)."""
        if self.last_response is None or self.state in ("confirmed", "gone"):
            return None
        return self.last_response.serialize()

    def acknowledged(self, now: float) -> None:
        if self.state == "completed" and self.is_invite:
            self.state, self._resend_at, self._end_at = "confirmed", None, now + T4
        elif self.state == "accepted":
            self.state, self._resend_at, self._end_at = "gone", None, None

    def next_deadline(self) -> float | None:
        times = [t for t in (self._resend_at, self._end_at) if t is not None]
        return min(times) if times else None

    def handle_timeout(self, now: float) -> bytes | None:
        if self._end_at is not None and now >= self._end_at:
            self.timed_out = self.state in ("accepted", "completed") and self.is_invite
            self.state, self._resend_at, self._end_at = "gone", None, None
            return None
        if self._resend_at is not None and now >= self._resend_at and self.last_response:
            self._interval = min(self._interval * 2, T2)
            self._resend_at = now + self._interval
            return self.last_response.serialize()
        return None


@dataclass
class ClientTransaction:
    request: SipRequest
    address: Address
    now: float
    state: str = "calling"
    timed_out: bool = False
    final: SipResponse | None = None
    _resend_at: float | None = None
    _interval: float = T1
    _end_at: float = 0.0
    _ack: bytes | None = None

    def __post_init__(self) -> None:
        self._resend_at, self._end_at = self.now + T1, self.now + 64 * T1

    @property
    def is_invite(self) -> bool:
        return self.request.method == "INVITE"

    def receive(self, response: SipResponse, now: float) -> tuple[bool, bytes | None]:
        """(pass the response up to the TU?, datagram to send back)."""
        if self.state in ("completed", "gone"):
            return (response.status < 300 and self.is_invite), self._ack
        if response.status < 200:
            self.state = "proceeding"
            self._resend_at = None if self.is_invite else now + T2
            return True, None
        self.final = response
        if self.is_invite and response.status < 300:
            self.state, self._resend_at, self._end_at = "accepted", None, now + 64 * T1
            return True, None
        self.state, self._resend_at = "completed", None
        self._end_at = now + (32.0 if self.is_invite else T4)
        if self.is_invite:
            self._ack = non_2xx_ack(self.request, response).serialize()
        return True, self._ack

    def next_deadline(self) -> float | None:
        return self._end_at if self._resend_at is None else min(self._resend_at, self._end_at)

    def handle_timeout(self, now: float) -> bytes | None:
        if now >= self._end_at:
            self.timed_out = self.state in ("calling", "trying", "proceeding")
            self.state, self._resend_at = "gone", None
            return None
        if self._resend_at is not None and now >= self._resend_at:
            self._interval = self._interval * 2 if self.is_invite else min(self._interval * 2, T2)
            self._resend_at = now + self._interval
            return self.request.serialize()
        return None


def non_2xx_ack(invite: SipRequest, response: SipResponse) -> SipRequest:
    """RFC 3261 17.1.1.3: same branch, the response's To (with its tag)."""
    headers = Headers.of(("Via", invite.headers.get_all("Via")[0]),
                         ("From", invite.headers.get("From") or ""),
                         ("To", response.headers.get("To") or ""),
                         ("Call-ID", invite.call_id),
                         ("CSeq", f"{invite.cseq.number} ACK"), ("Max-Forwards", "70"))
    for route in invite.headers.get_all("Route"):
        headers = headers.plus(("Route", route))
    return SipRequest(headers=headers, body=b"", method="ACK", uri=invite.uri)


@dataclass
class TransactionLayer:
    servers: dict[str, ServerTransaction] = field(default_factory=dict)
    clients: dict[str, ClientTransaction] = field(default_factory=dict)
    outgoing: list[tuple[bytes, Address]] = field(default_factory=list)
    max_servers: int = MAX_SERVER_TRANSACTIONS
    refused: int = 0  # requests answered 503 because the table was full

    def receive_request(self, request: SipRequest, address: Address,
                        now: float) -> ServerTransaction | None:
        """A new server transaction for the TU, or None if this was a retransmission
        (answered here), the ACK of a non-2xx final response (absorbed here), or one
        request too many (answered 503 here)."""
        key = server_key(request)
        existing = self.servers.get(key)
        if request.method == "ACK":
            if existing is not None and existing.state in ("completed", "confirmed"):
                existing.acknowledged(now)
                return None
            return ServerTransaction(request, address, state="gone")  # ACK of a 2xx: TU
        if existing is not None:
            self._send(existing.retransmission(), existing.address)
            return None
        if len(self.servers) >= self.max_servers:
            self.refused += 1
            self._send(response_to(request, 503, headers=(("Retry-After", "5"),)).serialize(),
                       address)
            return None
        transaction = ServerTransaction(request, address)
        transaction.unanswered_until(now)
        if request.method != "INVITE":
            transaction.state = "trying"
        self.servers[key] = transaction
        return transaction

    def respond(self, transaction: ServerTransaction, response: SipResponse, now: float) -> None:
        self._send(transaction.respond(response, now), transaction.address)

    def invite_for_cancel(self, cancel: SipRequest) -> ServerTransaction | None:
        key = server_key(cancel).rsplit("|", 1)[0] + "|INVITE"
        return self.servers.get(key)

    def acknowledge_2xx(self, call_id: str, cseq: int, now: float) -> bool:
        for transaction in self.servers.values():
            if (transaction.state == "accepted" and transaction.request.call_id == call_id
                    and transaction.request.cseq.number == cseq):
                transaction.acknowledged(now)
                return True
        return False

    def send_request(self, request: SipRequest, address: Address,
                     now: float) -> ClientTransaction:
        transaction = ClientTransaction(request, address, now)
        if request.method != "INVITE":
            transaction.state = "trying"
        self.clients[client_key(request)] = transaction
        self._send(request.serialize(), address)
        return transaction

    def receive_response(self, response: SipResponse,
                         now: float) -> ClientTransaction | None:
        """The client transaction the TU should hear about, or None (absorbed/stray)."""
        transaction = self.clients.get(client_key(response))
        if transaction is None:
            return None
        passed, reply = transaction.receive(response, now)
        self._send(reply, transaction.address)
        return transaction if passed else None

    def next_deadline(self) -> float | None:
        transactions: list[ServerTransaction | ClientTransaction] = [
            *self.servers.values(), *self.clients.values()]
        deadlines = [d for t in transactions if (d := t.next_deadline()) is not None]
        return min(deadlines) if deadlines else None

    def handle_timeout(self, now: float) -> list[ServerTransaction | ClientTransaction]:
        """Fire due timers; returns the transactions that just timed out."""
        timed_out: list[ServerTransaction | ClientTransaction] = []
        for key, server in list(self.servers.items()):
            if self._fire(server, now):
                del self.servers[key]
                timed_out.extend([server] if server.timed_out else [])
        for key, client in list(self.clients.items()):
            if self._fire(client, now):
                del self.clients[key]
                timed_out.extend([client] if client.timed_out else [])
        return timed_out

    def _fire(self, transaction: ServerTransaction | ClientTransaction, now: float) -> bool:
        """Run a due timer; True when the transaction is over."""
        deadline = transaction.next_deadline()
        if deadline is not None and now >= deadline:
            self._send(transaction.handle_timeout(now), transaction.address)
        return transaction.state == "gone"

    def _send(self, data: bytes | None, address: Address) -> None:
        if data is not None:
            self.outgoing.append((data, address))


def new_via(host: str, port: int, branch: str) -> str:
    return Via(host=host, port=port, params=(("branch", branch), ("rport", None))).serialize()
