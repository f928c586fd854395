"""A caller on speakerphone: the microphone hears the assistant's reply back at -10 dB,
100-200 ms after it was played. The echo must not interrupt the reply (or pause it),
and the caller's real words over it still must, quickly."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from clients.audiofile import load_audio
from clients.ws_client import VoiceClient
from latency_tests.llm_server import LLMServer
from tests.e2e.conftest import RunningService

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

DATA = Path(__file__).parents[1] / "data"
TURN_TAKING = Path(__file__).parents[2] / "latency_tests" / "corpus" / "turn_taking"
# one short sentence: the claim is about the onset and the tail of 20 replies' echo, not
# about long replies (a comma keeps one pause, and so one more onset, inside it)
REPLY = "Monday will be sunny, Tuesday brings rain."
LONG_REPLY = ("Here is the forecast for the whole week. Monday will be sunny and warm. "
              "Tuesday brings clouds in the morning and some rain in the afternoon.")
RATE = 16000
CHUNK = RATE // 50


class SpeakerphoneCaller:
    """Sends, every 20 ms in real time, its own speech (if any) plus the echo of the
    reply audio it received, as a listener playing on arrival heard it `delay_ms`
    before, `gain_db` down."""

    def __init__(self, client: VoiceClient, delay_ms: int, gain_db: float = -10.0) -> None:
        self.client = client
        self.delay_ns = delay_ms * 1_000_000
        self.gain = 10 ** (gain_db / 20)
        self._due = 0.0  # when the next chunk leaves: one steady real-time stream

    def _echo(self, end_ns: int) -> np.ndarray:
        out = np.zeros(CHUNK)
        start_ns = end_ns - CHUNK * 62_500
        for chunk in self.client.record.audio:
            first = (start_ns - chunk.play_ns) * RATE // 1_000_000_000
            if first >= len(chunk.samples) or first + CHUNK <= 0:
                continue
            lo, hi = max(0, first), min(len(chunk.samples), first + CHUNK)
            out[lo - first: hi - first] += chunk.samples[lo:hi]
        return out * self.gain

    async def send(self, seconds: float, speech: np.ndarray | None = None) -> None:
        total = int(seconds * RATE) if speech is None else len(speech)
        self._due = self._due or time.monotonic()
        for i in range(0, total, CHUNK):
            self._due += CHUNK / RATE
            await asyncio.sleep(max(0.0, self._due - time.monotonic()))
            if self.client.closed:
                return
            mine = np.zeros(CHUNK)
            if speech is not None:
                part = speech[i: i + CHUNK]
                mine[: len(part)] = part
            # the microphone's own clock: the echo is locked to the samples it sends
            echo = self._echo(int(self._due * 1e9) - self.delay_ns)
            await self.client.send_audio(np.clip(mine + echo, -32768, 32767).astype(np.int16))

    async def until(self, kind: str, count: int, timeout: float = 40.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.client.events_of(kind)) < count:
                await self.send(0.1)


async def test_the_replys_own_echo_interrupts_nothing_over_20_replies(
        service: RunningService, fresh_llm: LLMServer) -> None:
    """Five speakerphone callers at once, each with its own echo delay, four turns each."""
    fresh_llm.behaviour.reply = REPLY
    question = load_audio(str(DATA / "weather.wav"), RATE)

    async def call(delay_ms: int) -> int:
        async with VoiceClient(service.url) as client:
            caller = SpeakerphoneCaller(client, delay_ms)
            for turn in range(1, 5):
                await caller.send(0.3)
                await caller.send(0, question)
                await caller.until("response.done", turn)
        assert client.events_of("response.interrupted") == [], delay_ms
        # nothing the echo said reached the model: one answered turn per question
        # (a rare echo onset that slips through is judged noise and the reply
        # resumes: not a barge-in)
        heard = [e["text"] for e in client.events_of("transcript.final")]
        assert len(heard) == 4 and all("weather" in h.lower() for h in heard), (delay_ms, heard)
        return len(client.events_of("response.done"))

    replies = await asyncio.gather(*(call(delay_ms) for delay_ms in (100, 150, 200, 125, 175)))
    assert sum(replies) == 20, replies


async def test_words_over_the_echo_still_interrupt_within_150_ms(
        service: RunningService, fresh_llm: LLMServer) -> None:
    fresh_llm.behaviour.reply = LONG_REPLY
    question = load_audio(str(DATA / "weather.wav"), RATE)
    stop = load_audio(str(TURN_TAKING / "i_stop.wav"), RATE)
    voiced = int(np.flatnonzero(np.abs(stop.astype(np.int32)) > 500)[0])
    reactions = []
    for delay_ms in (100, 200):
        async with VoiceClient(service.url) as client:
            caller = SpeakerphoneCaller(client, delay_ms)
            await caller.send(0.3)
            await caller.send(0, question)
            await caller.until("turn.latency", 1)
            await caller.send(1.5)  # well into the reply, past the continuation window
            sent = time.monotonic_ns() + voiced * 62_500
            await caller.send(0, stop)
            await caller.until("response.interrupted", 1)
            (stopped,) = client.events_of("response.interrupted")
            old = [c.arrival_ns for c in client.record.audio
                   if c.arrival_ns <= stopped["_received_ns"] and np.abs(c.samples).max() > 300]
            reactions.append((max(old) - sent) / 1e6)
            assert stopped["reason"] == "barge_in"
    assert max(reactions) <= 150, reactions
