"""One session floods the worker with audio; does another session notice?

`python -m latency_tests.burst_bench` starts one worker (bundled models, the zero-delay
local LLM server), then measures a *victim* caller's client voice-to-voice over
`--turns` turns (the load test's turns: an utterance, its whole reply, a pause):

1. alone, for its baseline;
2. while another WebSocket client sends `--burst-s` seconds of speech as fast as its
   link takes it (the worker keeps it to 1.5x real time beyond a 2 s burst and drops
   the rest, with an `audio_too_fast` error; a turn is at most `max_turn_s` long).

It prints both, and what the flooding client was told. Repeat it (`--runs`) and quote
medians: the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from pathlib import Path

import numpy as np

from clients.audiofile import load_audio
from latency_tests.bench import spawned_service
from latency_tests.llm_server import LLMServer
from latency_tests.suite.corpus import load_corpus, select
from latency_tests.suite.load import caller, summarize_level

CORPUS = Path(__file__).resolve().parent / "corpus" / "regression"
RATE = 16000


async def flood(url: str, speech: np.ndarray, seconds: float, told: dict[str, int]) -> None:
    """`seconds` of speech (repeated) in 1 s messages, as fast as the link takes them."""
    from websockets.asyncio.client import connect

    chunk = RATE  # 1 s per message
    audio = np.resize(speech, int(seconds * RATE)).astype("<i2").tobytes()
    ws_url = url.replace("http://", "ws://") + f"/ws?sample_rate={RATE}"
    async with connect(ws_url, max_size=None) as ws:

        async def listen() -> None:
            async for message in ws:
                if isinstance(message, str):
                    event = json.loads(message)
                    key = event["type"] + (f":{event['code']}" if "code" in event else "")
                    told[key] = told.get(key, 0) + 1

        listener = asyncio.create_task(listen())
        for start in range(0, len(audio), chunk * 2):
            await ws.send(audio[start: start + chunk * 2])
        await asyncio.sleep(5)  # let its last turns be answered
        listener.cancel()


async def measure(args: argparse.Namespace) -> list[tuple[float, float, float, float]]:
    talkers = [u for u in select(load_corpus(CORPUS), "ws")
               if u.kind in ("command", "question") and u.snr is None]
    speech = np.concatenate([load_audio(u.path, RATE) for u in talkers[:6]])
    runs = []
    async with LLMServer() as llm:
        with spawned_service(llm.base_url, args.serve_arg) as (url, _):
            for run in range(args.runs):
                alone = summarize_level(
                    await caller(url, "ws", "cascade", talkers, 0, 1, args.turns), 1)
                told: dict[str, int] = {}
                burst = asyncio.create_task(flood(url, speech, args.burst_s, told))
                await asyncio.sleep(1.0)
                beside = summarize_level(
                    await caller(url, "ws", "cascade", talkers, 0, 1, args.turns), 1)
                await burst
                print(f"run {run + 1}: victim alone p50 / p95 {alone.p50_ms:.0f} / "
                      f"{alone.p95_ms:.0f} ms ({alone.answered}/{alone.turns} answered); "
                      f"beside the burst {beside.p50_ms:.0f} / {beside.p95_ms:.0f} ms "
                      f"({beside.answered}/{beside.turns}); the flooding client was told "
                      f"{told}", flush=True)
                runs.append((alone.p50_ms, alone.p95_ms, beside.p50_ms, beside.p95_ms))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=10, help="the victim's turns")
    parser.add_argument("--burst-s", type=float, default=120.0,
                        help="seconds of audio the flooding client sends")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--serve-arg", action="append", default=[],
                        help="extra `voice serve` argument (repeatable)")
    args = parser.parse_args()
    runs = asyncio.run(measure(args))
    alone = statistics.median(r[1] for r in runs)
    beside = statistics.median(r[3] for r in runs)
    print(f"median over {len(runs)} runs: victim p95 alone {alone:.0f} ms, beside the "
          f"burst {beside:.0f} ms ({beside - alone:+.0f} ms)")


if __name__ == "__main__":
    main()
