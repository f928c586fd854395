"""One call's RTP socket and media (asyncio around `stream.py`).

Incoming RTP is read on the event loop: jitter buffer, decoding, digits. Outgoing RTP
is sent by the media clock thread (`media_clock.py`) from a duplicate of the socket:
every `ptime` it pulls reply PCM (silence when there is none, so a barge-in's
`playout.clear()` is heard as silence from the very next packet) and sends one
packet. A caller that stops sending is fed to the session as silence at the packet
rate, from a task on the loop, so the pipeline always hears real time.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any, cast

import numpy as np

from transports.sip.media_clock import MAX_CATCH_UP, ClockStats, MediaClock, RtpOut
from voice.audio import Int16Array
from voice.errors import ConfigError
from wire.rtp.plan import MediaPlan
from wire.rtp.stream import SAMPLE_RATE, InboundStream, PullChunk
from wire.sip.transaction import Address

log = logging.getLogger(__name__)

FILL_AFTER_TICKS = 3  # no caller audio for this many packet times: feed silence per tick


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

    def duplicate(self) -> socket.socket:
        """The same socket for another thread to send on (asyncio's transport is not
        thread-safe); the caller closes it."""
        assert self.transport is not None
        return cast(socket.socket, self.transport.get_extra_info("socket").dup())

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
        self.out: RtpOut | None = None
        self._on_audio = on_audio
        self._on_digit = on_digit
        self._timer: asyncio.TimerHandle | None = None
        self._quiet_ticks = 0
        self.filled_packets = 0
        socket.on_datagram = self._received

    @property
    def clock_stats(self) -> ClockStats:
        return self.out.stats if self.out is not None else ClockStats()

    def update(self, plan: MediaPlan, allowed_hosts: set[str]) -> None:
        self.plan = plan
        self.inbound.update(plan, allowed_hosts)
        if self.out is not None:
            self.out.update(plan)

    def _received(self, data: bytes, source: Address) -> None:
        loop = asyncio.get_running_loop()
        received = self.inbound.receive(data, source, loop.time())
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

    async def run(self, clock: MediaClock, pull: PullChunk) -> None:
        """Send reply audio on the media clock until cancelled (then nothing more is
        sent); meanwhile feed a quiet caller's silence to the session."""
        out = RtpOut(self.socket.duplicate(), self.plan, pull)
        self.out = out
        clock.add(out)
        try:
            await self._fill_quiet_caller()
        finally:
            clock.remove(out)
            out.close()

    async def _fill_quiet_caller(self) -> None:
        """A caller that stops sending (silence suppression, a finished prompt, a stall)
        is heard as silence at the packet rate, so the pipeline always hears real time."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            period = self.plan.ptime / 1000
            due += period
            await asyncio.sleep(max(0.0, due - loop.time()))
            behind = int((loop.time() - due) / period)
            if behind > MAX_CATCH_UP:  # a long stall: skip ahead rather than flood
                due += behind * period
                behind = 0
            for _ in range(1 + behind):
                self._fill_silence()
            due += behind * period

    def _fill_silence(self) -> None:
        self._quiet_ticks += 1
        if self._quiet_ticks > FILL_AFTER_TICKS and self.inbound.next_deadline() is None:
            self._on_audio(np.zeros(self.plan.ptime * SAMPLE_RATE // 1000, np.int16))
            self.filled_packets += 1

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.socket.close()
