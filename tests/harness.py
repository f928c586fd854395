"""A pipeline between a scripted audio source and a recording sink, without sockets (in
the spirit of Pipecat's `run_test`).

`PipelineHarness` runs a `CascadePipeline` with a `RecordingIO` (a real `Playout`
whose sent audio is recorded, the events the pipeline emits, hang-ups) and scripted
models: `ScriptedSTT` knows the words of each clip and recognises the clips in the
audio it is asked to transcribe, `ScriptedLLM` streams a fixed reply and records every
prompt, `ToneTTS` speaks
each sentence as a tone of a length proportional to its words. The caller's audio is
real speech (clips from the repository's corpora), paced in real time in 20 ms
chunks, so the VAD, the turn detector and the floor run exactly as in a call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from clients.audiofile import load_audio
from pipelines.cascade.pipeline import CascadePipeline
from pipelines.providers.llm import Message
from pipelines.providers.models import CascadeModels
from pipelines.providers.stt import Transcript
from pipelines.tools import ToolBox
from voice.audio import PIPELINE_RATE, Int16Array
from voice.clock import MONOTONIC
from voice.events import Event
from voice.playout import Playout
from voice.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
TURN_TAKING = ROOT / "latency_tests" / "corpus" / "turn_taking"
DATA = ROOT / "tests" / "data"
CHUNK_MS = 20
E = TypeVar("E", bound=Event)


def clip(path: Path, rate: int = 16000) -> Int16Array:
    return load_audio(path, rate)


def silence(ms: int, rate: int = 16000) -> Int16Array:
    return np.zeros(rate * ms // 1000, dtype=np.int16)


class ScriptedSTT:
    """Whisper's stand-in: knows the words of each clip the script plays, and finds the
    clips in the audio it is given (by their samples: at 16 kHz the pipeline passes the
    caller's audio through unchanged). A continuation holds two clips: both texts."""

    name = "scripted-stt"

    def __init__(self, clips: dict[str, Int16Array]) -> None:
        self._marks = {text: _marks(audio) for text, audio in clips.items()}
        self.heard_seconds: list[float] = []
        self.heard_texts: list[str] = []

    async def transcribe(self, audio: Int16Array) -> Transcript:
        seconds = len(audio) / PIPELINE_RATE
        self.heard_seconds.append(seconds)
        found = sorted((position, text) for text, marks in self._marks.items()
                       if (position := _find_any(audio, marks)) is not None)
        text = " ".join(text for _, text in found)
        self.heard_texts.append(text)
        await asyncio.sleep(0.01)
        return Transcript(text=text, no_speech_prob=0.0, avg_logprob=-0.1,
                          audio_ms=seconds * 1000)


def _marks(audio: Int16Array, count: int = 6, size: int = 64) -> list[Int16Array]:
    """Short windows from the loud part of a clip, to recognise it (or part of it) by;
    none from its last fifth, which may trail past the end of speech the VAD finds."""
    loud = np.flatnonzero(np.abs(audio.astype(np.int32)) > 1000)
    first, last = int(loud[0]), int(loud[-1])
    starts = np.linspace(first, first + (last - first) * 0.8 - size, count).astype(int)
    return [audio[i: i + size] for i in starts]


def _find_any(audio: Int16Array, marks: list[Int16Array]) -> int | None:
    for mark in marks:
        hits = np.flatnonzero(audio == mark[0])
        for hit in hits:
            if np.array_equal(audio[hit: hit + len(mark)], mark):
                return int(hit)
    return None


@dataclass
class ScriptedLLM:
    reply: str
    prompts: list[list[Message]] = field(default_factory=list)
    name: str = "scripted-llm"

    async def stream(self, messages: list[Message]) -> AsyncIterator[str]:
        self.prompts.append([dict(m) for m in messages])
        for word in self.reply.split(" "):
            await asyncio.sleep(0)
            yield word + " "


@dataclass
class ToneTTS:
    """A 300 Hz tone, 150 ms a word: audible, and long enough to talk over."""

    sample_rate: int = 16000
    name: str = "tone-tts"

    async def synthesize(self, text: str) -> Int16Array:
        n = self.sample_rate * 150 * max(1, len(text.split())) // 1000
        t = np.arange(n) / self.sample_rate
        return (8000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16)


class RecordingIO:
    """The session, as the pipeline sees it: events, a real playout, hang-ups."""

    def __init__(self, sample_rate: int = 16000) -> None:
        self.sample_rate = sample_rate
        self.events: list[Event] = []
        self.sent = bytearray()
        self.hangups: list[str] = []
        self.playout = Playout(self._send, sample_rate, MONOTONIC, lead_ms=60)

    async def _send(self, chunk: bytes) -> None:
        self.sent += chunk

    def emit(self, event: Event) -> None:
        self.events.append(event)

    async def hangup(self, reason: str) -> None:
        self.hangups.append(reason)

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]


class PipelineHarness:
    def __init__(self, stt: ScriptedSTT, llm: ScriptedLLM, tools: ToolBox | None = None,
                 **settings: Any) -> None:
        self.stt, self.llm = stt, llm
        self.settings = replace(Settings(), **settings)
        self.io = RecordingIO()
        models = CascadeModels(stt=stt, llm=llm, tts=ToneTTS(), tools=tools or ToolBox([]))
        self.pipeline = CascadePipeline(models, self.settings, self.io, MONOTONIC)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[PipelineHarness]:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(self.io.playout.run(), name="harness-playout"),
                     tg.create_task(self.pipeline.run(), name="harness-pipeline")]
            try:
                yield self
            finally:
                for task in tasks:
                    task.cancel()

    async def say(self, *parts: Int16Array) -> None:
        """Send the caller's audio in real time, 20 ms at a time."""
        audio = np.concatenate(parts)
        step = self.io.sample_rate * CHUNK_MS // 1000
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i, offset in enumerate(range(0, len(audio), step)):
            self.pipeline.push_audio(audio[offset: offset + step], MONOTONIC.now_ns())
            await asyncio.sleep(max(0.0, start + (i + 1) * CHUNK_MS / 1000 - loop.time()))

    async def wait_for(self, kind: type[E], count: int = 1, timeout: float = 10.0) -> list[E]:
        """Keep sending silence (as a client does) until `count` events of `kind`."""
        async with asyncio.timeout(timeout):
            while len(self.io.of(kind)) < count:
                await self.say(silence(100))
        return self.io.of(kind)

    async def until_playing(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not self.io.playout.speaking:
                await self.say(silence(20))
