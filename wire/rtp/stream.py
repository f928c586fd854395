"""The media of one call, sans-I/O: RTP in (source check, SSRC latching, jitter
buffer, G.711 decode, concealment, RFC 4733 digits) and RTP out (G.711 encode,
packets of `ptime`, sequence numbers and timestamps). The asyncio layer (`media.py`)
passes datagrams, source addresses and `now`, and sends what comes back.

Audio and telephone events are accepted only from the host the SDP names (or the host
that signalled the call), from the port its first packet came from (symmetric RTP
latching), and from one SSRC at a time: an event under another SSRC while the audio's
SSRC is live is not the caller's (RFC 4733 events share the audio's stream).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from voice.audio import Int16Array
from voice.errors import ProtocolError
from wire.rtp import g711
from wire.rtp.dtmf import DtmfReceiver, event_payloads
from wire.rtp.jitter import Concealer, JitterBuffer, JitterFrame
from wire.rtp.packet import RtpPacket, RtpSender
from wire.rtp.plan import MediaPlan

Address = tuple[str, int]

COMFORT_NOISE = 13
SSRC_SWITCH_AFTER = 0.5  # seconds of silence from the latched SSRC before another may take over
SAMPLE_RATE = 8000
PullChunk = Callable[[], "bytes | None"]  # the next 20 ms chunk of reply PCM, or None


@dataclass
class InboundStats:
    packets: int = 0
    malformed: int = 0
    foreign: int = 0  # from a host the call did not name, or another port of it
    unknown_payload: int = 0
    other_ssrc: int = 0
    digits: int = 0


@dataclass
class Received:
    audio: list[Int16Array] = field(default_factory=list)
    digits: list[str] = field(default_factory=list)


class InboundStream:
    def __init__(self, plan: MediaPlan, allowed_hosts: set[str], max_wait: float) -> None:
        self.plan = plan
        self.allowed_hosts = allowed_hosts
        self.stats = InboundStats()
        self.last_packet_at: float | None = None
        self._max_wait = max_wait
        self._jitter = JitterBuffer(max_wait)
        self._concealer = Concealer(frame_samples=plan.ptime * SAMPLE_RATE // 1000)
        self._dtmf = DtmfReceiver()
        self._ssrc: int | None = None
        self._ssrc_seen_at = 0.0
        self._peer: Address | None = None  # latched: the first RTP from a named host

    def update(self, plan: MediaPlan, allowed_hosts: set[str]) -> None:
        """A re-INVITE changed the media (hold, resume, another codec, another port)."""
        self.plan, self.allowed_hosts = plan, allowed_hosts
        self._peer = None

    @property
    def jitter(self) -> JitterBuffer:
        return self._jitter

    def receive(self, data: bytes, source: Address, now: float) -> Received:
        """One datagram from `source`. Media (and keypad events) count only from the
        address and port the first valid packet of a named host came from (symmetric
        RTP latching): another socket on the caller's host cannot speak for it."""
        out = Received()
        if source[0] not in self.allowed_hosts or self._peer not in (None, source):
            self.stats.foreign += 1
            return out
        try:
            packet = RtpPacket.parse(data)
        except ProtocolError:
            self.stats.malformed += 1
            return out
        self._peer = source
        self.stats.packets += 1
        if packet.payload_type == self.plan.dtmf_payload_type:
            if not self._of_the_stream(packet.ssrc, now):
                self.stats.other_ssrc += 1
                return out
            self._receive_digit(packet, out)
            if packet.ssrc == self._ssrc:  # events share the audio's sequence numbers
                out.audio.extend(self._decode(
                    self._jitter.push(packet.sequence, packet.timestamp, b"", now)))
        elif packet.payload_type == self.plan.payload_type:
            self.last_packet_at = now
            if self._latch(packet.ssrc, now):
                frames = self._jitter.push(packet.sequence, packet.timestamp, packet.payload,
                                           now)
                out.audio.extend(self._decode(frames))
        elif packet.payload_type != COMFORT_NOISE:
            self.stats.unknown_payload += 1
        return out

    def next_deadline(self) -> float | None:
        return self._jitter.next_deadline()

    def handle_timeout(self, now: float) -> list[Int16Array]:
        return self._decode(self._jitter.handle_timeout(now))

    def _receive_digit(self, packet: RtpPacket, out: Received) -> None:
        try:
            digit = self._dtmf.receive(packet.ssrc, packet.timestamp, packet.payload)
        except ProtocolError:
            self.stats.malformed += 1
            return
        if digit is not None:
            self.stats.digits += 1
            out.digits.append(digit)

    def _of_the_stream(self, ssrc: int, now: float) -> bool:
        """Whether a keypad event's SSRC is the latched audio's, or that audio has been
        silent long enough for another stream to take over."""
        return self._ssrc is None or ssrc == self._ssrc \
            or now - self._ssrc_seen_at >= SSRC_SWITCH_AFTER

    def _latch(self, ssrc: int, now: float) -> bool:
        if self._ssrc is not None and ssrc != self._ssrc:
            if now - self._ssrc_seen_at < SSRC_SWITCH_AFTER:
                self.stats.other_ssrc += 1
                return False
            self._jitter = JitterBuffer(self._max_wait)  # a new stream starts afresh
        self._ssrc, self._ssrc_seen_at = ssrc, now
        return True

    def _decode(self, frames: list[JitterFrame]) -> list[Int16Array]:
        out = []
        for frame in frames:
            if frame.payload is None:
                out.append(self._concealer.lost())
            elif frame.payload:
                out.append(self._concealer.good(g711.decode(frame.payload, self.plan.codec)))
        return out


class OutboundStream:
    """Packets of `ptime` ms from 16-bit PCM at 8 kHz, silence when there is none."""

    def __init__(self, plan: MediaPlan) -> None:
        self.plan = plan
        self.sender = RtpSender(ssrc=secrets.randbits(32), sequence=secrets.randbits(16),
                                timestamp=secrets.randbits(32))
        self._pending = b""

    @property
    def samples_per_packet(self) -> int:
        return self.plan.ptime * SAMPLE_RATE // 1000

    def packet(self, pcm: bytes) -> bytes:
        """One packet; `pcm` shorter than a packet is padded with silence."""
        need = self.samples_per_packet * 2
        pcm = pcm[:need] + bytes(max(0, need - len(pcm)))
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.int16)
        payload = g711.encode(samples, self.plan.codec)
        return self.sender.packet(self.plan.payload_type, payload, len(samples)).serialize()

    def fill(self, pull_chunk: PullChunk) -> bytes:
        """PCM for one packet, pulling 20 ms chunks as needed; what is left over waits
        for the next packet (ptime 10, 30, ...)."""
        need = self.samples_per_packet * 2
        while len(self._pending) < need:
            chunk = pull_chunk()
            if chunk is None:
                break
            self._pending += chunk
        pcm, self._pending = self._pending[:need], self._pending[need:]
        return pcm

    def clear(self) -> None:
        self._pending = b""

    def skip(self, packets: int) -> None:
        self.sender.skip(packets * self.samples_per_packet)

    def digit_packets(self, digit: str, event_timestamp: int) -> list[bytes]:
        if self.plan.dtmf_payload_type is None:
            raise ProtocolError("the peer did not offer telephone-event", code="dtmf_unsupported")
        return [self.sender.event_packet(self.plan.dtmf_payload_type, payload, event_timestamp,
                                         marker).serialize()
                for payload, marker in event_payloads(digit)]

