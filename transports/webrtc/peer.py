"""One aiortc peer connection with one audio track each way and one event channel.

Both the service (answering) and the Python client (offering) use it: it turns
aiortc's callbacks into awaitable state (`connected`, `failed`, the caller's track,
the data channel's messages) that the owner's tasks wait on, so no work happens in a
callback and every task has an owner.
"""

from __future__ import annotations

import asyncio
import logging

from aiortc import RTCDataChannel, RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.exceptions import (
    InternalError,
    InvalidAccessError,
    InvalidStateError,
    OperationError,
)
from aiortc.mediastreams import MediaStreamTrack

from transports.webrtc.ice import rtc_configuration
from transports.webrtc.receive_buffer import use_immediate_audio_buffer
from transports.webrtc.tracks import ChunkSource, PacedAudioTrack
from voice.clock import Clock
from voice.errors import ProtocolError
from voice.tasks import MESSAGE_QUEUE_ITEMS, CappedQueue
from wire.rtc_signalling import IceServer

log = logging.getLogger(__name__)

# What aiortc raises on an offer it cannot parse or answer (its SDP parser is plain Python)
UNANSWERABLE = (ValueError, KeyError, IndexError, TypeError, AssertionError, InternalError,
                InvalidAccessError, InvalidStateError, OperationError)
EVENTS_LABEL = "events"
DRAIN_S = 1.0  # how long a closing peer waits for queued data-channel messages to leave


class Peer:
    def __init__(self, ice_servers: tuple[IceServer, ...], source: ChunkSource,
                 clock: Clock) -> None:
        self.pc = RTCPeerConnection(rtc_configuration(ice_servers))
        self.outgoing = PacedAudioTrack(source, clock)
        self.incoming: MediaStreamTrack | None = None
        self._fast_receivers: list[RTCRtpReceiver] = []
        self.channel: RTCDataChannel | None = None
        self.channel_open = asyncio.Event()
        self.messages: CappedQueue[str | bytes] = CappedQueue(
            MESSAGE_QUEUE_ITEMS, "data channel messages")
        self.connected = asyncio.Event()
        self.failed = asyncio.Event()
        self.pc.add_listener("connectionstatechange", self._on_state)
        self.pc.add_listener("datachannel", self._adopt_channel)

    # --- negotiation ------------------------------------------------------------------

    async def offer(self) -> str:
        """Client side: a sendrecv audio section and the event channel; ICE gathered."""
        self._adopt_channel(self.pc.createDataChannel(EVENTS_LABEL, ordered=True))
        self.pc.addTrack(self.outgoing)
        self._attach_receivers()
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def accept_answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        self._attach_receivers()

    async def answer(self, offer_sdp: str) -> str:
        """Service side: answer the offer, sending our voice on its audio section."""
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp,
                                                                     type="offer"))
            self.pc.addTrack(self.outgoing)
            self._attach_receivers()
            await self.pc.setLocalDescription(await self.pc.createAnswer())
        except UNANSWERABLE as exc:
            raise ProtocolError(f"cannot answer this offer: {exc}"[:200],
                                code="invalid_offer") from exc
        return self.pc.localDescription.sdp

    def _attach_receivers(self) -> None:
        """Before any RTP can arrive: no-delay jitter buffers; once the remote
        description is set (aiortc creates the track then): the caller's track."""
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind != "audio":
                continue
            if transceiver.receiver not in self._fast_receivers:
                use_immediate_audio_buffer(transceiver.receiver)
                self._fast_receivers.append(transceiver.receiver)
            if self.incoming is None:
                self.incoming = transceiver.receiver.track

    # --- callbacks: record state, nothing else ---------------------------------------

    def _on_state(self) -> None:
        state = self.pc.connectionState
        log.debug("peer connection state: %s", state)
        if state == "connected":
            self.connected.set()
        elif state in ("failed", "closed"):
            self.failed.set()

    def _adopt_channel(self, channel: RTCDataChannel) -> None:
        if self.channel is not None:
            return  # one event channel per call; others are ignored
        self.channel = channel
        channel.add_listener("message", self.messages.offer)
        channel.add_listener("open", self.channel_open.set)
        if channel.readyState == "open":
            self.channel_open.set()

    # --- the event channel ------------------------------------------------------------

    async def send_text(self, text: str) -> None:
        """Send once the channel is open; dropped if it has closed."""
        await self.channel_open.wait()
        if self.channel is not None and self.channel.readyState == "open":
            self.channel.send(text)

    async def drain(self) -> None:
        """Wait (bounded) until queued channel messages have been handed to the wire."""
        if self.channel is None or self.channel.readyState != "open":
            return
        drained = asyncio.Event()
        self.channel.bufferedAmountLowThreshold = 0
        self.channel.add_listener("bufferedamountlow", drained.set)
        try:
            if self.channel.bufferedAmount > 0:
                async with asyncio.timeout(DRAIN_S):
                    await drained.wait()
        except TimeoutError:
            log.info("closing with %d bytes of events unsent", self.channel.bufferedAmount)
        finally:
            self.channel.remove_listener("bufferedamountlow", drained.set)

    async def close(self) -> None:
        self.outgoing.stop()
        await self.pc.close()
