"""RTP packets (RFC 3550 section 5.1) and the sending side of one stream.

Wire type: `RtpPacket.parse(data)` / `serialize()`; malformed input raises
`ProtocolError` naming what was wrong. `RtpSender` numbers packets (sequence +1 per
packet, timestamp + samples per packet, both wrapping) for a media clock that sends
one packet per tick; it does no I/O.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from voice.errors import ProtocolError

RTP_VERSION = 2
HEADER = struct.Struct("!BBHII")


@dataclass(frozen=True)
class RtpPacket:
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes = b""
    marker: bool = False
    csrcs: tuple[int, ...] = ()
    extension: tuple[int, bytes] | None = None  # (profile, data), data a multiple of 4
    padding: int = 0  # padding bytes to add when serialising

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        if len(data) < HEADER.size:
            raise ProtocolError(f"RTP packet of {len(data)} bytes is shorter than its header",
                                code="rtp_malformed")
        first, second, sequence, timestamp, ssrc = HEADER.unpack_from(data)
        if first >> 6 != RTP_VERSION:
            raise ProtocolError(f"RTP version {first >> 6}, expected 2", code="rtp_malformed")
        offset = HEADER.size + 4 * (first & 0x0F)
        if len(data) < offset:
            raise ProtocolError("RTP CSRC list runs past the packet", code="rtp_malformed")
        csrcs = struct.unpack_from(f"!{first & 0x0F}I", data, HEADER.size)
        extension = None
        if first & 0x10:
            if len(data) < offset + 4:
                raise ProtocolError("RTP extension header runs past the packet",
                                    code="rtp_malformed")
            profile, words = struct.unpack_from("!HH", data, offset)
            end = offset + 4 + 4 * words
            if len(data) < end:
                raise ProtocolError("RTP extension runs past the packet", code="rtp_malformed")
            extension = (profile, data[offset + 4: end])
            offset = end
        end, padding = len(data), 0
        if first & 0x20:
            padding = data[-1]
            if padding == 0 or offset + padding > len(data):
                raise ProtocolError(f"RTP padding of {padding} bytes is invalid",
                                    code="rtp_malformed")
            end -= padding
        return cls(payload_type=second & 0x7F, sequence=sequence, timestamp=timestamp,
                   ssrc=ssrc, payload=data[offset:end], marker=bool(second & 0x80),
                   csrcs=tuple(csrcs), extension=extension, padding=padding)

    def serialize(self) -> bytes:
        first = (RTP_VERSION << 6 | (0x20 if self.padding else 0)
                 | (0x10 if self.extension is not None else 0) | len(self.csrcs))
        second = (0x80 if self.marker else 0) | (self.payload_type & 0x7F)
        parts = [HEADER.pack(first, second, self.sequence & 0xFFFF,
                             self.timestamp & 0xFFFFFFFF, self.ssrc & 0xFFFFFFFF)]
        parts.extend(struct.pack("!I", c) for c in self.csrcs)
        if self.extension is not None:
            profile, data = self.extension
            parts.append(struct.pack("!HH", profile, len(data) // 4) + data)
        parts.append(self.payload)
        if self.padding:
            parts.append(bytes(self.padding - 1) + bytes([self.padding]))
        return b"".join(parts)


def seq_newer(a: int, b: int) -> bool:
    """True if 16-bit sequence number `a` comes after `b` (RFC 1982 arithmetic)."""
    return a != b and (a - b) & 0xFFFF < 0x8000


@dataclass
class RtpSender:
    """Numbers the packets of one outgoing stream; the first packet carries the marker."""

    ssrc: int
    sequence: int
    timestamp: int
    sent: int = field(default=0)

    def packet(self, payload_type: int, payload: bytes, samples: int,
               marker: bool = False) -> RtpPacket:
        packet = RtpPacket(payload_type=payload_type, sequence=self.sequence,
                           timestamp=self.timestamp, ssrc=self.ssrc, payload=payload,
                           marker=marker or self.sent == 0)
        self.sequence = (self.sequence + 1) & 0xFFFF
        self.timestamp = (self.timestamp + samples) & 0xFFFFFFFF
        self.sent += 1
        return packet

    def event_packet(self, payload_type: int, payload: bytes, event_timestamp: int,
                     marker: bool) -> RtpPacket:
        """An RFC 4733 event packet: its own timestamp (the event start), the next
        sequence number, and no advance of the audio timestamp."""
        packet = RtpPacket(payload_type=payload_type, sequence=self.sequence,
                           timestamp=event_timestamp, ssrc=self.ssrc, payload=payload,
                           marker=marker)
        self.sequence = (self.sequence + 1) & 0xFFFF
        self.sent += 1
        return packet

    def skip(self, samples: int) -> None:
        """Advance the timestamp over time in which nothing was sent."""
        self.timestamp = (self.timestamp + samples) & 0xFFFFFFFF
