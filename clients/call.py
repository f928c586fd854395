"""`voice call`: stream an audio file to the service like a caller would.

Prints what the service heard, what it answered and each turn's latency, and saves
the reply audio to a WAV file.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clients.audiofile import load_audio, save_wav
from clients.base import CallClient, make_client
from clients.recording import RecordingClient

SETTLE_S = 2.0  # a call ends this long after the last activity once the file is sent


@dataclass
class CallResult:
    transcripts: list[str] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)
    latencies: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)


def _print_event(event: dict[str, Any]) -> None:
    kind = event["type"]
    if kind == "transcript.final":
        print(f"you:       {event['text']}", flush=True)
    elif kind == "response.done":
        print(f"assistant: {event['text']}", flush=True)
    elif kind == "response.interrupted":
        print(f"           (interrupted after {event['played_ms']} ms)", flush=True)
    elif kind == "turn.latency":
        stages = ", ".join(f"{k.removesuffix('_ms')} {v:.0f}" for k, v in event["stages"].items())
        print(f"latency:   {stages} ms", flush=True)
    elif kind == "error":
        print(f"error:     {event['code']}: {event['message']}", flush=True)


def _busy(client: CallClient) -> bool:
    started = len(client.events_of("speech.started"))
    stopped = len(client.events_of("speech.stopped"))
    finals = len(client.events_of("transcript.final"))
    ended = len(client.events_of("response.done")) + len(client.events_of("response.interrupted"))
    return started > stopped or finals > ended or client.playback_end_ns() > time.monotonic_ns()


async def call(url: str, path: Path, out: Path | None, sample_rate: int = 16000,
               pipeline: str | None = None, max_wait_s: float = 60.0,
               transport: str = "ws", token: str | None = None) -> CallResult:
    audio = load_audio(path, sample_rate)
    client = make_client(transport, url, sample_rate, pipeline)
    if isinstance(client, RecordingClient):
        client.token = token
    await client.connect()
    try:
        printed = 0
        streaming = asyncio.create_task(client.stream(audio), name="call-stream")
        deadline = time.monotonic() + len(audio) / sample_rate + max_wait_s
        idle_since = None
        while time.monotonic() < deadline and not client.closed:
            for event in client.events_of("*")[printed:]:
                _print_event(event)
            printed += len(client.events_of("*")[printed:])
            if streaming.done():
                await client.stream_silence(0.1)
                busy = _busy(client)
                idle_since = None if busy else (idle_since or time.monotonic())
                if idle_since is not None and time.monotonic() - idle_since > SETTLE_S:
                    break
            else:
                await asyncio.sleep(0.05)
        streaming.cancel()
        await asyncio.gather(streaming, return_exceptions=True)
    finally:
        await client.close()
    events = client.events_of
    if out is not None:
        save_wav(out, client.reply_audio(), sample_rate)
        print(f"reply audio saved to {out}", flush=True)
    return CallResult(
        transcripts=[e["text"] for e in events("transcript.final")],
        replies=[e["text"] for e in events("response.done")],
        latencies=events("turn.latency"), errors=events("error"))
