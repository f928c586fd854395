"""Saying the corpus to a service through a transport's real client, one clip per
session, and turning what the client recorded into `TurnResult`s.

Every clip is streamed at real-time pace from the session's first sample (the clips
carry their own lead-in), followed by silence as a live microphone would send:
- a speech clip: until its reply is heard (a `turn.latency` after the speech, and
  audible audio), then `SETTLE_S` more, in which a second, unwanted turn would show;
- a no-turn clip: `NO_TURN_LISTEN_S` of silence, in which nothing may answer;
- an interruption: a question first, then, `OVER_REPLY_AFTER_S` into its reply, the
  interruption, until the reply stops (`response.interrupted`) or `BARGE_WAIT_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import numpy as np

from clients.audiofile import load_audio
from clients.base import CallClient, make_client
from clients.recording import AUDIBLE_DBFS, RecordingClient
from latency_tests.suite.corpus import Utterance
from latency_tests.suite.metrics import Heard, Trial
from latency_tests.suite.results import TurnResult
from voice.audio import Int16Array, rms_dbfs

REPLY_TIMEOUT_S = 12.0
SETTLE_S = 0.6
USAGE_WAIT_S = 15.0  # after the reply is heard: until it has ended and said its usage
NO_TURN_LISTEN_S = 1.5
OVER_REPLY_AFTER_S = 0.8
BARGE_WAIT_S = 3.0
STEP_S = 0.1  # silence is sent in steps of this, checking the record in between
FRAME_MS = 20


class Mic:
    """A connected client's microphone: counts the samples it sent (the session-rate
    index of every sample is then known, whatever the transport buffers). `rec` is
    the same client seen as what it recorded. Between utterances it sends silence, or
    the background noise of the last clip said, looped (`bed`)."""

    def __init__(self, client: CallClient) -> None:
        self.client = client
        self.rec = recorder(client)
        self.sent = 0
        self.bed: Int16Array | None = None
        self._bed_at = 0

    def background(self, clip: Int16Array, utt: Utterance) -> None:
        """What follows `clip` until the next one: its background, or silence."""
        bed_start = None if utt.bed_start_s is None else round(utt.bed_start_s * utt.rate)
        self.bed = clip[bed_start:] if bed_start is not None and bed_start < len(clip) else None
        self._bed_at = 0

    async def say(self, samples: Int16Array) -> int:
        """Streams whole 20 ms frames (a SIP phone pads the last one); returns the index
        of the first sample said."""
        frame = self.client.sample_rate * FRAME_MS // 1000
        padded = np.concatenate([samples, np.zeros(-len(samples) % frame, np.int16)])
        start = self.sent
        await self.client.stream(padded)
        self.sent += len(padded)
        return start

    async def silence(self, seconds: float) -> None:
        frames = max(1, round(seconds * 1000 / FRAME_MS))
        n = frames * self.client.sample_rate * FRAME_MS // 1000
        if self.bed is None:
            await self.say(np.zeros(n, np.int16))
            return
        looped = np.resize(np.roll(self.bed, -self._bed_at), n)
        self._bed_at = (self._bed_at + n) % len(self.bed)
        await self.say(looped)

    async def silence_until(self, done: Callable[[], bool], timeout_s: float) -> bool:
        """Silence until `done()` holds (True) or `timeout_s` passed (False)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while not done():
                    if self.client.closed:
                        return False
                    await self.silence(STEP_S)
                return True
        return False


def recorder(client: CallClient) -> RecordingClient:
    if not isinstance(client, RecordingClient):
        raise TypeError(f"{type(client).__name__} keeps no record")
    return client


def heard_audio(client: RecordingClient, since_ns: int = 0) -> list[Heard]:
    """The reply audio as a listener playing on arrival heard it, chunk by chunk."""
    window = client.sample_rate // 100
    heard: list[Heard] = []
    for chunk in client.record.audio:
        if chunk.arrival_ns < since_ns:
            continue
        audible = None
        for i in range(0, len(chunk.samples), window):
            part = chunk.samples[i: i + window]
            if part.size and rms_dbfs(part) > AUDIBLE_DBFS:
                audible = chunk.play_ns + i * 1_000_000_000 // client.sample_rate
                break
        end = chunk.play_ns + len(chunk.samples) * 1_000_000_000 // client.sample_rate
        heard.append(Heard(chunk.arrival_ns, audible, chunk.play_ns, end))
    return heard


def replied_after(client: RecordingClient, sent_ns: int | None) -> bool:
    """A reply to speech that ended at `sent_ns` has been heard (or the turn failed)."""
    if sent_ns is None:
        return False
    latency = any(e["type"] == "turn.latency" and e["_received_ns"] >= sent_ns
                  for e in client.record.events)
    failed = any(e["type"] == "error" and e["_received_ns"] >= sent_ns
                 for e in client.record.events)
    audible = any(h.audible_ns is not None for h in heard_audio(client, sent_ns))
    return failed or (latency and audible)


def reply_ended(client: RecordingClient) -> bool:
    """No reply is under way: every turn answered has had its `turn.usage`, and the
    listener has heard the last audible reply audio to its end (so a session lasts as
    long as its conversation, whichever pipeline made the reply, however fast)."""
    answered = {e.get("turn_id") for e in client.record.events
                if e["type"] in ("response.text.delta", "turn.latency")}
    reported = {e.get("turn_id") for e in client.record.events if e["type"] == "turn.usage"}
    if not answered <= reported:
        return False
    for chunk in reversed(client.record.audio):
        if chunk.samples.size and rms_dbfs(chunk.samples) > AUDIBLE_DBFS:
            end = chunk.play_ns + len(chunk.samples) * 1_000_000_000 // client.sample_rate
            return end <= time.monotonic_ns()
    return True


async def say_clip(mic: Mic, utt: Utterance) -> Trial:
    client = mic.rec
    audio = load_audio(utt.path, client.sample_rate)
    start = await mic.say(audio)
    mic.background(audio, utt)
    last_voiced = start + utt.last_voiced_sample
    if utt.kind == "no_turn":
        await mic.silence(NO_TURN_LISTEN_S)
    else:
        await mic.silence_until(lambda: replied_after(client, client.sent_time_ns(last_voiced)),
                                REPLY_TIMEOUT_S)
        await mic.silence(SETTLE_S)
        # the whole reply, for the session's usage and cost (it ends with turn.usage)
        await mic.silence_until(lambda: reply_ended(client), USAGE_WAIT_S)
    return Trial(utt.kind, list(client.record.events), heard_audio(client),
                 speech_end_sent_ns=client.sent_time_ns(last_voiced)
                 if utt.kind != "no_turn" else None)


async def interrupt(mic: Mic, utt: Utterance, question: Utterance) -> Trial:
    """The question, then the interruption said over its reply."""
    client = mic.rec
    q_start = await mic.say(load_audio(question.path, client.sample_rate))
    q_end = q_start + question.last_voiced_sample
    await mic.silence_until(lambda: replied_after(client, client.sent_time_ns(q_end)),
                            REPLY_TIMEOUT_S)
    await mic.silence(OVER_REPLY_AFTER_S)
    i_start = await mic.say(load_audio(utt.path, client.sample_rate))
    stops_before = len(client.events_of("response.interrupted"))
    await mic.silence_until(
        lambda: len(client.events_of("response.interrupted")) > stops_before, BARGE_WAIT_S)
    await mic.silence(STEP_S)
    return Trial(utt.kind, list(client.record.events), heard_audio(client),
                 speech_end_sent_ns=client.sent_time_ns(q_end),
                 barge_start_sent_ns=client.sent_time_ns(i_start + utt.start_sample))


async def run_clip(url: str, transport: str, pipeline: str, utt: Utterance,
                   question: Utterance, **where: int) -> TurnResult:
    """One clip in its own session."""
    client = make_client(transport, url, utt.rate, pipeline)
    try:
        await client.connect()
    except Exception as exc:  # a client that cannot connect is this trial's result
        return TurnResult.failed(utt, transport, pipeline, f"connect: {exc!r}", **where)
    try:
        mic = Mic(client)
        if utt.kind == "interruption":
            trial = await interrupt(mic, utt, question)
        else:
            trial = await say_clip(mic, utt)
    finally:
        await client.close()
    return TurnResult.from_trial(utt, trial, transport, pipeline, **where)
