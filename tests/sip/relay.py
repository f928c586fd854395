"""A small SIP-aware UDP relay for tests, standing between a real phone and the bridge.

It forwards SIP both ways and rewrites the `m=audio` port of every SDP body so that
the RTP of both directions flows through it too. Caller-to-service audio can be
impaired (loss, adjacent reordering, random delay; seeded, so runs repeat);
service-to-caller RTP is recorded with arrival times, which is how a test hears what
a caller like sipp (which records nothing) received.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any, cast

Address = tuple[str, int]
_MEDIA = re.compile(rb"^m=audio (\d+)", re.M)
_LENGTH = re.compile(rb"^(Content-Length|l)[ \t]*:[ \t]*\d+", re.M | re.I)


@dataclass
class Impairment:
    loss: float = 0.0  # share of audio packets dropped
    reorder: float = 0.0  # share of audio packets held back behind the next one
    jitter_ms: float = 0.0  # uniform extra delay 0..jitter_ms
    seed: int = 7


@dataclass
class RelayStats:
    forwarded: int = 0
    dropped: int = 0
    reordered: int = 0
    downlink: list[tuple[int, bytes]] = field(default_factory=list)  # to the front (caller)
    uplink: list[tuple[int, bytes]] = field(default_factory=list)  # to the back (service)


class _Socket(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Any) -> None:
        self.on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.on_datagram(data, (str(addr[0]), int(addr[1])))

    def send(self, data: bytes, address: Address) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, address)

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])


class SipRelay:
    def __init__(self, service: Address, impairment: Impairment | None = None) -> None:
        self.service = service
        self.impairment = impairment or Impairment()
        self.stats = RelayStats()
        self._rng = random.Random(self.impairment.seed)
        self._caller_sip: Address | None = None
        self._caller_media: Address | None = None
        self._service_media: Address | None = None
        self._held: tuple[bytes, Address] | None = None
        self._sockets: list[_Socket] = []

    async def start(self) -> None:
        self.sip_front = await self._open(self._from_caller_sip)
        self.sip_back = await self._open(self._from_service_sip)
        self.media_front = await self._open(self._from_caller_media)
        self.media_back = await self._open(self._from_service_media)

    async def _open(self, handler: Any) -> _Socket:
        loop = asyncio.get_running_loop()
        sock = _Socket(handler)
        await loop.create_datagram_endpoint(lambda: sock, local_addr=("127.0.0.1", 0))
        self._sockets.append(sock)
        return sock

    @property
    def sip_port(self) -> int:
        return self.sip_front.port

    def close(self) -> None:
        for sock in self._sockets:
            if sock.transport is not None:
                sock.transport.close()

    # --- signalling ------------------------------------------------------------------

    def _from_caller_sip(self, data: bytes, source: Address) -> None:
        self._caller_sip = source
        data, port = _rewrite_sdp(data, self.media_back.port)
        if port is not None:
            self._caller_media = (source[0], port)
        self.sip_back.send(data, self.service)

    def _from_service_sip(self, data: bytes, source: Address) -> None:
        data, port = _rewrite_sdp(data, self.media_front.port)
        if port is not None:
            self._service_media = (source[0], port)
        if self._caller_sip is not None:
            self.sip_front.send(data, self._caller_sip)

    # --- media ---------------------------------------------------------------------------

    def _from_service_media(self, data: bytes, source: Address) -> None:
        self.stats.downlink.append((time.monotonic_ns(), data))
        if self._caller_media is not None:
            self.media_front.send(data, self._caller_media)

    def _from_caller_media(self, data: bytes, source: Address) -> None:
        if self._service_media is None:
            return
        target = self._service_media
        audio = len(data) > 12 and (data[1] & 0x7F) in (0, 8)
        imp = self.impairment
        if audio and self._rng.random() < imp.loss:
            self.stats.dropped += 1
            return
        if audio and self._held is None and self._rng.random() < imp.reorder:
            self._held = (data, target)  # goes out right after the next packet
            self.stats.reordered += 1
            return
        self._forward(data, target)
        if self._held is not None:
            held, self._held = self._held, None
            self._forward(*held)

    def _forward(self, data: bytes, target: Address) -> None:
        self.stats.forwarded += 1
        self.stats.uplink.append((time.monotonic_ns(), data))
        delay = self._rng.uniform(0, self.impairment.jitter_ms) / 1000
        if delay <= 0:
            self.media_back.send(data, target)
        else:
            asyncio.get_running_loop().call_later(delay, self.media_back.send, data, target)


def _rewrite_sdp(data: bytes, new_port: int) -> tuple[bytes, int | None]:
    """Point the SDP's audio at `new_port`; returns the port it named before."""
    head, sep, body = data.partition(b"\r\n\r\n")
    match = _MEDIA.search(body)
    if not sep or match is None:
        return data, None
    body = body[:match.start(1)] + str(new_port).encode() + body[match.end(1):]
    head = _LENGTH.sub(b"Content-Length: " + str(len(body)).encode(), head)
    return head + sep + body, int(match.group(1))
