"""What was agreed for one audio stream: codec, payload types, the peer's address,
packet time and direction. SDP's offer/answer (`wire.sip.sdp`) produces it; the RTP
stream (`stream`) and the SIP transport's media sockets act on it."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PTIME = 20


@dataclass(frozen=True)
class MediaPlan:
    """What was agreed for the audio stream, from our side."""

    codec: int  # g711.PCMU or g711.PCMA
    payload_type: int  # on the wire (the static 0/8, or the offerer's dynamic number)
    dtmf_payload_type: int | None
    remote_host: str
    remote_port: int
    ptime: int = DEFAULT_PTIME
    direction: str = "sendrecv"  # ours: do we send, do we receive

    @property
    def sends(self) -> bool:
        return self.direction in ("sendrecv", "sendonly") and self.remote_port != 0

    @property
    def receives(self) -> bool:
        return self.direction in ("sendrecv", "recvonly")
