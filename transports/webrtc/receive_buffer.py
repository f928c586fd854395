"""A zero-delay audio jitter buffer for aiortc receivers.

aiortc's receiver reassembles frames in a generic jitter buffer that, for audio,
holds four frames before releasing one (`prefetch=4`), and needs the *next* packet to
know a frame is complete: 80-100 ms added to everything a peer says. Every Opus (or
G.711) RTP packet is a whole frame (RFC 7587 section 4.2), so this buffer releases
each packet the moment it arrives and drops packets older than the last one released
(late or duplicate). For speech recognition and for a latency measurement that is the
right trade; a peer that plays audio to a person (a browser) has its own adaptive
buffer.
"""

from __future__ import annotations

from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import RtpPacket

_RECEIVER_BUFFER = "_RTCRtpReceiver__jitter_buffer"


def seq_newer(a: int, b: int) -> bool:
    """True if 16-bit sequence number `a` comes after `b` (RFC 3550 wrap-around)."""
    return a != b and (a - b) % 65536 < 32768


class ImmediateAudioBuffer:
    """The `add(packet) -> (pli_flag, frame)` contract of aiortc's JitterBuffer."""

    capacity = 1

    def __init__(self) -> None:
        self._last_seq: int | None = None
        self.dropped = 0

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        seq = packet.sequence_number
        if self._last_seq is not None and not seq_newer(seq, self._last_seq):
            self.dropped += 1
            return False, None
        self._last_seq = seq
        data: bytes = getattr(packet, "_data", packet.payload)  # depayloaded by the receiver
        return False, JitterFrame(data=data, timestamp=packet.timestamp)


def use_immediate_audio_buffer(receiver: RTCRtpReceiver) -> None:
    """Swap an audio receiver's jitter buffer for `ImmediateAudioBuffer`.

    aiortc offers no option for this, so the private attribute is replaced; if a
    future aiortc renames it, this fails loudly here instead of silently adding delay.
    """
    if not hasattr(receiver, _RECEIVER_BUFFER):
        raise RuntimeError("aiortc's RTCRtpReceiver has no jitter buffer attribute "
                           f"{_RECEIVER_BUFFER}; update transports/webrtc/receive_buffer.py")
    setattr(receiver, _RECEIVER_BUFFER, ImmediateAudioBuffer())
