"""Sessions per worker behind HAProxy, and what a drain takes (docs/deploy.md).

`python -m latency_tests.scale_bench --workers 1,3 --concurrency 2,4,6,8` starts, for
each worker count, that many workers (bundled models, a local zero-delay LLM server
answering in two sentences, as the latency suite's started service does) behind HAProxy
from deploy/haproxy/haproxy.cfg (latency_tests/cluster.py), then runs the latency
suite's load test through HAProxy at each N: N WebSocket callers at once, each saying
3 utterances with their turns staggered over the cycle of one turn
(latency_tests/suite/load.py). The capacity is the largest N whose p95 client
voice-to-voice stays within the budget (800 ms) with every turn answered, every smaller
N too; a count stops at its first N over budget. Sessions per worker = capacity /
workers. The workers end turns with the fixed preset (`--turn-preset`): the default
preset's deliberate waits on turns that read as unfinished would fill the p95 with a
single caller. Callers run in this process, on the same machine as the workers.

`--drain-runs N` instead measures drains with 3 workers behind both balancers (HAProxy
and Kamailio): a worker SIGTERMed while idle, and one SIGTERMed while a WebSocket
session and a SIP call on it are in the middle of a turn. It prints, per run, how long
until HAProxy and Kamailio stop sending it new sessions, until its last session ended,
until the process exited, and how long a restarted worker takes to be back in both.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clients.audiofile import load_audio
from clients.base import CallClient
from clients.sip_client import SipPhone
from clients.ws_client import VoiceClient
from latency_tests.cluster import STARTUP_TIMEOUT_S, Cluster, Worker
from latency_tests.llm_server import LLMServer, Message, default_reply
from latency_tests.suite.cli import DEFAULT_BUDGET_MS
from latency_tests.suite.corpus import load_corpus, select
from latency_tests.suite.load import LoadLevel, capacity, run_level, summarize_level

TURNS = 3
CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data"


def two_sentences(messages: list[Message]) -> str:
    return (default_reply(messages) + " I am happy to help you with that, so give me a "
            "moment to think about the best answer.")


def worker_env(llm: LLMServer, workers: int, args: argparse.Namespace) -> dict[str, str]:
    threads = args.stt_threads or max(1, (os.cpu_count() or 1) // workers)
    return {"OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "bench",
            "VOICE_LOG_LEVEL": "WARNING", "VOICE_STT_THREADS": str(threads),
            "VOICE_DRAIN_TIMEOUT_S": "60", "VOICE_TURN_PRESET": args.turn_preset}


# --- sessions per worker ------------------------------------------------------------------

async def measure_capacity(workers: int, levels: list[int], args: argparse.Namespace
                           ) -> list[LoadLevel]:
    talkers = [u for u in select(load_corpus(), "ws")
               if u.kind in ("command", "question") and u.snr is None]
    measured: list[LoadLevel] = []
    async with LLMServer() as llm:
        llm.behaviour.reply = two_sentences
        with tempfile.TemporaryDirectory(prefix="scale-bench-") as folder:
            cluster = Cluster.plan(Path(folder), workers)
            try:
                await asyncio.to_thread(cluster.start, worker_env(llm, workers, args), False)
                for n in levels:
                    results = await run_level(cluster.http_url, "ws", "cascade", talkers, n,
                                              TURNS)
                    level = summarize_level(results, n)
                    measured.append(level)
                    spread = await asyncio.to_thread(
                        lambda: [w.sessions("ws") for w in cluster.workers])
                    print(f"  {workers} worker(s), {n:>3} callers: {level.answered}/"
                          f"{level.turns} answered, p50 {level.p50_ms:.0f} ms, p95 "
                          f"{level.p95_ms:.0f} ms, max {level.max_ms:.0f} ms; sessions per "
                          f"worker so far {spread}", flush=True)
                    if not level.within(args.budget_ms):
                        break
            finally:
                await asyncio.to_thread(cluster.stop)
    return measured


# --- drains -------------------------------------------------------------------------------

@dataclass
class DrainRun:
    busy: bool
    haproxy_out_s: float
    kamailio_out_s: float
    last_session_s: float  # SIGTERM -> the last open session ended (0: none open)
    exit_s: float  # SIGTERM -> the process exited
    back_s: float  # restarted and healthy -> both balancers send it sessions again

    def line(self) -> str:
        kind = "busy" if self.busy else "idle"
        return (f"  {kind}: out of HAProxy {self.haproxy_out_s:.2f} s, out of Kamailio "
                f"{self.kamailio_out_s:.2f} s, last session ended {self.last_session_s:.1f} s, "
                f"exited {self.exit_s:.1f} s (after its last session "
                f"{self.exit_s - self.last_session_s:.2f} s); back in both balancers "
                f"{self.back_s:.1f} s after a restart")


async def first_time(condition: Callable[[], bool], since: float, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(condition):
        if time.monotonic() > deadline:
            return float("nan")
        await asyncio.sleep(0.02)
    return time.monotonic() - since


async def one_turn(client: CallClient, path: Path, started: asyncio.Event) -> float:
    """Say the utterance, hear the reply to its end, hang up; when it hung up."""
    await client.connect(timeout=15)
    audio = load_audio(path, client.sample_rate)
    half = len(audio) // 2
    await client.stream(audio[:half])
    started.set()  # the worker is told to drain now, mid-utterance
    await client.stream(audio[half:])
    async with asyncio.timeout(30):
        while not client.events_of("response.done") and not client.closed:
            await client.stream_silence(0.1)
    await client.close()
    return time.monotonic()


async def drain_once(cluster: Cluster, victim: Worker, busy: bool, env: dict[str, str]
                     ) -> DrainRun:
    started = asyncio.Event()
    calls: list[asyncio.Task[float]] = []
    if busy:
        path = CORPUS / "weather.wav"
        calls = [asyncio.create_task(one_turn(VoiceClient(victim.url), path, started)),
                 asyncio.create_task(one_turn(SipPhone(victim.sip_address), path, started))]
        await started.wait()
    victim.signal(signal.SIGTERM)
    t0 = time.monotonic()
    haproxy = asyncio.create_task(first_time(
        lambda: cluster.haproxy_states()[victim.name] != "UP", t0, 10))
    kamailio = asyncio.create_task(first_time(
        lambda: not cluster.kamailio_targets()[victim.name].active, t0, 10))
    ended = [t - t0 for t in await asyncio.gather(*calls)]
    assert victim.process is not None
    await asyncio.to_thread(victim.process.wait, 120)
    exited = time.monotonic() - t0
    run = DrainRun(busy, await haproxy, await kamailio, max(ended, default=0.0), exited, 0.0)
    victim.start(env)
    await asyncio.to_thread(victim.wait_healthy, time.monotonic() + STARTUP_TIMEOUT_S)
    healthy = time.monotonic()
    await asyncio.to_thread(cluster.wait_balanced, healthy + 30)
    run.back_s = time.monotonic() - healthy
    return run


async def measure_drains(runs: int, args: argparse.Namespace) -> list[DrainRun]:
    measured = []
    async with LLMServer() as llm:
        with tempfile.TemporaryDirectory(prefix="scale-drain-") as folder:
            cluster = Cluster.plan(Path(folder), 3)
            env = worker_env(llm, 3, args)
            try:
                await asyncio.to_thread(cluster.start, env)
                for run in range(runs):
                    for busy in (False, True):
                        victim = cluster.workers[run % len(cluster.workers)]
                        measured.append(await drain_once(cluster, victim, busy, env))
                        print(measured[-1].line(), flush=True)
            finally:
                await asyncio.to_thread(cluster.stop)
    return measured


# --- the command --------------------------------------------------------------------------

async def run(args: argparse.Namespace) -> int:
    if args.drain_runs:
        await measure_drains(args.drain_runs, args)
        return 0
    levels = [int(n) for n in args.concurrency.split(",") if n.strip()]
    summary = []
    for workers in [int(n) for n in args.workers.split(",") if n.strip()]:
        print(f"{workers} worker(s) behind HAProxy, {TURNS} turns per caller:", flush=True)
        measured = await measure_capacity(workers, levels, args)
        held = capacity(measured, args.budget_ms)
        summary.append(f"{workers} worker(s): {held} sessions within p95 "
                       f"{args.budget_ms:.0f} ms ({held / workers:.1f} per worker)")
    print("\n" + "\n".join(summary))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,3", help="worker counts to measure")
    parser.add_argument("--concurrency", default="1,2,4,6,8,10,12",
                        help="callers at once through HAProxy, in increasing order")
    parser.add_argument("--budget-ms", type=float, default=DEFAULT_BUDGET_MS)
    parser.add_argument("--turn-preset", default="fixed",
                        help="the workers' end-of-turn preset (default fixed, 250 ms: the "
                        "default preset's deliberate waits of up to 900 ms on turns that read "
                        "as unfinished would fill the p95 with one caller)")
    parser.add_argument("--stt-threads", type=int, default=0,
                        help="VOICE_STT_THREADS of each worker (0: cores / workers)")
    parser.add_argument("--drain-runs", type=int, default=0,
                        help="measure drains instead (3 workers, both balancers)")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
