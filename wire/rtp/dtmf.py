"""RFC 4733 telephone events: the payload wire type, a receiver that turns a stream
of event packets into digits once each, and the packets a sender emits for a digit.

An event is one RTP timestamp (its start); its packets repeat with a growing
duration, and the end packet is sent three times. The receiver reports a digit on
the first packet of a new event and ignores the repeats, in any order.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass

from voice.errors import ProtocolError

DIGITS = "0123456789*#ABCD"
_PAYLOAD = struct.Struct("!BBH")


@dataclass(frozen=True)
class DtmfEvent:
    event: int  # 0-9, 10 "*", 11 "#", 12-15 "A"-"D"
    end: bool
    volume: int  # 0-63, dBm0 below zero
    duration: int  # in timestamp units

    @classmethod
    def parse(cls, data: bytes) -> DtmfEvent:
        if len(data) < _PAYLOAD.size:
            raise ProtocolError(f"telephone-event payload of {len(data)} bytes, need 4",
                                code="dtmf_malformed")
        event, flags, duration = _PAYLOAD.unpack_from(data)
        return cls(event=event, end=bool(flags & 0x80), volume=flags & 0x3F, duration=duration)

    def serialize(self) -> bytes:
        return _PAYLOAD.pack(self.event & 0xFF, (0x80 if self.end else 0) | (self.volume & 0x3F),
                             self.duration & 0xFFFF)

    @property
    def digit(self) -> str | None:
        return DIGITS[self.event] if self.event < len(DIGITS) else None


def digit_event(digit: str) -> int:
    if len(digit) != 1 or digit.upper() not in DIGITS:
        raise ProtocolError(f"not a keypad digit: {digit[:8]!r}", code="dtmf_malformed")
    return DIGITS.index(digit.upper())


class DtmfReceiver:
    """Yields each event's digit once, keyed by (SSRC, RTP timestamp)."""

    def __init__(self, memory: int = 32) -> None:
        self._seen: deque[tuple[int, int]] = deque(maxlen=memory)

    def receive(self, ssrc: int, timestamp: int, payload: bytes) -> str | None:
        event = DtmfEvent.parse(payload)
        key = (ssrc, timestamp)
        if event.digit is None or key in self._seen:
            return None
        self._seen.append(key)
        return event.digit


def event_payloads(digit: str, duration_samples: int = 800, step_samples: int = 160,
                   volume: int = 10) -> list[tuple[bytes, bool]]:
    """(payload, marker) of each packet of one digit: updates every `step_samples`,
    then the end packet three times."""
    event = digit_event(digit)
    packets: list[tuple[bytes, bool]] = []
    for n, duration in enumerate(range(step_samples, duration_samples, step_samples)):
        packets.append((DtmfEvent(event, False, volume, duration).serialize(), n == 0))
    end = DtmfEvent(event, True, volume, duration_samples).serialize()
    packets.extend([(end, not packets)] + [(end, False)] * 2)
    return packets
