"""Python WebRTC client (aiortc) with the WebSocket client's API (`clients.base.CallClient`).

It negotiates on the service's `/rtc` signalling socket, sends the caller's audio as
an Opus track paced by its own 20 ms media clock, receives the assistant's voice as
an Opus track and the events on the `events` data channel. Like `VoiceClient` it
records, on the client's monotonic clock, when each piece of caller audio left (the
moment its frame was handed to the encoder) and when each reply frame arrived
(decoded, with no jitter buffer delay: `transports.webrtc.receive_buffer`), so `voice bench`
measures WebRTC and WebSocket the same way: a listener playing audio on arrival.

When the service is on a loopback address, 127.0.0.1 is offered as an ICE candidate
(`transports.webrtc.ice.allow_loopback`), so a client and a service on one machine
connect with no network.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from collections import deque
from typing import Any, TypeVar
from urllib.parse import urlencode, urlsplit, urlunsplit

import numpy as np
import websockets
from aiortc.mediastreams import MediaStreamError
from websockets.asyncio.client import ClientConnection

from clients.recording import RecordingClient
from transports.webrtc.ice import allow_loopback
from transports.webrtc.media import FRAME_BYTES, RTC_RATE, downmix
from transports.webrtc.peer import Peer
from transports.webrtc.tracks import frame_samples, next_audio
from voice.audio import Int16Array, StreamResampler, array_to_pcm16_bytes
from voice.clock import MONOTONIC
from wire.rtc_signalling import (
    Answer,
    Config,
    SignalError,
    encode_offer,
    parse_server_signal,
)

AHEAD_FRAMES = 2  # caller audio queued ahead of the media clock while streaming
SILENT_PEAK = 2  # a received frame no louder than this is the service's idle silence

_Signal = TypeVar("_Signal", Config, Answer)


def signalling_url(url: str, pipeline: str | None = None) -> str:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    query = urlencode({"pipeline": pipeline}) if pipeline else ""
    return urlunsplit((scheme, parts.netloc, "/rtc", query, ""))


def is_loopback(url: str) -> bool:
    host = urlsplit(url if "://" in url else f"http://{url}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class MicFeed:
    """Caller audio at the session rate in, 20 ms frames at 48 kHz out (one per tick).

    Records when the frame that completes each pushed chunk is taken by the media clock:
    that is when its audio left, as a microphone's would.
    """

    def __init__(self, sample_rate: int, sent: list[tuple[int, int]]) -> None:
        self._resampler = StreamResampler(sample_rate, RTC_RATE)
        self._pending = bytearray()
        self._marks: deque[tuple[int, int]] = deque()  # (48 kHz byte end, session end index)
        self._queued_bytes = 0
        self._taken_bytes = 0
        self._pushed_samples = 0
        self.sent = sent  # (session-rate end sample, monotonic ns), appended to
        self.taken = asyncio.Event()

    def push(self, samples: Int16Array) -> None:
        pcm = array_to_pcm16_bytes(self._resampler.process(samples))
        self._pending.extend(pcm)
        self._queued_bytes += len(pcm)
        self._pushed_samples += len(samples)
        self._marks.append((self._queued_bytes, self._pushed_samples))

    @property
    def frames_queued(self) -> int:
        return len(self._pending) // FRAME_BYTES

    def pull(self) -> bytes | None:
        if not self._pending:
            return None
        frame = bytes(self._pending[:FRAME_BYTES])
        del self._pending[:FRAME_BYTES]
        self._taken_bytes += len(frame)
        now = time.monotonic_ns()
        while self._marks and self._marks[0][0] <= self._taken_bytes:
            self.sent.append((self._marks.popleft()[1], now))
        self.taken.set()
        return frame


class RtcClient(RecordingClient):
    def __init__(self, url: str, sample_rate: int = 16000, pipeline: str | None = None,
                 loopback: bool | None = None) -> None:
        super().__init__(sample_rate)
        self.url = signalling_url(url, pipeline)
        self.session: dict[str, Any] = {}
        self._loopback = is_loopback(url) if loopback is None else loopback
        self._mic = MicFeed(sample_rate, self.record.sent)
        self._to_session = StreamResampler(RTC_RATE, sample_rate)
        self._ws: ClientConnection | None = None
        self._peer: Peer | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> RtcClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- connecting ---------------------------------------------------------------------

    async def connect(self, timeout: float = 10.0) -> None:
        if self._loopback:
            allow_loopback()
        self._ws = await websockets.connect(self.url, open_timeout=timeout, compression=None,
                                            additional_headers=self.auth_headers())
        try:
            async with asyncio.timeout(timeout):
                await self._negotiate()
        except BaseException:
            await self.close()
            raise
        self._tasks = [
            asyncio.create_task(self._watch_signalling(), name="rtc-client-signalling"),
            asyncio.create_task(self._read_events(), name="rtc-client-events"),
            asyncio.create_task(self._read_audio(), name="rtc-client-audio"),
        ]
        self.session = await self.wait_for("session.created", timeout=timeout)

    async def _negotiate(self) -> None:
        assert self._ws is not None
        config = await self._signal(Config)
        self._peer = Peer(config.ice_servers, self._mic.pull, MONOTONIC)
        await self._ws.send(encode_offer(await self._peer.offer()))
        answer = await self._signal(Answer)
        await self._peer.accept_answer(answer.sdp)

    async def _signal(self, kind: type[_Signal]) -> _Signal:
        assert self._ws is not None
        try:
            message = parse_server_signal(await self._ws.recv())
        except websockets.ConnectionClosed as exc:
            raise ConnectionError(f"the service closed the signalling socket ({exc})") from exc
        if isinstance(message, SignalError):
            raise ConnectionError(f"the service refused the call: {message.code}: "
                                  f"{message.message}")
        if not isinstance(message, kind):
            raise ConnectionError(f"expected {kind.__name__.lower()}, got {message}")
        return message

    async def close(self) -> None:
        if self._peer is not None:
            await self._peer.close()
        if self._ws is not None:
            await self._ws.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._closed_by_signalling()

    # --- receiving ----------------------------------------------------------------------

    async def _watch_signalling(self) -> None:
        assert self._ws is not None
        try:
            async for message in self._ws:
                event = json.loads(message)  # after the answer: only an error, then a close
                await self._add_event(event)
        except websockets.ConnectionClosed:
            pass
        finally:
            await self._closed_by_signalling()

    async def _closed_by_signalling(self) -> None:
        ws = self._ws
        await self._mark_closed(ws.close_code if ws else None,
                                (ws.close_reason or "") if ws else "")

    async def _read_events(self) -> None:
        assert self._peer is not None
        while True:
            message = await self._peer.messages.get()
            if isinstance(message, str):
                await self._add_event(json.loads(message))

    async def _read_audio(self) -> None:
        assert self._peer is not None and self._peer.incoming is not None
        while True:
            try:
                frame = await next_audio(self._peer.incoming, timeout_s=3600)
            except MediaStreamError:
                return
            now = time.monotonic_ns()
            samples, channels, rate = frame_samples(frame)
            mono = downmix(samples, channels)
            if rate != RTC_RATE:
                continue  # the service only sends Opus at 48 kHz
            self._on_audio(self._to_session.process(mono), now)
            await self._notify()

    def _on_audio(self, samples: Int16Array, now: int) -> None:
        if not samples.size or int(np.abs(samples.astype(np.int32)).max()) <= SILENT_PEAK:
            return  # the service's idle silence between replies
        self._add_audio(samples, now)

    # --- sending ------------------------------------------------------------------------

    async def stream(self, samples: Int16Array, chunk_ms: int = 20, speed: float = 1.0) -> None:
        """Queue audio for the media clock, at most AHEAD_FRAMES ahead of it."""
        if speed != 1.0:
            raise ValueError("WebRTC audio runs at real time: speed must be 1.0")
        chunk = self.sample_rate * chunk_ms // 1000
        for i in range(0, len(samples), chunk):
            while self._mic.frames_queued >= AHEAD_FRAMES and not self.closed:
                self._mic.taken.clear()
                try:
                    async with asyncio.timeout(1.0):
                        await self._mic.taken.wait()
                except TimeoutError:
                    continue  # not connected (yet); re-check closed
            if self.closed:
                return
            self._mic.push(samples[i: i + chunk])

    async def stream_silence(self, seconds: float, chunk_ms: int = 20) -> None:
        await self.stream(np.zeros(int(seconds * self.sample_rate), np.int16), chunk_ms)

    async def send_json(self, data: dict[str, Any]) -> None:
        assert self._peer is not None
        await self._peer.send_text(json.dumps(data))
