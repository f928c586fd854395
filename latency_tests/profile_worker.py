"""Where a loaded worker's CPU goes (docs/deploy.md, "What a session costs").

`python -m latency_tests.profile_worker --callers 20` starts one worker (bundled
models, the zero-delay local LLM server answering in two sentences, as the latency
suite's load test does), puts N WebSocket callers on it with their turns staggered
(latency_tests/suite/load.py), and meanwhile:

- reads the CPU time of every thread of the worker from /proc before and after, by
  thread name (CTranslate2's and onnxruntime's own threads do not run Python);
- samples the Python stacks of the worker with py-spy (`pip install py-spy`), and sorts
  each sample into a part: STT (faster-whisper), TTS (Piper), VAD and turn-taking,
  resampling, the LLM client, the transports (WebSocket, framing), playout, the event
  loop, other.

It prints the CPU seconds the worker spent, the CPU seconds one session costs per
minute of conversation, and how that splits by part: the Python threads' time divided
by their samples, and the native threads' time (CTranslate2's and onnxruntime's
thread pools, which work for Whisper and for Piper; Linux names every thread of the
process alike, so the two are not told apart) on a line of its own.
Run it on an otherwise idle machine; the callers run in this process, on the same
machine, and their own CPU is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from latency_tests.bench import spawned_service
from latency_tests.llm_server import LLMServer, default_reply
from latency_tests.suite.corpus import load_corpus, select
from latency_tests.suite.load import run_level, summarize_level

CORPUS = Path(__file__).resolve().parent / "corpus" / "regression"
TICKS = os.sysconf("SC_CLK_TCK")
# the replies' second sentence: "two" as a voice assistant's usual short follow-up (a
# reply of about 4 s in all), "long" a longer one (about 7 s in all)
SECOND = {"two": " Is there anything else I can do for you?",
          "long": " I am happy to help you with that, so give me a moment to think about "
                  "the best answer."}
UNANSWERED: list[str] = []  # one line per turn without a measured reply

# A sample belongs to the first part whose marker appears in its stack (innermost first).
PARTS: list[tuple[str, tuple[str, ...]]] = [
    ("stt", ("faster_whisper", "ctranslate2", "providers/stt.py")),
    ("tts", ("piper", "onnxruntime", "providers/tts.py")),
    ("vad and turn-taking", ("webrtcvad", "turntaking/")),
    ("resampling", ("soxr", "StreamResampler", "audio.py")),
    ("llm client", ("openai", "httpx", "httpcore", "providers/llm.py")),
    ("replies", ("reply_engine.py", "cascade/reply.py", "sentences.py", "cascade/pipeline.py")),
    ("playout", ("playout.py",)),
    ("transport", ("websockets", "transports/", "wire/")),
    ("event loop", ("asyncio",)),
]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def part_of(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):  # innermost frame first
        for name, markers in PARTS:
            if any(marker in frame for marker in markers):
                return name
    return "other"


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of `pid`, by thread id."""
    totals: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        fields = stat[stat.rindex(")") + 2:].split()
        totals[int(task.name)] = (int(fields[11]) + int(fields[12])) / TICKS  # utime+stime
    return totals


def read_samples(path: Path) -> collections.Counter[str]:
    """py-spy's raw (collapsed) output: `thread;frame;frame... count` per line."""
    parts: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            parts[part_of(stack)] += int(count)
    return parts


METRIC = re.compile(r'^voice_inference_busy_ratio\{model="(\w+)"\} ([0-9.eE+-]+)$', re.M)
JOBS = re.compile(r'^voice_inference_(jobs|dropped|speculative_jobs)_total'
                  r'\{model="(\w+)"\} ([0-9.eE+-]+)$', re.M)
GARBAGE: collections.Counter[str] = collections.Counter()  # what --garbage sent
COUNTS: dict[str, float] = {}  # "stt jobs", "stt dropped", ...: the last scrape's totals
CYCLES: list[str] = []  # --cycles: the worker after each


def rss_mb(pid: int) -> float:
    """Resident memory of `pid` (VmRSS), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


LAGS: list[float] = []  # the callers' event loop: how late each 10 ms timer fired


async def loop_lag(lags: list[float]) -> None:
    while True:
        asked = time.monotonic()
        await asyncio.sleep(0.01)
        lags.append(time.monotonic() - asked - 0.01)


async def watch_queues(url: str, pid: int, seen: dict[str, list[float]]) -> None:
    """Each second, the busy share of the worker's model threads (`/metrics`) and
    the worker's resident memory (as "rss")."""
    while True:
        seen.setdefault("rss", []).append(rss_mb(pid))
        try:
            text = await asyncio.to_thread(_get, f"{url}/metrics")
        except OSError:
            text = ""
        for model, value in METRIC.findall(text):
            seen.setdefault(model, []).append(float(value))
        for kind, model, value in JOBS.findall(text):
            COUNTS[f"{model} {kind}"] = float(value)
        await asyncio.sleep(1.0)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as response:
        return str(response.read().decode())


async def garbage_client(url: str, sent: collections.Counter[str]) -> None:
    """A client beside the callers that sends the worker nothing but garbage, as fast
    as the worker takes it: odd-length audio, bad JSON, unknown events, oversized
    messages; it reconnects whenever it is closed."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import WebSocketException

    junk: list[str | bytes] = [b"\x01\x02\x03", "{not json", '{"type": "nope"}',
                               '{"type": "dtmf", "digit": [1]}', b"\x00" * 300_000,
                               "\u0000" * 100, '{"type": "response.cancel", "x": NaN}']
    ws_url = url.replace("http://", "ws://") + "/ws"
    while True:
        try:
            async with connect(ws_url, max_size=None) as ws:
                sent["connections"] += 1
                for k in itertools.count():
                    await ws.send(junk[k % len(junk)])
                    sent["messages"] += 1
                    await asyncio.sleep(0.005)
        except (OSError, WebSocketException):
            sent["closed"] += 1
            await asyncio.sleep(0.05)


async def settled(url: str, pid: int, cycle: int) -> str:
    """The worker once the sessions of a cycle are gone: its memory and tasks."""
    for _ in range(50):
        health = json.loads(await asyncio.to_thread(_get, f"{url}/healthz"))
        if health["sessions"] == 0:
            break
        await asyncio.sleep(0.2)
    return (f"after cycle {cycle}: {rss_mb(pid):.0f} MB resident, {health['tasks']} tasks, "
            f"{health['sessions']} sessions")


async def profile(args: argparse.Namespace, py_spy: str, samples: Path,
                  queues: dict[str, list[float]]) -> tuple[
        dict[int, float], dict[int, float], set[int], float, object]:
    """Run the load with py-spy recording into `samples`: the worker's thread CPU
    before and after, its Python threads, the wall time and the load's summary; the
    model threads' busy shares each second into `queues`."""
    talkers = [u for u in select(load_corpus(CORPUS), args.transport)
               if u.kind in ("command", "question") and u.snr is None]
    async with LLMServer() as llm:
        if args.reply != "one":
            llm.behaviour.reply = lambda messages: default_reply(messages) + SECOND[args.reply]
        serve = [f"--max-sessions={args.callers + 5}", *args.serve_arg]
        if args.transport == "sip":  # the phones find the SIP port in /healthz
            serve.append(f"--sip-port={free_udp_port()}")
        with spawned_service(llm.base_url, serve) as (url, process):
            before, started = thread_cpu(process.pid), time.monotonic()
            spy = await asyncio.create_subprocess_exec(
                py_spy, "record", "--pid", str(process.pid), "--rate", str(args.rate),
                "--format", "raw", "--output", str(samples), "--nonblocking",
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            queues["rss"] = [rss_mb(process.pid)]  # before the callers
            watch = asyncio.create_task(watch_queues(url, process.pid, queues))
            garbage = asyncio.create_task(garbage_client(url, GARBAGE)) if args.garbage else None
            lagger = asyncio.create_task(loop_lag(LAGS))
            results = await run_level(url, args.transport, "cascade", talkers, args.callers,
                                      args.turns)
            lagger.cancel()
            for cycle in range(1, args.cycles):
                CYCLES.append(await settled(url, process.pid, cycle))
                await run_level(url, args.transport, "cascade", talkers, args.callers, 1)
            if args.cycles > 1:
                CYCLES.append(await settled(url, process.pid, args.cycles))
            watch.cancel()
            if garbage is not None:
                garbage.cancel()
            after, wall = thread_cpu(process.pid), time.monotonic() - started
            dump = await asyncio.create_subprocess_exec(
                py_spy, "dump", "--pid", str(process.pid), "--json",
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            out, _ = await dump.communicate()
            spy.send_signal(2)  # SIGINT: py-spy writes what it has
            await spy.wait()
    in_python = {int(t["os_thread_id"]) for t in json.loads(out) if t.get("os_thread_id")}
    for result in results:
        if result.v2v_ms is None or result.cut_off:
            UNANSWERED.append(f"unanswered: caller {result.caller} turn {result.repeat} "
                              f"{result.utterance} heard {result.transcript!r} "
                              f"v2v {result.v2v_ms} cut off {result.cut_off} "
                              f"{result.error}".rstrip())
    return before, after, in_python, wall, summarize_level(results, args.callers)


def report(args: argparse.Namespace, before: dict[int, float], after: dict[int, float],
           in_python: set[int], wall: float, parts: collections.Counter[str],
           level: object) -> None:
    used = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
    total = sum(used.values())
    python = sum(v for tid, v in used.items() if tid in in_python)
    native = total - python
    conversation_min = args.callers * wall / 60
    print(f"\n{args.callers} callers, {wall:.0f} s: {level}")
    lags = sorted(LAGS)
    if lags:  # the callers' own event loop falling behind would make their audio late
        print(f"callers' event loop lag: p99 {lags[int(0.99 * (len(lags) - 1))] * 1000:.0f} "
              f"ms, max {lags[-1] * 1000:.0f} ms")
    for line in UNANSWERED:
        print(line)
    print(f"worker CPU {total:.1f} s over {wall:.0f} s ({total / wall:.2f} cores); "
          f"{total / conversation_min:.2f} CPU s per session-minute")
    print(f"Python threads {python:.1f} s ({len(in_python)}), native threads {native:.1f} s "
          f"({len(used) - len(in_python)})")
    samples = sum(parts.values()) or 1
    print(f"\n{'part':22} {'share of Python':>15} {'CPU s/session-min':>18}")
    for name, count in parts.most_common():
        seconds = python * count / samples
        print(f"{name:22} {count / samples:15.0%} {seconds / conversation_min:18.3f}")
    print(f"{'native (stt + tts)':22} {'':15} {native / conversation_min:18.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--callers", type=int, default=20)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--cycles", type=int, default=1,
                        help="after the run, N-1 more cycles of the callers coming, taking "
                        "one turn each and going; the worker's memory and tasks after each")
    parser.add_argument("--garbage", action="store_true",
                        help="a client beside the callers sending garbage all along")
    parser.add_argument("--reply", choices=("one", "two", "long"), default="two",
                        help="the LLM's replies: one sentence ('You said: ...', as the "
                        "latency suite's load test, about 2 s of audio), two (about 4 s) "
                        "or two long ones (about 7 s)")
    parser.add_argument("--transport", choices=("ws", "webrtc", "sip"), default="ws",
                        help="how the callers call: WebSocket, WebRTC (aiortc peers, Opus) "
                        "or SIP (G.711 over RTP, telephone-band clips); the callers' own "
                        "CPU is in this process, on the same cores")
    parser.add_argument("--keep-stacks", type=Path, default=None,
                        help="also write py-spy's raw stacks here (for flame graphs)")
    parser.add_argument("--serve-arg", action="append", default=[],
                        help="extra `voice serve` argument (repeatable)")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        raise SystemExit("py-spy is needed: pip install py-spy")
    with tempfile.TemporaryDirectory() as folder:
        samples = Path(folder) / "stacks.txt"
        queues: dict[str, list[float]] = {}
        before, after, in_python, wall, level = asyncio.run(
            profile(args, py_spy, samples, queues))
        parts = read_samples(samples) if samples.exists() else collections.Counter()
        if args.keep_stacks and samples.exists():
            shutil.copyfile(samples, args.keep_stacks)
    report(args, before, after, in_python, wall, parts, level)
    if GARBAGE:
        print(f"garbage client: {GARBAGE['messages']} messages over "
              f"{GARBAGE['connections']} connections, closed by the worker "
              f"{GARBAGE['closed']} times")
    for line in CYCLES:
        print(line)
    rss = queues.pop("rss", [0.0])
    print(f"worker resident memory: {rss[0]:.0f} MB before the callers, at most "
          f"{max(rss):.0f} MB during the run")
    for model, values in sorted(queues.items()):
        ordered = sorted(values)
        print(f"{model} thread busy (last 10 s, each second): median "
              f"{ordered[len(ordered) // 2]:.0%}, max {ordered[-1]:.0%}; jobs run "
              f"{COUNTS.get(f'{model} jobs', 0):.0f} (speculative "
              f"{COUNTS.get(f'{model} speculative_jobs', 0):.0f}), dropped unrun "
              f"{COUNTS.get(f'{model} dropped', 0):.0f}")


if __name__ == "__main__":
    main()
