"""`voice bench --turn-taking`: what callers feel about turn-taking, per category of
the turn-taking corpus (latency_tests/corpus/turn_taking):

- ordinary questions: client-measured voice-to-voice (median, p95);
- paused utterances: premature replies (reply audio heard before the caller had
  finished) and lost words (the answered turn's audio, `transcript.final.audio_ms`,
  does not cover all the speech of the utterance, or the utterance was answered more
  than once). Recognition errors are not turn-taking losses; `asr_recall` reports
  them apart (words of the text found in the answered transcript);
- backchannels said over a reply: false barge-ins (the reply was interrupted);
- interruptions said over a reply: barge-in reaction time (first voiced sample of
  the interruption sent -> last audio of the old reply received).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clients.audiofile import load_audio
from clients.base import CallClient, make_client
from clients.recording import AUDIBLE_DBFS, ClientRecord, RecordingClient
from voice.audio import rms_dbfs

CORPUS = Path(__file__).parent / "corpus" / "turn_taking"
OVER_REPLY_AFTER_S = 0.8  # say the backchannel/interruption this far into the reply


@dataclass
class TurnTakingReport:
    v2v_ms: list[float] = field(default_factory=list)
    premature: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    paused_total: int = 0
    asr_recall: list[float] = field(default_factory=list)
    false_barge_ins: list[str] = field(default_factory=list)
    backchannel_total: int = 0
    reaction_ms: list[float] = field(default_factory=list)
    missed_interruptions: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        v2v = self.v2v_ms or [float("nan")]
        return {
            "v2v_median_ms": round(statistics.median(v2v), 1),
            "v2v_p95_ms": round(float(np.percentile(v2v, 95)), 1),
            "premature": f"{len(self.premature)}/{self.paused_total}",
            "lost_words": f"{len(self.lost)}/{self.paused_total}",
            "asr_recall_paused": round(statistics.mean(self.asr_recall or [0.0]), 2),
            "false_barge_ins": f"{len(self.false_barge_ins)}/{self.backchannel_total}",
            "barge_in_reaction_median_ms": round(statistics.median(
                self.reaction_ms or [float("nan")]), 1),
            "missed_interruptions": len(self.missed_interruptions),
            "premature_clips": self.premature, "lost_clips": self.lost,
            "false_barge_in_clips": self.false_barge_ins,
        }


_DIGITS = "zero one two three four five six seven eight nine".split()


def words(text: str) -> list[str]:
    """Lower-case words; digits spelled out one by one ("456" -> four five six)."""
    text = re.sub(r"\d", lambda m: f" {_DIGITS[int(m.group())]} ", text.lower())
    return re.sub(r"[^a-z' ]+", " ", text).split()


def recall(expected: list[str], heard: str) -> float:
    got = set(words(heard))
    return sum(w in got for w in expected) / max(1, len(expected))


async def _session(url: str, rate: int, transport: str) -> CallClient:
    """A caller on `transport` (ws, sip: G.711 at 8 kHz, twilio, ...)."""
    client = make_client(transport, url, rate)
    await client.connect()
    return client


def _record(client: CallClient) -> ClientRecord:
    assert isinstance(client, RecordingClient)  # every call client keeps one
    return client.record


async def _until(client: CallClient, event_type: str, timeout: float) -> None:
    """Keep streaming silence (as a live microphone does) until an event arrives."""
    async with asyncio.timeout(timeout):
        while not client.events_of(event_type):
            await client.stream_silence(0.1)


async def measure_ordinary(url: str, clip: Path, rate: int, transport: str = "ws") -> float | None:
    audio = load_audio(clip, rate)
    client = await _session(url, rate, transport)
    try:
        await client.stream(audio)
        with contextlib.suppress(TimeoutError):  # no reply: counted as missing
            await _until(client, "response.done", 15)
    finally:
        await client.close()
    sent = client.sent_time_ns(len(audio) - 1)
    heard = client.first_audible_ns(sent) if sent is not None else None
    return None if heard is None or sent is None else (heard - sent) / 1e6


def speech_ms(entry: dict[str, Any]) -> float:
    """Milliseconds of speech in a clip, its pauses left out."""
    spoken = (entry["speech_end_s"] - entry["speech_start_s"]) * 1000
    return float(spoken - sum(entry["pauses_ms"]))


async def measure_paused(url: str, clip: Path, entry: dict[str, Any],
                         rate: int, transport: str = "ws") -> tuple[bool, bool, float]:
    """(premature, lost words, ASR recall) for one paused utterance."""
    audio = load_audio(clip, rate)
    client = await _session(url, rate, transport)
    try:
        await client.stream(audio)
        await client.stream_silence(2.0)
        with contextlib.suppress(TimeoutError):  # no reply at all: lost words
            await _until(client, "response.done", 15)
        await client.stream_silence(0.5)
    finally:
        await client.close()
    sent_end = client.sent_time_ns(len(audio) - 1) or 0
    first_heard = client.first_audible_ns(0)
    premature = first_heard is not None and first_heard < sent_end
    finals = client.events_of("transcript.final")
    answered: dict[str, Any] = finals[-1] if finals else {"text": "", "audio_ms": 0}
    covered = answered["audio_ms"] >= speech_ms(entry) - 150  # 150 ms: onset/offset slack
    lost = len(client.events_of("response.done")) != 1 or not covered
    return premature, lost, recall(words(entry["text"]), answered["text"])


async def measure_over_reply(url: str, question: Path, clip: Path,
                             rate: int, transport: str = "ws") -> tuple[bool, float | None]:
    """Say `clip` into a playing reply: (was the reply interrupted, reaction ms)."""
    client = await _session(url, rate, transport)
    try:
        await client.stream(load_audio(question, rate))
        await _until(client, "turn.latency", 15)
        await client.stream_silence(OVER_REPLY_AFTER_S)
        start = len(client.events_of("*"))
        over = load_audio(clip, rate)
        first_voiced = _record(client).sent[-1][0] if _record(client).sent else 0
        await client.stream(over)
        await client.stream_silence(2.5)
    finally:
        await client.close()
    interrupted = [e for e in client.events_of("*")[start:] if e["type"] == "response.interrupted"]
    if not interrupted:
        return False, None
    said = client.sent_time_ns(first_voiced + int(0.3 * rate))  # clips open with 0.3 s lead
    cut = interrupted[0]["_received_ns"]
    old_audio = [c.arrival_ns for c in _record(client).audio  # audible: RTP sends silence
                 if c.arrival_ns <= cut and rms_dbfs(c.samples) > AUDIBLE_DBFS]
    if said is None or not old_audio:
        return True, None
    return True, max(0.0, (max(old_audio) - said) / 1e6)


async def run_turn_taking(url: str, rate: int, repeat: int,
                          transport: str = "ws") -> TurnTakingReport:
    manifest: dict[str, Any] = json.loads((CORPUS / "utterances.json").read_text())
    report = TurnTakingReport()
    question = CORPUS / manifest["q_weather"]["file"]
    for name, entry in manifest.items():
        clip, category = CORPUS / entry["file"], entry["category"]
        detail = ""
        if category == "ordinary":
            heard = [await measure_ordinary(url, clip, rate, transport) for _ in range(repeat)]
            report.v2v_ms.extend(v2v for v2v in heard if v2v is not None)
            detail = "  v2v " + ", ".join("no reply" if v2v is None else f"{v2v:.0f} ms"
                                          for v2v in heard)
        elif category == "paused":
            report.paused_total += 1
            premature, lost, asr = await measure_paused(url, clip, entry, rate, transport)
            report.asr_recall.append(asr)
            (report.premature.append(name) if premature else None)
            (report.lost.append(name) if lost else None)
        elif category == "backchannel":
            report.backchannel_total += 1
            interrupted, _ = await measure_over_reply(url, question, clip, rate, transport)
            (report.false_barge_ins.append(name) if interrupted else None)
        else:
            interrupted, reaction = await measure_over_reply(url, question, clip, rate, transport)
            if reaction is not None:
                report.reaction_ms.append(reaction)
            if not interrupted:
                report.missed_interruptions.append(name)
        print(f"  {category:<12} {name}{detail}", flush=True)
    return report
