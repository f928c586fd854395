"""A telephony provider's side of a media stream, in Python: the `twilio` and `telnyx`
call clients of `voice call`, `voice latency run` and the tests (clients/base.py).

Neither provider can be reached from here, so this plays the provider, speaking its
documented wire format (written from the documents below, independently of the
service's parser in wire/media_streams.py): it opens the WebSocket as the provider
does (Twilio: `/twilio`, or `/twilio/KEY`, with `X-Twilio-Signature` when it knows the
auth token; Telnyx: `/telnyx` with `x-telnyx-streaming-auth-token`), sends
`connected`, `start`, then the caller's audio as 20 ms base64 μ-law `media` frames
at real-time pace, `dtmf` and finally `stop`. The reply audio it receives goes into a
playback buffer that plays at real time, as the provider's does (`playout_delay_ms`
after audio arrives at an empty buffer): a `mark` is echoed
when the audio before it has played, a `clear` drops what has not played (and echoes
the marks waiting), so what it records is what the caller heard, stamped with when the
caller heard it. Every message the
service sends is checked against the provider's documented shape (`violations`).
With `events` (the custom parameter `voice_events=json`, our extension) it also gets
the session's JSON events, so it offers what the WebSocket client offers.

- https://www.twilio.com/docs/voice/media-streams/websocket-messages
- https://developers.telnyx.com/api-reference/websockets/stream-call-media-over-websocket
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import secrets
import time
from collections import deque
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import websockets
from websockets.asyncio.client import ClientConnection

from clients.recording import PlayedChunk, RecordingClient
from voice.audio import Int16Array, StreamResampler
from wire.media_streams import twilio_signature
from wire.rtp import g711

WIRE_RATE = 8000
FRAME = 160  # samples in a 20 ms frame
# what each provider may send us, by event: the keys of the message and of its object
TWILIO_SHAPES = {"media": ({"event", "streamSid", "media"}, {"payload"}),
                 "mark": ({"event", "streamSid", "mark"}, {"name"}),
                 "clear": ({"event", "streamSid"}, set())}
TELNYX_SHAPES = {"media": ({"event", "media"}, {"payload"}),
                 "mark": ({"event", "mark"}, {"name"}),
                 "clear": ({"event"}, set())}


class MediaStreamCaller(RecordingClient):
    provider = "twilio"

    def __init__(self, url: str, sample_rate: int = WIRE_RATE, pipeline: str | None = None,
                 *, events: bool = True, auth_token: str = "",
                 playout_delay_ms: int = 0) -> None:
        super().__init__(sample_rate)
        # the provider's buffer: audio arriving when nothing plays starts this much later
        self.playout_delay_ns = playout_delay_ms * 1_000_000
        parts = urlsplit(url if "://" in url else f"http://{url}")
        scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
        self.base = f"{scheme}://{parts.netloc}"
        self.events = events
        self.auth_token = auth_token  # Twilio's account auth token: sign the handshake
        self.stream_id = ("MZ" + secrets.token_hex(16)) if self.provider == "twilio" \
            else secrets.token_hex(16)
        self.call_id = "CA" + secrets.token_hex(16)
        self.session: dict[str, Any] = {}
        self.received: list[dict[str, Any]] = []  # every message the service sent
        self.violations: list[str] = []
        self.marks_echoed: list[str] = []
        self.clears: list[int] = []  # when each `clear` arrived
        self._ws: ClientConnection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._sequence = 0
        self._chunk = 0
        self._sent_samples = 0
        self._pending_marks: deque[tuple[int, str]] = deque()  # (due ns, name)
        self._mark_wakeup = asyncio.Event()
        self._up = StreamResampler(sample_rate, WIRE_RATE)
        self._down = StreamResampler(WIRE_RATE, sample_rate)

    # -- the provider's messages ----------------------------------------------------------
    def _envelope(self, event: str, **body: Any) -> dict[str, Any]:
        self._sequence += 1
        if self.provider == "twilio":
            return {"event": event, "sequenceNumber": str(self._sequence), **body,
                    "streamSid": self.stream_id}
        return {"event": event, "sequence_number": str(self._sequence), **body,
                "stream_id": self.stream_id}

    def _connected(self) -> dict[str, Any]:
        if self.provider == "twilio":
            return {"event": "connected", "protocol": "Call", "version": "1.0.0"}
        return {"event": "connected", "version": "1.0.0"}

    def _start(self) -> dict[str, Any]:
        params = {"voice_events": "json"} if self.events else {}
        if self.provider == "twilio":
            return self._envelope("start", start={
                "accountSid": "AC" + "0" * 32, "streamSid": self.stream_id,
                "callSid": self.call_id, "tracks": ["inbound"], "customParameters": params,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                "channels": 1}})
        return self._envelope("start", start={
            "user_id": secrets.token_hex(8), "call_control_id": "v3:" + self.call_id,
            "call_session_id": secrets.token_hex(8), "from": "+13125550100",
            "to": "+13125550199", "custom_parameters": params,
            "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}})

    def _url_and_headers(self) -> tuple[str, dict[str, str]]:
        path = f"/{self.provider}"
        headers: dict[str, str] = {}
        if self.provider == "twilio" and self.auth_token:
            signed = self.base.replace("ws://", "wss://", 1) + path
            headers["X-Twilio-Signature"] = twilio_signature(self.auth_token, signed)
        elif self.provider == "twilio" and self.token:
            path += f"/{self.token}"
        elif self.token:
            headers["x-telnyx-streaming-auth-token"] = self.token
        return self.base + path, headers

    # -- connecting ---------------------------------------------------------------------
    async def connect(self, timeout: float = 10.0) -> None:
        url, headers = self._url_and_headers()
        self._ws = await websockets.connect(url, max_size=None, compression=None,
                                            open_timeout=timeout, additional_headers=headers)
        self._tasks = [asyncio.create_task(self._receive(), name=f"{self.provider}-receiver"),
                       asyncio.create_task(self._echo_marks(), name=f"{self.provider}-marks")]
        await self.send_json(self._connected())
        await self.send_json(self._start())
        if self.events:
            self.session = await self.wait_for("session.created", timeout=timeout)

    async def close(self) -> None:
        if self._ws is not None and not self.closed:
            stop = {"accountSid": "AC" + "0" * 32, "callSid": self.call_id} \
                if self.provider == "twilio" else {"call_control_id": "v3:" + self.call_id}
            try:
                await self.send_json(self._envelope("stop", stop=stop))
            except websockets.ConnectionClosed:
                pass
            await self._ws.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def send_json(self, data: dict[str, Any]) -> None:
        await self.send_raw(json.dumps(data))

    async def send_raw(self, message: str | bytes) -> None:
        assert self._ws is not None
        await self._ws.send(message)

    async def press(self, digit: str) -> None:
        track = {"track": "inbound_track"} if self.provider == "twilio" else {}
        await self.send_json(self._envelope("dtmf", dtmf={**track, "digit": digit}))

    # -- the caller's audio -------------------------------------------------------------
    async def stream(self, samples: Int16Array, chunk_ms: int = 20, speed: float = 1.0) -> None:
        await self.paced(samples, self.sample_rate * chunk_ms // 1000, speed, self._send_media,
                         (websockets.ConnectionClosedOK,))

    async def stream_silence(self, seconds: float, chunk_ms: int = 20) -> None:
        await self.stream(np.zeros(int(seconds * self.sample_rate), np.int16), chunk_ms)

    async def _send_media(self, samples: Int16Array) -> None:
        wire = self._up.process(samples)
        for i in range(0, len(wire), FRAME):
            self._chunk += 1
            payload = base64.b64encode(g711.encode(wire[i: i + FRAME], g711.PCMU)).decode()
            media = {"track": "inbound", "chunk": str(self._chunk),
                     "timestamp": str((self._chunk - 1) * 20), "payload": payload}
            await self.send_json(self._envelope("media", media=media))
        self._sent_samples += len(samples)
        self.record.sent.append((self._sent_samples, time.monotonic_ns()))

    # -- what the service sends -----------------------------------------------------------
    async def _receive(self) -> None:
        assert self._ws is not None
        try:
            async for message in self._ws:
                self._handle(message, time.monotonic_ns())
        except websockets.ConnectionClosed:
            pass
        finally:
            await self._mark_closed(self._ws.close_code, self._ws.close_reason or "")

    def _handle(self, message: str | bytes, now: int) -> None:
        try:
            data = json.loads(message)
            event = data["event"]
        except (ValueError, TypeError, KeyError):
            self.violations.append(f"not a JSON message with an event: {message!r:.80}")
            return
        if event == "voice.event" and self.events:
            self._add_event_now(data["voice"])
            return
        self.received.append(data)
        if not self._check_shape(data):
            return
        if event == "media":
            try:
                payload = base64.b64decode(data["media"]["payload"], validate=True)
            except (binascii.Error, KeyError, TypeError, ValueError):
                return
            # the caller gets it when the buffer plays it (after the delay if it was idle):
            # that is its arrival, as far as the caller's ear goes
            idle = self._play_end_ns < now
            plays = now + self.playout_delay_ns if idle else self._play_end_ns
            self._add_audio(self._down.process(g711.decode(payload, g711.PCMU)), plays)
            self._notify_now()
        elif event == "mark":
            self._pending_marks.append((max(now, self._play_end_ns), data["mark"]["name"]))
            self._mark_wakeup.set()
        elif event == "clear":
            self._clear(now)

    def _check_shape(self, data: dict[str, Any]) -> bool:
        shapes = TWILIO_SHAPES if self.provider == "twilio" else TELNYX_SHAPES
        event = data["event"]
        if event not in shapes:
            self.violations.append(f"unknown event {event!r}")
            return False
        keys, inner = shapes[event]
        body = data.get(event, {})
        if set(data) != keys or (inner and (not isinstance(body, dict) or set(body) != inner)):
            self.violations.append(f"{event} message of the wrong shape: {data!r:.120}")
            return False
        if self.provider == "twilio" and data["streamSid"] != self.stream_id:
            self.violations.append(f"{event} for another stream {data['streamSid']!r}")
            return False
        return True

    def _clear(self, now: int) -> None:
        """Drop what has not played yet; the marks waiting are echoed at once."""
        self.clears.append(now)
        kept: list[PlayedChunk] = []
        for chunk in self.record.audio:
            if chunk.play_ns >= now:
                continue
            played = (now - chunk.play_ns) * self.sample_rate // 1_000_000_000
            kept.append(chunk if played >= len(chunk.samples) else
                        PlayedChunk(chunk.arrival_ns, chunk.play_ns, chunk.samples[:played]))
        self.record.audio[:] = kept
        self._play_end_ns = min(self._play_end_ns, now)
        self._pending_marks = deque((now, name) for _, name in self._pending_marks)
        self._mark_wakeup.set()
        self._notify_now()

    async def _echo_marks(self) -> None:
        while True:
            if not self._pending_marks:
                self._mark_wakeup.clear()
                await self._mark_wakeup.wait()
                continue
            due, name = self._pending_marks[0]
            wait = (due - time.monotonic_ns()) / 1e9
            if wait > 0:
                self._mark_wakeup.clear()
                try:
                    async with asyncio.timeout(wait):
                        await self._mark_wakeup.wait()  # a clear may make it due now
                except TimeoutError:
                    pass
                continue
            self._pending_marks.popleft()
            self.marks_echoed.append(name)
            try:
                await self.send_json(self._envelope("mark", mark={"name": name}))
            except websockets.ConnectionClosed:
                return


class TwilioCaller(MediaStreamCaller):
    provider = "twilio"


class TelnyxCaller(MediaStreamCaller):
    provider = "telnyx"
