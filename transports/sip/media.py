"""One call's RTP socket and media clock (asyncio around `stream.py`).

Outgoing audio is paced by an absolute-deadline clock: every `ptime` it pulls reply
PCM (silence when there is none, so a barge-in's `playout.clear()` is heard as
silence from the very next packet) and sends one packet. If the event loop stalls
for more than a few packets, the clock skips ahead (timestamps jump, as after
silence suppression) instead of bursting; such stalls are counted as gaps.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from transports.sip.sdp import MediaPlan
from transports.sip.stream import InboundStream, OutboundStream, PullChunk
from transports.sip.transaction import Address
from voice.audio import Int16Array
from voice.errors import ConfigError

log = logging.getLogger(__name__)

MAX_CATCH_UP = 3  # packets sent back to back after a short stall; beyond it, skip
FILL_AFTER_TICKS = 3  # no caller audio for this many packet times: feed silence per tick


@dataclass
class ClockStats:
    packets: int = 0
    gaps: int = 0  # ticks sent more than one packet time late
    max_late_ms: float = 0.0


def parse_port_range(text: str) -> tuple[int, int]:
    if not text:
        return 0, 0
    low, _, high = text.partition("-")
    try:
        first, last = int(low), int(high or low)
    except ValueError:
        raise ConfigError(f"sip_rtp_ports: expected LOW-HIGH, got {text!r}") from None
    if not 1024 <= first <= last <= 65535:
        raise ConfigError(f"sip_rtp_ports: {text!r} is not a range within 1024-65535")
    return first, last


class RtpSocket(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.on_datagram: Callable[[bytes, Address], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (3.11's selector datagram transport does not subclass DatagramTransport)
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if self.on_datagram is not None:
            self.on_datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        log.debug("RTP socket error: %s", exc)

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def sendto(self, data: bytes, address: Address) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, address)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def open_rtp_socket(host: str, ports: tuple[int, int], in_use: set[int]) -> RtpSocket:
    """An RTP socket on an even port of the range (any free port for (0, 0))."""
    loop = asyncio.get_running_loop()
    candidates = [0] if ports == (0, 0) else [
        p for p in range(ports[0] + ports[0] % 2, ports[1] + 1, 2) if p not in in_use]
    for port in candidates:
        protocol = RtpSocket()

        def factory(made: RtpSocket = protocol) -> RtpSocket:
            return made

        try:
            await loop.create_datagram_endpoint(factory, local_addr=(host, port))
        except OSError:
            continue
        return protocol
    raise OSError(f"no free RTP port in {ports[0]}-{ports[1]}")


class CallMedia:
    def __init__(self, socket: RtpSocket, plan: MediaPlan, allowed_hosts: set[str],
                 max_wait: float, on_audio: Callable[[Int16Array], None],
                 on_digit: Callable[[str], None]) -> None:
        self.socket = socket
        self.plan = plan
        self.inbound = InboundStream(plan, allowed_hosts, max_wait)
        self.outbound = OutboundStream(plan)
        self.clock = ClockStats()
        self._on_audio = on_audio
        self._on_digit = on_digit
        self._timer: asyncio.TimerHandle | None = None
        self._quiet_ticks = 0
        self.filled_packets = 0
        socket.on_datagram = self._received

    def update(self, plan: MediaPlan, allowed_hosts: set[str]) -> None:
        self.plan = plan
        self.inbound.update(plan, allowed_hosts)
        self.outbound.plan = plan

    def _received(self, data: bytes, source: Address) -> None:
        loop = asyncio.get_running_loop()
        received = self.inbound.receive(data, source[0], loop.time())
        for samples in received.audio:
            self._quiet_ticks = 0
            self._on_audio(samples)
        for digit in received.digits:
            self._on_digit(digit)
        self._arm_timer()

    def _arm_timer(self) -> None:
        deadline = self.inbound.next_deadline()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            self._timer = asyncio.get_running_loop().call_at(deadline, self._jitter_timeout)

    def _jitter_timeout(self) -> None:
        self._timer = None
        for samples in self.inbound.handle_timeout(asyncio.get_running_loop().time()):
            self._on_audio(samples)
        self._arm_timer()

    async def send_loop(self, pull: PullChunk) -> None:
        """The media clock: one packet every ptime, forever (cancel to stop)."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            period = self.plan.ptime / 1000
            due += period
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            late = loop.time() - due
            self.clock.max_late_ms = max(self.clock.max_late_ms, late * 1000)
            if late > period:
                self.clock.gaps += 1
            if late > MAX_CATCH_UP * period:
                skipped = int(late / period)
                self.outbound.skip(skipped)
                due += skipped * period
            self._tick(pull)

    def _tick(self, pull: PullChunk) -> None:
        self._fill_silence()
        if not self.plan.sends:
            self.outbound.skip(1)
            return
        data = self.outbound.packet(self.outbound.fill(pull))
        self.socket.sendto(data, (self.plan.remote_host, self.plan.remote_port))
        self.clock.packets += 1

    def _fill_silence(self) -> None:
        """A caller that stops sending (silence suppression, a finished prompt, a stall)
        is heard as silence at the packet clock, so the pipeline always hears real time."""
        self._quiet_ticks += 1
        if self._quiet_ticks > FILL_AFTER_TICKS and self.inbound.next_deadline() is None:
            self._on_audio(np.zeros(self.outbound.samples_per_packet, np.int16))
            self.filled_packets += 1

    def send_digit(self, digit: str) -> list[bytes]:
        return self.outbound.digit_packets(digit, self.outbound.sender.timestamp)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.socket.close()
