"""A SIP phone in Python: the `sip` call client of `voice call`, `voice bench` and the
tests (clients/base.py). It places a real SIP call (INVITE, ACK, BYE), streams the
caller's audio as G.711 RTP at real-time pace, records the RTP it receives with its
arrival times, and asks the bridge for the session's JSON events as SIP MESSAGE
requests (`X-Voice-Events: json`), so it offers what the WebSocket client offers.

URL: `sip:USER@HOST:PORT`, `HOST:PORT`, or the service's `http://HOST:PORT` (the SIP
port is then read from `GET /healthz`). Audio is 8 kHz on the wire; another
`sample_rate` is resampled on both sides.

What the phone would hear of the RTP it receives is judged by a fixed playout buffer
(`clients.phone_buffer`, `rtp_stats`) on the kernel's arrival times, so that
a busy client process does not count its own delays against the service.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import struct
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from clients.phone_buffer import DEFAULT_DEPTH_MS, PhoneBuffer, PhoneBufferStats
from clients.recording import AUDIBLE_DBFS, RecordingClient
from transports.sip.endpoint import SipEndpoint
from transports.sip.uac import ALLOW, PlacedCall, place_call
from voice.audio import Int16Array, StreamResampler, array_to_pcm16_bytes, rms_dbfs
from voice.errors import ProtocolError
from wire.rtp import g711
from wire.rtp.dtmf import event_payloads
from wire.rtp.packet import RtpPacket
from wire.rtp.plan import MediaPlan
from wire.rtp.stream import OutboundStream
from wire.sip.headers import SipUri
from wire.sip.sdp import (
    LocalMedia,
    SessionDescription,
    make_offer,
    plan_from_answer,
)
from wire.sip.transaction import Address, ServerTransaction

WIRE_RATE = 8000
CODECS = {"PCMU": g711.PCMU, "PCMA": g711.PCMA}
# SO_TIMESTAMPNS of Linux's generic socket ABI (x86-64, arm64); Python does not export it
SO_TIMESTAMPNS = 35
TIMESPEC = struct.Struct("@qq")


def sip_target(url: str) -> SipUri:
    return SipUri.parse(url if url.startswith(("sip:", "sips:")) else f"sip:assistant@{url}")


def _discover(url: str) -> str:
    """For an http(s) URL of the service: its SIP address, from GET /healthz."""
    parts = urlsplit(url)
    with urllib.request.urlopen(f"{parts.scheme}://{parts.netloc}/healthz", timeout=5) as r:
        port = json.loads(r.read()).get("sip_port")
    if not port:
        raise ConnectionError(f"{url} has no SIP bridge (start it with --sip-port)")
    return f"sip:assistant@{parts.hostname}:{port}"


class StampedSocket:
    """The phone's RTP socket. On Linux each datagram comes with the kernel's arrival
    time (SO_TIMESTAMPNS); elsewhere with the time it was read."""

    def __init__(self, sock: socket.socket, on_datagram: Callable[[bytes, int], None]) -> None:
        self._sock = sock
        self._on_datagram = on_datagram
        self._stamped = False
        if sys.platform == "linux":
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                self._stamped = True
            except OSError:
                pass
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    @classmethod
    def open(cls, host: str, on_datagram: Callable[[bytes, int], None]) -> StampedSocket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind((host, 0))
        return cls(sock, on_datagram)

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    def _readable(self) -> None:
        while True:
            try:
                data, ancillary, _, _ = self._sock.recvmsg(4096, socket.CMSG_SPACE(TIMESPEC.size))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # an ICMP error from an earlier send; nothing to read
            self._on_datagram(data, self._arrival_ns(ancillary))

    def _arrival_ns(self, ancillary: list[tuple[int, int, bytes]]) -> int:
        now = time.monotonic_ns()
        for level, kind, data in ancillary:
            if self._stamped and level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS \
                    and len(data) >= TIMESPEC.size:
                seconds, nanoseconds = TIMESPEC.unpack_from(data)
                # the kernel stamps on the real-time clock: carry it over to the monotonic one
                waited = time.time_ns() - (int(seconds) * 1_000_000_000 + int(nanoseconds))
                return now - max(0, waited)
        return now

    def sendto(self, data: bytes, address: Address) -> None:
        try:
            self._sock.sendto(data, address)
        except OSError:
            pass  # a full socket buffer or an unreachable port drops the packet, as UDP does

    def close(self) -> None:
        if self._sock.fileno() >= 0:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()


class SipPhone(RecordingClient):
    def __init__(self, url: str, sample_rate: int = WIRE_RATE, pipeline: str | None = None,
                 codec: str = "PCMU", events: bool = True, host: str = "127.0.0.1",
                 buffer_ms: float = DEFAULT_DEPTH_MS) -> None:
        super().__init__(sample_rate)
        self.url = url
        self.target = sip_target(url) if not url.startswith(("http:", "https:")) else None
        self.pipeline = pipeline
        self.codec = CODECS[codec.upper()]
        self.want_events = events
        self.host = host
        self.endpoint = SipEndpoint(self, user_agent="voice-sip-client")
        self.plan: MediaPlan | None = None
        self.call: PlacedCall | None = None
        self._buffer = PhoneBuffer(WIRE_RATE, buffer_ms)
        self._socket: StampedSocket | None = None
        self._out: OutboundStream | None = None
        self._runner: asyncio.Task[None] | None = None
        self._sent_samples = 0
        self._up = StreamResampler(sample_rate, WIRE_RATE)
        self._down = StreamResampler(WIRE_RATE, sample_rate)

    async def __aenter__(self) -> SipPhone:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def rtp_stats(self) -> PhoneBufferStats:
        """The received RTP as a phone with a `buffer_ms` playout buffer heard it."""
        return self._buffer.stats

    # --- call setup and teardown --------------------------------------------------------

    async def connect(self, timeout: float = 10.0) -> None:
        if self.target is None:
            self.target = sip_target(await asyncio.to_thread(_discover, self.url))
        await self.endpoint.open(self.host, 0)
        self._runner = asyncio.create_task(self.endpoint.run(), name="sip-phone-transactions")
        self._socket = StampedSocket.open(self.host, self._on_rtp)
        local = LocalMedia(self.host, self._socket.port, secrets.randbelow(2**31))
        extra = [("X-Voice-Events", "json")] if self.want_events else []
        if self.pipeline:
            extra.append(("X-Voice-Pipeline", self.pipeline))
        host, port = self.endpoint.local_address
        try:
            self.call = await place_call(
                self.endpoint, self.target, "caller", f"<sip:caller@{host}:{port}>",
                make_offer(local, codecs=(self.codec,)).serialize(), extra=tuple(extra),
                answer_timeout=timeout)
        except BaseException:
            await self._teardown()
            raise
        self.endpoint.on_stray_2xx = self._re_ack
        self.plan = plan_from_answer(SessionDescription.parse(self.call.response.body))
        self._out = OutboundStream(self.plan)

    def _re_ack(self, response: Any) -> None:
        if self.call is not None:
            self.endpoint.send_raw(self.call.ack, self.call.dialog.destination())

    async def close(self) -> None:
        if self.call is not None and not self.closed:
            self._mark_closed_now(None, "")
            bye = self.call.dialog.request("BYE", self.endpoint.local_address)
            try:
                async with asyncio.timeout(3):
                    await self.endpoint.request(bye, self.call.dialog.destination())
            except TimeoutError:
                pass
        await self._teardown()

    async def _teardown(self) -> None:
        self._mark_closed_now(None, "")
        if self._socket is not None:
            self._socket.close()
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        self.endpoint.close()

    # --- requests from the bridge ---------------------------------------------------

    def handle_request(self, transaction: ServerTransaction) -> None:
        request = transaction.request
        if request.method == "BYE":
            self.endpoint.reply(transaction, 200)
            self._mark_closed_now(1000, "BYE")
        elif request.method == "MESSAGE" and request.content_type == "application/json":
            self.endpoint.reply(transaction, 200)
            self._add_event_now(json.loads(request.body))
        elif request.method in ("OPTIONS", "INFO", "MESSAGE"):
            self.endpoint.reply(transaction, 200, headers=(("Allow", ALLOW),))
        elif request.method != "ACK":
            self.endpoint.reply(transaction, 501)

    def unacknowledged(self, transaction: ServerTransaction) -> None:
        pass

    # --- media ------------------------------------------------------------------------

    def _on_rtp(self, data: bytes, arrival_ns: int) -> None:
        try:
            packet = RtpPacket.parse(data)
        except ProtocolError:
            return
        if self.plan is None or packet.payload_type != self.plan.payload_type:
            return
        wire = g711.decode(packet.payload, self.plan.codec)
        silent = wire.size == 0 or rms_dbfs(wire) <= AUDIBLE_DBFS
        self._buffer.receive(packet.sequence, packet.timestamp, len(packet.payload), arrival_ns,
                             audible=not silent)
        # a phone's jitter buffer drains during silence: a late packet delays what follows
        # only until the next pause (the service sends silence between replies)
        self._add_audio(self._down.process(wire), arrival_ns, drained=silent)
        self._notify_now()

    def _send_rtp(self, data: bytes) -> None:
        if self._socket is not None and self.plan is not None:
            self._socket.sendto(data, (self.plan.remote_host, self.plan.remote_port))

    async def send_audio(self, samples: Int16Array) -> None:
        assert self._out is not None
        wire = self._up.process(samples)
        self._send_rtp(self._out.packet(array_to_pcm16_bytes(wire)))
        self._sent_samples += len(samples)
        self.record.sent.append((self._sent_samples, time.monotonic_ns()))

    async def stream(self, samples: Int16Array, chunk_ms: int = 20, speed: float = 1.0) -> None:
        chunk = self.sample_rate * 20 // 1000  # RTP packets of 20 ms, whatever chunk_ms says

        async def packet(part: Int16Array) -> None:  # the last one padded to a whole packet
            await self.send_audio(np.concatenate([part, np.zeros(chunk - len(part), np.int16)]))

        await self.paced(samples, chunk, speed, packet)

    async def stream_silence(self, seconds: float, chunk_ms: int = 20) -> None:
        await self.stream(np.zeros(int(seconds * self.sample_rate), np.int16), chunk_ms)

    async def send_digit(self, digit: str) -> None:
        """RFC 4733 packets for one key press, 20 ms apart."""
        assert self._out is not None and self.plan is not None
        if self.plan.dtmf_payload_type is None:
            raise ValueError("the bridge did not accept telephone-event")
        event_ts = self._out.sender.timestamp
        for payload, marker in event_payloads(digit):
            self._send_rtp(self._out.sender.event_packet(
                self.plan.dtmf_payload_type, payload, event_ts, marker).serialize())
            await asyncio.sleep(0.02)

    async def send_json(self, data: dict[str, Any]) -> None:
        """The WebSocket client's control messages, done the SIP way."""
        kind = data.get("type")
        if kind == "dtmf":
            await self.send_digit(str(data["digit"]))
        elif kind == "session.end":
            await self.close()
        elif kind == "ping":
            self._add_event_now({"type": "pong"})
