"""How many concurrent phone calls one worker holds with no gaps in its outgoing audio.

`python -m latency_tests.sip_capacity --calls 5,10,20 --runs 3` starts the service
(bundled models, local zero-delay LLM) with a SIP bridge, then, `--runs` times over,
places each count of concurrent calls with the Python SIP phone. Every caller says one
utterance (starts staggered by 0.25 s), listens to the reply, and hangs up. A round
of two calls warms the service up first and is not counted.

A gap is what a caller's phone would hear: each phone judges the RTP it receives, on
the kernel's arrival times, with a fixed playout buffer of `--buffer-ms` (60 ms, a
typical phone jitter buffer; `clients.phone_buffer`). A packet later than the
buffer allows (an underrun), a lost packet, or time the sender skipped is one gap
("speech": those next to reply speech, the ones a caller notices). A count is held
when every call is answered, every caller hears a reply, and no call has a gap, in
speech or not; a run's capacity is the largest count held with every smaller count
held too, and the figure reported is the median over the runs.

Also printed: the service's own media-clock figures (ticks sent more than one packet
time late: the strict "no tick late" measure, from the call-end log lines), and the
median voice-to-voice delay the callers heard, which says what a held count costs in
reply time. Calls run in this process, the service in another; on a 2-core machine
both share the CPU, as a real worker would share it with its network stack.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clients.audiofile import load_audio, voiced_bounds
from clients.phone_buffer import DEFAULT_DEPTH_MS
from clients.sip_client import SipPhone
from latency_tests.llm_server import LLMServer

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data"
# not "stop": tiny.en often hears only its second half on phone audio and drops it as
# no speech, and a caller left without a reply says nothing about the RTP
UTTERANCES = ["weather", "joke", "train", "name"]
WARM_UP_CALLS = 2
_CALL_END = re.compile(r"clock gaps (\d+), max late ([0-9.]+) ms")


@dataclass
class RoundResult:
    calls: int
    answered: int
    replied: int
    gap_calls: int  # calls whose phone heard at least one gap
    gaps: int  # packet times heard as holes, all calls
    speech_gaps: int  # of which next to speech
    max_spread_ms: float  # the playout buffer the worst call would have needed
    clock_gaps: int  # server: ticks more than one packet time late
    max_late_ms: float  # server: latest tick
    reply_ms: float  # median voice-to-voice delay the callers heard

    @property
    def held(self) -> bool:
        return self.answered == self.replied == self.calls and self.gaps == 0

    def line(self, run: int) -> str:
        return (f"{run:>3} {self.calls:>5} {self.answered:>8} {self.replied:>7} "
                f"{self.gap_calls:>9} {self.gaps:>5} {self.speech_gaps:>6} "
                f"{self.max_spread_ms:>10.1f} "
                f"{self.clock_gaps:>11} {self.max_late_ms:>12.1f} {self.reply_ms:>9.0f} "
                f"{'yes' if self.held else 'no':>4}")


HEADER = ("run calls answered replied gap calls gaps speech spread ms clock gaps "
          "max late ms  reply ms held")


@dataclass
class CallResult:
    phone: SipPhone
    reply_ms: float | None


async def one_call(url: str, index: int, buffer_ms: float) -> CallResult | None:
    await asyncio.sleep(0.25 * index)
    phone = SipPhone(url, buffer_ms=buffer_ms)
    try:
        await phone.connect(timeout=10)
    except Exception:
        return None
    lead = np.zeros(int(0.3 * phone.sample_rate), np.int16)
    audio = np.concatenate([lead, load_audio(
        CORPUS / f"{UTTERANCES[index % len(UTTERANCES)]}.wav", phone.sample_rate)])
    regions = voiced_bounds(audio, phone.sample_rate)
    last_voiced = regions[-1][1] - 1 if regions else len(audio) - 1
    try:
        await phone.stream(audio)
        async with asyncio.timeout(25):
            while not phone.events_of("response.done") and not phone.closed:
                await phone.stream_silence(0.1)
        await phone.stream_silence(0.5)
    except TimeoutError:
        pass
    finally:
        await phone.close()
    sent = phone.sent_time_ns(last_voiced)
    heard = phone.first_audible_ns(sent) if sent is not None else None
    return CallResult(phone, None if sent is None or heard is None else (heard - sent) / 1e6)


async def run_round(url: str, calls: int, log: Path, buffer_ms: float) -> RoundResult:
    start = len((await asyncio.to_thread(log.read_text, errors="replace")).splitlines())
    results = await asyncio.gather(*(one_call(url, i, buffer_ms) for i in range(calls)))
    await asyncio.sleep(1.0)  # the call-end lines reach the log
    lines = (await asyncio.to_thread(log.read_text, errors="replace")).splitlines()[start:]
    ends = [(int(m.group(1)), float(m.group(2))) for line in lines
            if (m := _CALL_END.search(line))]
    answered = [r for r in results if r is not None]
    stats = [r.phone.rtp_stats for r in answered]
    replies = [r.reply_ms for r in answered if r.reply_ms is not None]
    return RoundResult(
        calls=calls, answered=len(answered),
        replied=sum(bool(r.phone.events_of("response.done")) for r in answered),
        gap_calls=sum(s.gaps > 0 for s in stats), gaps=sum(s.gaps for s in stats),
        speech_gaps=sum(s.audible_gaps for s in stats),
        max_spread_ms=max((s.max_spread_ms for s in stats), default=0.0),
        clock_gaps=sum(g for g, _ in ends), max_late_ms=max((m for _, m in ends), default=0.0),
        reply_ms=statistics.median(replies) if replies else float("nan"))


def capacity(results: list[RoundResult]) -> int:
    """The largest count held with every smaller count of the run held too."""
    held = 0
    for result in sorted(results, key=lambda r: r.calls):
        if not result.held:
            break
        held = result.calls
    return held


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def main(counts: list[int], runs: int, buffer_ms: float, serve_args: list[str],
               nice: int) -> int:
    folder = Path(tempfile.mkdtemp(prefix="sip-capacity-"))
    log = folder / "service.log"
    capacities = []
    async with LLMServer() as llm:
        port, sip = _free_port(socket.SOCK_STREAM), _free_port(socket.SOCK_DGRAM)
        env = {**os.environ, "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "capacity",
               "VOICE_LOG_LEVEL": "INFO"}
        niced = ["nice", "-n", str(nice)] if nice else []
        process = await asyncio.create_subprocess_exec(
            *niced, sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--sip-port",
            str(sip), "--sip-max-calls", "200", *serve_args, env=env, stdout=log.open("wb"),
            stderr=subprocess.STDOUT)
        try:
            await _wait_healthy(f"http://127.0.0.1:{port}", process)
            print(f"phone playout buffer {buffer_ms:g} ms; {os.cpu_count()} CPUs; service at "
                  f"nice {nice}", flush=True)
            print(HEADER, flush=True)
            # a fresh service's first calls import and allocate what later calls reuse
            print(f"{(await run_round(f'127.0.0.1:{sip}', WARM_UP_CALLS, log, buffer_ms)).line(0)}"
                  " (warm-up, not counted)", flush=True)
            for run in range(1, runs + 1):
                results = []
                for count in counts:
                    results.append(await run_round(f"127.0.0.1:{sip}", count, log, buffer_ms))
                    print(results[-1].line(run), flush=True)
                capacities.append(capacity(results))
                print(f"run {run}: {capacities[-1]} calls held with no gaps "
                      f"(load average {os.getloadavg()[0]:.2f})", flush=True)
        finally:
            process.terminate()
            await process.wait()
    print(f"capacity: median {statistics.median(capacities):g} concurrent calls with no "
          f"gaps over {runs} run(s): {capacities}")
    print(f"(service log: {log})")
    return 0


async def _wait_healthy(url: str, process: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise RuntimeError("the service exited during startup")
        try:
            await asyncio.to_thread(urllib.request.urlopen, f"{url}/healthz", None, 1)
            return
        except OSError:
            await asyncio.sleep(0.2)
    raise RuntimeError("the service did not become healthy in 120 s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", default="1,5,10,15,20,25,30",
                        help="comma-separated call counts, tried in this order each run")
    parser.add_argument("--runs", type=int, default=3, help="times over the counts")
    parser.add_argument("--buffer-ms", type=float, default=DEFAULT_DEPTH_MS,
                        help="the callers' phones' fixed playout buffer")
    parser.add_argument("--serve-arg", action="append", default=[],
                        help="extra `voice serve` flag (repeatable): --serve-arg=--stt-threads=1")
    parser.add_argument("--nice", type=int, default=0,
                        help="run the service at this niceness (below 0 needs root): on a "
                             "machine shared with other work, a stand-in for a dedicated worker")
    arguments = parser.parse_args()
    sys.exit(asyncio.run(main([int(c) for c in arguments.calls.split(",")], arguments.runs,
                              arguments.buffer_ms, arguments.serve_arg, arguments.nice)))
