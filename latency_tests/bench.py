"""`voice bench`: client-measured voice-to-voice latency over WebSocket, WebRTC or SIP.

Streams each utterance at real-time pace in its own session and measures, on the
client's clock, the time from sending the last voiced sample to the first audible
reply sample (as a listener playing audio on arrival would hear it), beside the
server's per-stage `turn.latency`. Without `--url` it starts the service itself with
the bundled models and a local zero-delay OpenAI-compatible LLM server. Another
transport than `ws` is measured beside the WebSocket (`--reference`), utterance by
utterance, on the same service.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clients.audiofile import load_audio, voiced_bounds
from clients.base import make_client

DEFAULT_CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data"
LEAD_SILENCE_S = 0.5


@dataclass
class TurnMeasure:
    utterance: str
    voice_to_voice_ms: float | None
    transcript: str
    server_stages: dict[str, float] = field(default_factory=dict)
    transport: str = "ws"


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=None,
                        help="service to measure; default: start one with a zero-delay LLM")
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS),
                        help="folder with utterances.json and its WAV files")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each utterance")
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--transport", default="ws", help="ws (default), webrtc or sip")
    parser.add_argument("--reference", default="ws",
                        help="also measure this transport on the same utterances, interleaved, "
                        "and report it beside --transport (default ws; empty: none)")
    parser.add_argument("--pipeline", default=None, help="pipeline the sessions ask for")
    parser.add_argument("--json", default=None, help="also write the raw figures here")
    parser.add_argument("--turn-taking", action="store_true",
                        help="run the turn-taking corpus (latency_tests/corpus/turn_taking)")
    parser.add_argument("--serve-arg", action="append", default=[],
                        help="extra `voice serve` flag for the started service (repeatable)")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q)) if values else float("nan")


async def measure_one(url: str, name: str, path: Path, sample_rate: int, transport: str = "ws",
                      pipeline: str | None = None) -> TurnMeasure:
    audio = load_audio(path, sample_rate)
    lead = np.zeros(int(LEAD_SILENCE_S * sample_rate), np.int16)
    audio = np.concatenate([lead, audio])
    regions = voiced_bounds(audio, sample_rate)
    last_voiced = regions[-1][1] - 1 if regions else len(audio) - 1
    client = make_client(transport, url, sample_rate, pipeline)
    await client.connect()
    try:
        await client.stream(audio)
        async with asyncio.timeout(20):
            while not client.events_of("response.done") and not client.events_of("error"):
                await client.stream_silence(0.1)
    except TimeoutError:
        pass  # no reply: counted as such below, and the bench goes on
    finally:
        await client.close()
    sent = client.sent_time_ns(last_voiced)
    heard = client.first_audible_ns(sent) if sent is not None else None
    latency = client.events_of("turn.latency")
    transcripts = client.events_of("transcript.final")
    return TurnMeasure(
        utterance=name,
        voice_to_voice_ms=None if heard is None or sent is None else (heard - sent) / 1e6,
        transcript=transcripts[0]["text"] if transcripts else "",
        server_stages=latency[0]["stages"] if latency else {})


def report(measures: list[TurnMeasure]) -> str:
    lines = [f"{'utterance':<12} {'runs':>4} {'v2v median':>11} {'v2v p95':>8}  transcript"]
    names = list(dict.fromkeys(m.utterance for m in measures))
    for name in names:
        runs = [m for m in measures if m.utterance == name]
        values = [m.voice_to_voice_ms for m in runs if m.voice_to_voice_ms is not None]
        lines.append(f"{name:<12} {len(runs):>4} {median(values):>9.0f} ms "
                     f"{percentile(values, 95):>5.0f} ms  {runs[-1].transcript}")
    values = [m.voice_to_voice_ms for m in measures if m.voice_to_voice_ms is not None]
    missing = sum(m.voice_to_voice_ms is None for m in measures)
    lines.append("")
    lines.append(f"client voice-to-voice over {len(values)} turns: median "
                 f"{median(values):.0f} ms, p95 {percentile(values, 95):.0f} ms"
                 + (f", {missing} turns without a reply" if missing else ""))
    stage_names = list(dict.fromkeys(k for m in measures for k in m.server_stages))
    medians = {k: median([m.server_stages[k] for m in measures if k in m.server_stages])
               for k in stage_names}
    lines.append("server stage medians: " + ", ".join(
        f"{k.removesuffix('_ms')} {v:.0f}" for k, v in medians.items()) + " ms")
    return "\n".join(lines)


async def run_turn_taking_bench(args: argparse.Namespace) -> int:
    from latency_tests.turn_bench import run_turn_taking

    async with target_service(args) as url:
        print(f"turn-taking corpus over {args.transport} against {url} (serve args: "
              f"{args.serve_arg or 'defaults'})", flush=True)
        report = await run_turn_taking(url, args.sample_rate, args.repeat, args.transport)
    summary = report.summary()
    print(json.dumps(summary, indent=1))
    if args.json:
        await asyncio.to_thread(Path(args.json).write_text, json.dumps(summary, indent=1))
    return 0


async def run_bench(args: argparse.Namespace) -> int:
    if args.turn_taking:
        return await run_turn_taking_bench(args)
    corpus = Path(args.corpus)
    manifest: dict[str, Any] = json.loads((corpus / "utterances.json").read_text())
    async with target_service(args) as url:
        print(f"measuring {url} with {len(manifest)} utterances x {args.repeat} runs", flush=True)
        measures: list[TurnMeasure] = []
        for run in range(args.repeat):
            for name, entry in manifest.items():
                for transport in _transports(args):
                    measure = await measure_one(url, name, corpus / entry["file"],
                                                args.sample_rate, transport, args.pipeline)
                    measure.transport = transport
                    measures.append(measure)
                    v2v = measure.voice_to_voice_ms
                    print(f"  run {run + 1} {name:<10} {transport:<7} "
                          f"{'no reply' if v2v is None else f'{v2v:.0f} ms'}", flush=True)
    for transport in _transports(args):
        print(f"\n{transport}:")
        print(report([m for m in measures if m.transport == transport]))
    if len(_transports(args)) == 2:
        print("\n" + compare(measures, *_transports(args)))
    if args.json:
        await asyncio.to_thread(Path(args.json).write_text,
                                json.dumps([asdict(m) for m in measures], indent=1))
    return 0 if all(m.voice_to_voice_ms is not None for m in measures) else 1


def _transports(args: argparse.Namespace) -> list[str]:
    reference = getattr(args, "reference", "")
    return [args.transport] + ([reference] if reference and reference != args.transport else [])


def compare(measures: list[TurnMeasure], transport: str, reference: str) -> str:
    """The two transports' client medians on the same utterances, and the difference."""
    def values(name: str) -> list[float]:
        return [m.voice_to_voice_ms for m in measures
                if m.transport == name and m.voice_to_voice_ms is not None]

    ours, theirs = median(values(transport)), median(values(reference))
    return (f"client voice-to-voice median: {transport} {ours:.0f} ms, {reference} "
            f"{theirs:.0f} ms ({transport} {ours - theirs:+.0f} ms)")


@contextlib.asynccontextmanager
async def target_service(args: argparse.Namespace) -> AsyncIterator[str]:
    """`args.url`, or a service started for the run (bundled models, a local zero-delay
    LLM server that answers in two sentences, `args.serve_arg`): its URL."""
    if args.url:
        yield args.url
        return
    from latency_tests.llm_server import LLMServer, default_reply

    async with LLMServer() as llm:
        # two sentences, so that a reply is still playing when a caller talks over it
        llm.behaviour.reply = lambda messages: (
            default_reply(messages) + " I am happy to help you with that, so give me a "
            "moment to think about the best answer.")
        with _spawned_service(llm.base_url, _serve_args(args)) as url:
            yield url


def _serve_args(args: argparse.Namespace) -> list[str]:
    """The realtime pipeline, unless told otherwise, uses the spawned service's own
    OpenAI-Realtime-compatible endpoint as its provider (`{port}`: the service's port),
    with semantic VAD, which there is the cascade's own end-of-turn policy: the figure
    then differs from the cascade's by the realtime path alone (docs/realtime.md)."""
    extra = list(args.serve_arg)
    if args.pipeline == "realtime" and not any(a.startswith("--realtime-url") for a in extra):
        extra.append("--realtime-url=ws://127.0.0.1:{port}/v1/realtime")
        if not any(a.startswith("--realtime-turn-detection") for a in extra):
            extra.append("--realtime-turn-detection=semantic_vad")
    if "webrtc" in _transports(args):  # the client and the service share this machine
        extra.append("--rtc-allow-loopback")
    if "sip" in _transports(args) and not any(a.startswith("--sip-port") for a in extra):
        extra.append(f"--sip-port={_free_udp_port()}")  # the SIP client finds it in /healthz
    return extra


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _spawned_service(llm_url: str, extra: list[str]) -> Iterator[str]:
    with spawned_service(llm_url, extra) as (url, _):
        yield url


@contextlib.contextmanager
def spawned_service(llm_url: str, extra: list[str]
                    ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`voice serve` with the bundled models and `llm_url` as its LLM: its URL and process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OPENAI_BASE_URL": llm_url, "OPENAI_API_KEY": "bench",
           "VOICE_LOG_LEVEL": "WARNING"}
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(port),
         *(arg.replace("{port}", str(port)) for arg in extra)], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process)
        yield url, process
    finally:
        process.terminate()
        process.wait(timeout=20)


def _wait_healthy(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the service exited during startup")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the service did not become healthy in 120 s")
