"""One SIP UDP socket with its transaction layer and timers (asyncio).

Datagrams go through `message.parse_message` and the sans-I/O `TransactionLayer`;
new requests reach the handler (the transaction user: the bridge, or a phone
client), responses resolve the `request()` that sent them. Oversized datagrams and
ones that do not parse are dropped (RFC 3261 18.3 allows it; nothing can be routed
back reliably); requests that parse but are missing required headers get a 400. One
bad datagram never affects another.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from voice.errors import SipError
from wire.sip.message import (
    SipRequest,
    SipResponse,
    check_request,
    parse_message,
    response_to,
    with_received,
)
from wire.sip.transaction import (
    Address,
    ClientTransaction,
    ServerTransaction,
    TransactionLayer,
    client_key,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_DATAGRAM = 16384


class RequestHandler(Protocol):
    def handle_request(self, transaction: ServerTransaction) -> None: ...

    def unacknowledged(self, transaction: ServerTransaction) -> None:
        """A final INVITE response was never ACKed (Timer H or L)."""
        ...


@dataclass
class EndpointStats:
    received: int = 0
    oversized: int = 0
    malformed: int = 0
    rejected: int = 0  # answered 4xx before reaching the handler
    blocked: int = 0  # from a source not admitted: dropped unread
    failed: int = 0  # raised something other than a SIP error (a bug): dropped


class SipEndpoint(asyncio.DatagramProtocol):
    def __init__(self, handler: RequestHandler, max_datagram: int = DEFAULT_MAX_DATAGRAM,
                 user_agent: str = "voice-assistant-service",
                 admits: Callable[[str], bool] | None = None) -> None:
        self.handler = handler
        self.admits = admits  # source hosts whose datagrams are read at all (None: any)
        self.max_datagram = max_datagram
        self.user_agent = user_agent
        self.layer = TransactionLayer()
        self.stats = EndpointStats()
        self.on_stray_2xx: Callable[[SipResponse], None] | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._waiting: dict[str, asyncio.Future[SipResponse]] = {}
        self._provisional: dict[str, Callable[[SipResponse], None]] = {}
        self._wake = asyncio.Event()

    async def open(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))

    @property
    def local_address(self) -> Address:
        assert self._transport is not None
        host, port = self._transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (3.11's selector datagram transport does not subclass DatagramTransport)
        self._transport = cast(asyncio.DatagramTransport, transport)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        for future in self._waiting.values():
            if not future.done():
                future.cancel()

    async def run(self) -> None:
        """Drive the transaction timers until cancelled."""
        while True:
            deadline = self.layer.next_deadline()
            self._wake.clear()
            try:
                async with asyncio.timeout_at(deadline):
                    await self._wake.wait()
            except TimeoutError:
                pass
            for transaction in self.layer.handle_timeout(self.now()):
                self._timed_out(transaction)
            self._flush()

    def _timed_out(self, transaction: ServerTransaction | ClientTransaction) -> None:
        if isinstance(transaction, ServerTransaction):
            self.handler.unacknowledged(transaction)
            return
        future = self._waiting.pop(client_key(transaction.request), None)
        if future is not None and not future.done():
            future.set_result(response_to(transaction.request, 408))

    # --- receiving -----------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        source = (str(addr[0]), int(addr[1]))
        self.stats.received += 1
        if self.admits is not None and not self.admits(source[0]):
            self.stats.blocked += 1  # before any parsing: costs nothing, answers nothing
            return
        if len(data) > self.max_datagram:
            self.stats.oversized += 1
            log.debug("dropped a %d-byte datagram from %s (over %d)", len(data), source,
                      self.max_datagram)
            return
        if not data.strip(b"\r\n\x00 "):
            return  # keep-alive (RFC 5626 CRLF ping)
        try:
            message = parse_message(data)
            if isinstance(message, SipRequest):
                self._receive_request(message, source)
            else:
                self._receive_response(message)
        except SipError as exc:  # also a header only parsed on use
            self.stats.malformed += 1
            log.debug("dropped a malformed message from %s: %s", source, exc)
        except Exception:  # a bug of ours: this datagram only, never the socket
            self.stats.failed += 1
            if self.stats.failed == 1:
                log.exception("a datagram from %s could not be handled", source)
            else:
                log.warning("a datagram from %s could not be handled (%d so far)", source,
                            self.stats.failed)
        self._flush()

    def _receive_request(self, request: SipRequest, source: Address) -> None:
        try:
            check_request(request)
        except SipError as exc:
            self._reject_unchecked(request, source, exc)
            return
        request = with_received(request, *source)
        transaction = self.layer.receive_request(request, source, self.now())
        if transaction is not None:
            self._wake.set()
            self.handler.handle_request(transaction)

    def _reject_unchecked(self, request: SipRequest, source: Address, exc: SipError) -> None:
        self.stats.malformed += 1
        if request.method == "ACK" or not request.headers.get_all("Via"):
            return  # an ACK is never answered; without a Via nothing can be
        try:
            response = response_to(request, exc.status, headers=(("Warning",
                                   f'399 - "{exc.message[:100]}"'),))
            data = response.serialize()
        except SipError:
            return
        self.stats.rejected += 1
        self._sendto(data, source)

    def _receive_response(self, response: SipResponse) -> None:
        if not response.headers.get_all("Via"):
            return
        transaction = self.layer.receive_response(response, self.now())
        key = client_key(response)
        if transaction is None:
            if response.status < 300 and response.cseq.method == "INVITE" \
                    and self.on_stray_2xx is not None:
                self.on_stray_2xx(response)  # a retransmitted 2xx: the TU ACKs again
            return
        if response.status < 200:
            callback = self._provisional.get(key)
            if callback is not None:
                callback(response)
            return
        future = self._waiting.pop(key, None)
        self._provisional.pop(key, None)
        if future is not None and not future.done():
            future.set_result(response)
        elif response.status < 300 and self.on_stray_2xx is not None:
            self.on_stray_2xx(response)

    # --- sending -------------------------------------------------------------------

    def respond(self, transaction: ServerTransaction, response: SipResponse) -> None:
        if self.user_agent and response.headers.get("Server") is None:
            response = type(response)(headers=response.headers.plus(("Server", self.user_agent)),
                                      body=response.body, status=response.status,
                                      reason=response.reason)
        self.layer.respond(transaction, response, self.now())
        self._wake.set()
        self._flush()

    def reply(self, transaction: ServerTransaction, status: int, reason: str | None = None,
              headers: tuple[tuple[str, str], ...] = (), body: bytes = b"",
              to_tag: str | None = None) -> None:
        self.respond(transaction, response_to(transaction.request, status, reason, to_tag,
                                              headers, body))

    def start_request(self, request: SipRequest, address: Address,
                      on_provisional: Callable[[SipResponse], None] | None = None
                      ) -> asyncio.Future[SipResponse]:
        """Send a request in a new client transaction; the future gets its final
        response (a synthetic 408 if none came in time)."""
        if self.user_agent and request.headers.get("User-Agent") is None:
            request = SipRequest(headers=request.headers.plus(("User-Agent", self.user_agent)),
                                 body=request.body, method=request.method, uri=request.uri)
        future: asyncio.Future[SipResponse] = asyncio.get_running_loop().create_future()
        key = client_key(request)
        self._waiting[key] = future
        if on_provisional is not None:
            self._provisional[key] = on_provisional
        self.layer.send_request(request, address, self.now())
        self._wake.set()
        self._flush()
        return future

    async def request(self, request: SipRequest, address: Address,
                      on_provisional: Callable[[SipResponse], None] | None = None
                      ) -> SipResponse:
        return await self.start_request(request, address, on_provisional)

    def send_raw(self, data: bytes, address: Address) -> None:
        """Outside any transaction (the ACK of a 2xx)."""
        self._sendto(data, address)

    def _flush(self) -> None:
        outgoing, self.layer.outgoing = self.layer.outgoing, []
        for data, address in outgoing:
            self._sendto(data, address)

    def _sendto(self, data: bytes, address: Address) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(data, address)

    def error_received(self, exc: Exception) -> None:
        log.debug("SIP socket error: %s", exc)  # ICMP unreachable from a vanished peer
