"""Load: N callers at once, each one session of several turns, their turns staggered.

Caller i starts `i * CYCLE_S / N` seconds after the first, so the N callers' turns
spread over the cycle of one turn (speak, hear the whole reply, pause) instead of all
ending at once. Each caller says its utterances one after the other, hears each reply
to its end (`response.done`) and pauses `THINK_S`, streaming silence throughout as a
live microphone does. Every turn's voice-to-voice is measured as in the corpus runs.

The capacity of one worker is the largest N whose p95 voice-to-voice stays within
the budget with every turn answered (docs/latency.md explains the 800 ms budget).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from clients.audiofile import load_audio
from clients.base import make_client
from latency_tests.suite.corpus import Utterance
from latency_tests.suite.metrics import Trial
from latency_tests.suite.results import TurnResult
from latency_tests.suite.runner import (
    REPLY_TIMEOUT_S,
    Mic,
    heard_audio,
    replied_after,
)
from latency_tests.suite.stats import percentile

CYCLE_S = 8.0  # about one turn: ~3 s of speech, ~0.3 s to the reply, ~4 s of reply
THINK_S = 0.5
DONE_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class LoadLevel:
    concurrency: int
    turns: int
    answered: int
    p50_ms: float
    p95_ms: float
    max_ms: float
    gap_p95_ms: float = float("nan")  # the longest stall inside a reply (p95 of turns)

    def within(self, budget_ms: float) -> bool:
        return self.answered == self.turns and self.p95_ms <= budget_ms


async def caller(url: str, transport: str, pipeline: str, utterances: Sequence[Utterance],
                 index: int, concurrency: int, turns: int) -> list[TurnResult]:
    await asyncio.sleep(index * CYCLE_S / concurrency)
    where = {"concurrency": concurrency, "caller": index}
    said = [utterances[(index + k) % len(utterances)] for k in range(turns)]
    client = make_client(transport, url, said[0].rate, pipeline)
    try:
        await client.connect()
    except Exception as exc:  # a refused caller is a result: every turn unanswered
        return [TurnResult.failed(u, transport, pipeline, f"connect: {exc!r}", repeat=k,
                                  **where) for k, u in enumerate(said)]
    mic, results = Mic(client), []
    try:
        for k, utt in enumerate(said):
            trial = await _turn(mic, utt)
            results.append(TurnResult.from_trial(utt, trial, transport, pipeline, repeat=k,
                                                 **where))
    finally:
        await client.close()
    return results


async def _turn(mic: Mic, utt: Utterance) -> Trial:
    """One turn of a caller: the utterance, its whole reply, a pause."""
    client = mic.rec
    start = await mic.say(load_audio(utt.path, client.sample_rate))
    since = client.sent_time_ns(start) or 0
    end = start + utt.last_voiced_sample
    await mic.silence_until(lambda: replied_after(client, client.sent_time_ns(end)),
                            REPLY_TIMEOUT_S)
    await mic.silence_until(lambda: any(e["type"] in ("response.done", "error")
                                        and e["_received_ns"] >= since
                                        for e in client.record.events), DONE_TIMEOUT_S)
    await mic.silence(THINK_S)
    events = [e for e in client.record.events if e["_received_ns"] >= since]
    return Trial(utt.kind, events, heard_audio(client, since), client.sent_time_ns(end))


async def run_level(url: str, transport: str, pipeline: str, utterances: Sequence[Utterance],
                    concurrency: int, turns: int) -> list[TurnResult]:
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(
            caller(url, transport, pipeline, utterances, i, concurrency, turns),
            name=f"load-caller-{i}") for i in range(concurrency)]
    return [r for task in tasks for r in task.result()]


def summarize_level(results: Sequence[TurnResult], concurrency: int) -> LoadLevel:
    turns = [r for r in results if r.concurrency == concurrency]
    values = [r.v2v_ms for r in turns if r.v2v_ms is not None and not r.cut_off]
    gaps = [r.reply_gap_ms for r in turns if r.reply_gap_ms is not None]
    return LoadLevel(concurrency, len(turns), len(values), percentile(values, 50),
                     percentile(values, 95), max(values, default=float("nan")),
                     percentile(gaps, 95))


def capacity(levels: Sequence[LoadLevel], budget_ms: float) -> int:
    """The largest N within budget with every smaller measured N within it too (0: none)."""
    best = 0
    for level in sorted(levels, key=lambda x: x.concurrency):
        if not level.within(budget_ms):
            break
        best = level.concurrency
    return best
