"""How many concurrent phone calls one worker holds with no gaps in its outgoing RTP.

`python -m latency_tests.sip_capacity --calls 5,10,20` starts the service (bundled
models, local zero-delay LLM) with a SIP bridge, then for each count places that many
concurrent calls with the Python SIP phone. Every caller says one utterance (starts
staggered by 0.25 s), listens to the reply, and hangs up. The outgoing audio is judged
on both sides:
- the service's media clocks count ticks sent more than one packet time late ("clock
  gaps", from the call-end log lines), which is what a phone would hear as a gap;
- the callers count missing sequence numbers and packets arriving more than two packet
  times after the previous one.
Calls run in this process, the service in another; on a 2-core machine both share
the CPU, as a real worker would share it with its network stack.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from clients.audiofile import load_audio
from clients.sip_client import SipPhone
from latency_tests.llm_server import LLMServer

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data"
UTTERANCES = ["weather", "joke", "train", "name", "stop"]
_CALL_END = re.compile(r"clock gaps (\d+), max late ([0-9.]+) ms")


@dataclass
class RoundResult:
    calls: int
    answered: int
    replied: int
    clock_gaps: int
    max_late_ms: float
    client_seq_gaps: int
    client_late_packets: int
    client_max_gap_ms: float

    def line(self) -> str:
        return (f"{self.calls:>5} {self.answered:>8} {self.replied:>7} {self.clock_gaps:>10} "
                f"{self.max_late_ms:>12.1f} {self.client_seq_gaps:>8} "
                f"{self.client_late_packets:>9} {self.client_max_gap_ms:>13.1f}")


HEADER = ("calls answered replied clock gaps max late (ms) seq gaps late pkts "
          "max gap (ms)")


async def one_call(url: str, index: int) -> SipPhone | None:
    await asyncio.sleep(0.25 * index)
    phone = SipPhone(url)
    try:
        await phone.connect(timeout=10)
    except Exception:
        return None
    audio = load_audio(CORPUS / f"{UTTERANCES[index % len(UTTERANCES)]}.wav", 8000)
    try:
        await phone.stream_silence(0.3)
        await phone.stream(audio)
        async with asyncio.timeout(25):
            while not phone.events_of("response.done") and not phone.closed:
                await phone.stream_silence(0.1)
        await phone.stream_silence(0.5)
    except TimeoutError:
        pass
    finally:
        await phone.close()
    return phone


async def run_round(url: str, calls: int, log: Path) -> RoundResult:
    start = len((await asyncio.to_thread(log.read_text, errors="replace")).splitlines())
    phones = await asyncio.gather(*(one_call(url, i) for i in range(calls)))
    await asyncio.sleep(1.0)  # the call-end lines reach the log
    lines = (await asyncio.to_thread(log.read_text, errors="replace")).splitlines()[start:]
    ends = [(int(m.group(1)), float(m.group(2))) for line in lines
            if (m := _CALL_END.search(line))]
    answered = [p for p in phones if p is not None]
    return RoundResult(
        calls=calls, answered=len(answered),
        replied=sum(bool(p.events_of("response.done")) for p in answered),
        clock_gaps=sum(g for g, _ in ends), max_late_ms=max((m for _, m in ends), default=0.0),
        client_seq_gaps=sum(p.rtp_stats.sequence_gaps for p in answered),
        client_late_packets=sum(p.rtp_stats.late_packets for p in answered),
        client_max_gap_ms=max((p.rtp_stats.max_interarrival_ms for p in answered),
                              default=0.0))


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def main(counts: list[int]) -> int:
    folder = Path(tempfile.mkdtemp(prefix="sip-capacity-"))
    log = folder / "service.log"
    async with LLMServer() as llm:
        port, sip = _free_port(socket.SOCK_STREAM), _free_port(socket.SOCK_DGRAM)
        env = {**os.environ, "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "capacity",
               "VOICE_LOG_LEVEL": "INFO"}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "voice.cli", "serve", "--port", str(port), "--sip-port",
            str(sip), "--sip-max-calls", "200", env=env, stdout=log.open("wb"),
            stderr=subprocess.STDOUT)
        try:
            await _wait_healthy(f"http://127.0.0.1:{port}", process)
            print(HEADER, flush=True)
            for count in counts:
                result = await run_round(f"127.0.0.1:{sip}", count, log)
                print(result.line(), flush=True)
        finally:
            process.terminate()
            await process.wait()
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
    parser.add_argument("--calls", default="1,5,10,20", help="comma-separated call counts")
    arguments = parser.parse_args()
    sys.exit(asyncio.run(main([int(c) for c in arguments.calls.split(",")])))
