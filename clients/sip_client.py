"""A SIP phone in Python: the `sip` call client of `voice call`, `voice bench` and the
tests (clients/base.py). It places a real SIP call (INVITE, ACK, BYE), streams the
caller's audio as G.711 RTP at real-time pace, records the RTP it receives with its
arrival times, and asks the bridge for the session's JSON events as SIP MESSAGE
requests (`X-Voice-Events: json`), so it offers what the WebSocket client offers.

URL: `sip:USER@HOST:PORT`, `HOST:PORT`, or the service's `http://HOST:PORT` (the SIP
port is then read from `GET /healthz`). Audio is 8 kHz on the wire; another
`sample_rate` is resampled on both sides.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from transports.sip import g711
from transports.sip.dtmf import event_payloads
from transports.sip.endpoint import SipEndpoint
from transports.sip.headers import SipUri
from transports.sip.media import RtpSocket, open_rtp_socket
from transports.sip.rtp import RtpPacket, seq_newer
from transports.sip.sdp import (
    LocalMedia,
    MediaPlan,
    SessionDescription,
    make_offer,
    plan_from_answer,
)
from transports.sip.stream import OutboundStream
from transports.sip.transaction import Address, ServerTransaction
from transports.sip.uac import ALLOW, PlacedCall, place_call
from voice.audio import Int16Array, StreamResampler, array_to_pcm16_bytes, rms_dbfs

AUDIBLE_DBFS = -50.0
WIRE_RATE = 8000
CODECS = {"PCMU": g711.PCMU, "PCMA": g711.PCMA}


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


@dataclass
class PlayedChunk:
    arrival_ns: int
    play_ns: int
    samples: Int16Array


@dataclass
class RtpReceiveStats:
    packets: int = 0
    sequence_gaps: int = 0  # packets missing or out of order
    max_interarrival_ms: float = 0.0
    late_packets: int = 0  # arrived more than 2 packet times after the previous one


@dataclass
class PhoneRecord:
    events: list[dict[str, Any]] = field(default_factory=list)
    audio: list[PlayedChunk] = field(default_factory=list)
    sent: list[tuple[int, int]] = field(default_factory=list)


class SipPhone:
    def __init__(self, url: str, sample_rate: int = WIRE_RATE, pipeline: str | None = None,
                 codec: str = "PCMU", events: bool = True, host: str = "127.0.0.1") -> None:
        self.url = url
        self.target = sip_target(url) if not url.startswith(("http:", "https:")) else None
        self.sample_rate = sample_rate
        self.pipeline = pipeline
        self.codec = CODECS[codec.upper()]
        self.want_events = events
        self.host = host
        self.record = PhoneRecord()
        self.rtp_stats = RtpReceiveStats()
        self.close_code: int | None = None
        self.endpoint = SipEndpoint(self, user_agent="voice-sip-client")
        self.plan: MediaPlan | None = None
        self.call: PlacedCall | None = None
        self._socket: RtpSocket | None = None
        self._out: OutboundStream | None = None
        self._runner: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._closed = False
        self._play_end_ns = 0
        self._sent_samples = 0
        self._last_seq: int | None = None
        self._last_arrival_ns = 0
        self._up = StreamResampler(sample_rate, WIRE_RATE)
        self._down = StreamResampler(WIRE_RATE, sample_rate)

    async def __aenter__(self) -> SipPhone:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- call setup and teardown --------------------------------------------------------

    async def connect(self, timeout: float = 10.0) -> None:
        if self.target is None:
            self.target = sip_target(await asyncio.to_thread(_discover, self.url))
        await self.endpoint.open(self.host, 0)
        self._runner = asyncio.create_task(self.endpoint.run(), name="sip-phone-transactions")
        self._socket = await open_rtp_socket(self.host, (0, 0), set())
        self._socket.on_datagram = self._on_rtp
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
        if self.call is not None and not self._closed:
            self._closed = True
            bye = self.call.dialog.request("BYE", self.endpoint.local_address)
            try:
                async with asyncio.timeout(3):
                    await self.endpoint.request(bye, self.call.dialog.destination())
            except TimeoutError:
                pass
        await self._teardown()

    async def _teardown(self) -> None:
        self._closed = True
        self._changed.set()
        if self._socket is not None:
            self._socket.close()
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        self.endpoint.close()

    @property
    def closed(self) -> bool:
        return self._closed

    async def wait_closed(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not self._closed:
                self._changed.clear()
                await self._changed.wait()

    # --- requests from the bridge ---------------------------------------------------

    def handle_request(self, transaction: ServerTransaction) -> None:
        request = transaction.request
        if request.method == "BYE":
            self.endpoint.reply(transaction, 200)
            self.close_code = 1000
            self._closed = True
        elif request.method == "MESSAGE" and request.content_type == "application/json":
            self.endpoint.reply(transaction, 200)
            event = json.loads(request.body)
            event["_received_ns"] = time.monotonic_ns()
            self.record.events.append(event)
        elif request.method in ("OPTIONS", "INFO", "MESSAGE"):
            self.endpoint.reply(transaction, 200, headers=(("Allow", ALLOW),))
        elif request.method != "ACK":
            self.endpoint.reply(transaction, 501)
        self._changed.set()

    def unacknowledged(self, transaction: ServerTransaction) -> None:
        pass

    # --- media ------------------------------------------------------------------------

    def _on_rtp(self, data: bytes, source: Address) -> None:
        now = time.monotonic_ns()
        try:
            packet = RtpPacket.parse(data)
        except Exception:
            return
        if self.plan is None or packet.payload_type != self.plan.payload_type:
            return
        self._account(packet, now)
        samples = self._down.process(g711.decode(packet.payload, self.plan.codec))
        # a phone's jitter buffer drains during silence: a late packet delays what follows
        # only until the next pause (the service sends silence between replies)
        silent = samples.size == 0 or rms_dbfs(samples) <= AUDIBLE_DBFS
        start = now if silent else max(now, self._play_end_ns)
        self._play_end_ns = start + len(samples) * 1_000_000_000 // self.sample_rate
        self.record.audio.append(PlayedChunk(now, start, samples))
        self._changed.set()

    def _account(self, packet: RtpPacket, now: int) -> None:
        stats = self.rtp_stats
        stats.packets += 1
        if self._last_seq is not None:
            if packet.sequence != (self._last_seq + 1) & 0xFFFF:
                stats.sequence_gaps += 1
            gap_ms = (now - self._last_arrival_ns) / 1e6
            stats.max_interarrival_ms = max(stats.max_interarrival_ms, gap_ms)
            if self.plan is not None and gap_ms > 2 * self.plan.ptime:
                stats.late_packets += 1
        if self._last_seq is None or seq_newer(packet.sequence, self._last_seq):
            self._last_seq = packet.sequence
        self._last_arrival_ns = now

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
        start = time.monotonic()
        for i in range(0, len(samples), chunk):
            due = start + (i + chunk) / self.sample_rate / speed
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if self.closed:
                return
            part = samples[i: i + chunk]
            if len(part) < chunk:
                part = np.concatenate([part, np.zeros(chunk - len(part), np.int16)])
            await self.send_audio(part)

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
            self.record.events.append({"type": "pong", "_received_ns": time.monotonic_ns()})
            self._changed.set()

    # --- what was heard -----------------------------------------------------------

    async def wait_for(self, event_type: str, timeout: float = 10.0, after: int = 0,
                       **match: Any) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                for event in self.record.events[after:]:
                    if event["type"] == event_type and all(
                            event.get(k) == v for k, v in match.items()):
                        return event
                if self.closed:
                    raise ConnectionError(f"call ended before {event_type}")
                self._changed.clear()
                await self._changed.wait()

    def events_of(self, event_type: str) -> list[dict[str, Any]]:
        return [e for e in self.record.events if event_type in ("*", e["type"])]

    def sent_time_ns(self, sample_index: int) -> int | None:
        for end, sent_ns in self.record.sent:
            if end > sample_index:
                return sent_ns
        return None

    def first_audible_ns(self, after_ns: int) -> int | None:
        window = self.sample_rate // 100
        for chunk in self.record.audio:
            if chunk.arrival_ns < after_ns:
                continue
            for i in range(0, len(chunk.samples), window):
                part = chunk.samples[i: i + window]
                if part.size and rms_dbfs(part) > AUDIBLE_DBFS:
                    return chunk.play_ns + i * 1_000_000_000 // self.sample_rate
        return None

    def reply_audio(self, after_ns: int = 0) -> Int16Array:
        parts = [c.samples for c in self.record.audio if c.arrival_ns >= after_ns]
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)

    def playback_end_ns(self) -> int:
        return self._play_end_ns
