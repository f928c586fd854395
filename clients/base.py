"""What every Python call client offers (WebSocket, WebRTC, SIP, and a telephony
provider's media stream: Twilio, Telnyx), so that `voice call`,
`voice bench` and the tests drive any transport the same way, and the table of them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from voice.audio import Int16Array


class CallClient(Protocol):
    sample_rate: int
    close_code: int | None

    async def connect(self, timeout: float = 10.0) -> None: ...

    async def close(self) -> None: ...

    @property
    def closed(self) -> bool: ...

    async def wait_closed(self, timeout: float = 10.0) -> None: ...

    async def stream(self, samples: Int16Array, chunk_ms: int = 20, speed: float = 1.0) -> None:
        """Send audio at real-time pace (x speed), as a microphone would."""
        ...

    async def stream_silence(self, seconds: float, chunk_ms: int = 20) -> None: ...

    async def send_json(self, data: dict[str, Any]) -> None: ...

    async def wait_for(self, event_type: str, timeout: float = 10.0, after: int = 0,
                       **match: Any) -> dict[str, Any]: ...

    def events_of(self, event_type: str) -> list[dict[str, Any]]: ...

    def sent_time_ns(self, sample_index: int) -> int | None: ...

    def first_audible_ns(self, after_ns: int) -> int | None: ...

    def reply_audio(self, after_ns: int = 0) -> Int16Array: ...

    def playback_end_ns(self) -> int: ...


ClientFactory = Callable[[str, int, "str | None"], CallClient]


def make_client(transport: str, url: str, sample_rate: int,
                pipeline: str | None = None) -> CallClient:
    """The client for `transport` (the one table of them; add new transports here)."""
    from clients.media_stream_client import TelnyxCaller, TwilioCaller
    from clients.rtc_client import RtcClient
    from clients.sip_client import SipPhone
    from clients.ws_client import VoiceClient

    factories: dict[str, ClientFactory] = {"ws": VoiceClient, "webrtc": RtcClient,
                                            "sip": SipPhone, "twilio": TwilioCaller,
                                            "telnyx": TelnyxCaller}
    if transport not in factories:
        raise ValueError(f"unknown transport {transport!r}; available: {', '.join(factories)}")
    return factories[transport](url, sample_rate, pipeline)
