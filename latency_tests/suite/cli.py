"""`voice latency run` and `voice latency check` (docs/latency.md)."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from latency_tests.bench import target_service
from latency_tests.suite.baseline import compare, make_baseline, regressions, table
from latency_tests.suite.corpus import CORPUS, Utterance, load_corpus, select
from latency_tests.suite.load import run_level, summarize_level
from latency_tests.suite.metrics import SPEECH_KINDS
from latency_tests.suite.report import headline, write_report
from latency_tests.suite.results import RunResults, TurnResult
from latency_tests.suite.runner import run_clip
from voice.usage import Prices

QUESTION = "q_flight"  # said before each interruption, so that there is a reply to stop
DEFAULT_BUDGET_MS = 800.0


def add_latency_commands(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="latency_command", required=True)
    run = sub.add_parser("run", help="say the corpus to a service and report its latency")
    run.add_argument("--transport", default="ws",
                     choices=("ws", "webrtc", "sip", "twilio", "telnyx"),
                     help="twilio, telnyx: the provider's media stream, played by a "
                          "simulated provider whose buffer plays at real time")
    run.add_argument("--pipeline", default="cascade", choices=("cascade", "realtime"))
    run.add_argument("--url", default=None,
                     help="service to measure; default: start one (bundled models, local "
                     "zero-delay LLM server)")
    run.add_argument("--repeat", type=int, default=None,
                     help="runs of each clip (default 3; 1 with --quick)")
    run.add_argument("--concurrency", default="1",
                     help="N[,N...]: also run N callers at once (load), e.g. 1,2,4,8")
    run.add_argument("--load-turns", type=int, default=3, help="turns of each load caller")
    run.add_argument("--budget-ms", type=float, default=DEFAULT_BUDGET_MS,
                     help="p95 voice-to-voice budget that defines capacity")
    run.add_argument("--quick", action="store_true", help="the handful of CI clips only")
    run.add_argument("--only", default="", help="clip names or kinds, comma-separated")
    run.add_argument("--corpus", default=str(CORPUS), help="folder with manifest.json")
    run.add_argument("--out", required=True, help="folder for report.md, results.json, charts")
    run.add_argument("--serve-arg", action="append", default=[],
                     help="extra `voice serve` flag for the started service (repeatable)")
    run.add_argument("--debug-stage-delay", default="",
                     help="testing only: start the service with this stage delay, e.g. "
                     "stt=150 (a regression on purpose)")
    _add_check_arguments(run, required=False)
    compare_runs = sub.add_parser("compare", help="runs side by side: latency, WER and "
                                  "cost per minute (e.g. the cascade against realtime)")
    compare_runs.add_argument("results", nargs="+", help="runs' output folders")
    compare_runs.add_argument("--out", required=True, help="folder for compare.md, cost.png")
    compare_runs.add_argument("--price-table", default="",
                              help="JSON price rows (as `voice serve --price-table`)")
    compare_runs.add_argument("--price-local-as", default="",
                              help="also price local models as hosted ones, e.g. "
                              "stt=whisper-1,tts=tts-1 (a what-if row per cascade run)")
    check = sub.add_parser("check", help="compare a run with a baseline")
    check.add_argument("results", help="a run's output folder or its results.json")
    _add_check_arguments(check, required=True)


def _add_check_arguments(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--baseline", required=required, help="baseline JSON file")
    parser.add_argument("--update-baseline", action="store_true",
                        help="write the run as the new baseline instead of checking")
    parser.add_argument("--multiple", type=float, default=1.0,
                        help="scale every timing limit (CI: 3, for a slower machine)")
    parser.add_argument("--wer-slack", type=float, default=0.3,
                        help="WER above the baseline's by more than this is a wrong transcript")


def run_command(args: argparse.Namespace) -> int:
    if args.latency_command == "run":
        return cmd_run(args)
    if args.latency_command == "compare":
        return cmd_compare(args)
    return cmd_check(args)


def cmd_compare(args: argparse.Namespace) -> int:
    from latency_tests.suite.cost import comparison, comparison_chart

    runs = [RunResults.load_file(Path(p) / "results.json" if Path(p).is_dir() else Path(p))
            for p in args.results]
    prices = Prices.load(args.price_table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    local_as = dict(part.split("=", 1) for part in args.price_local_as.split(",")
                    if "=" in part)
    table_lines = comparison(runs, prices, local_as or None)
    comparison_chart(runs, prices, out / "cost.png")
    (out / "compare.md").write_text("\n".join(
        ["# Latency, WER and cost per minute", "", *table_lines, "",
         "![latency and cost](cost.png)"]) + "\n")
    print("\n".join(table_lines))
    print(f"written: {out / 'compare.md'}, {out / 'cost.png'}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    path = Path(args.results)
    run = RunResults.load_file(path / "results.json" if path.is_dir() else path)
    return baseline_step(run, args)


def baseline_step(run: RunResults, args: argparse.Namespace) -> int:
    """Write or check the baseline; the exit status."""
    path = Path(args.baseline)
    if args.update_baseline:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(make_baseline(run), indent=1) + "\n")
        print(f"baseline written: {path}")
        return 0
    baseline: dict[str, Any] = json.loads(path.read_text())
    if (baseline["transport"], baseline["pipeline"]) != (run.transport, run.pipeline):
        print(f"warning: baseline is {baseline['transport']} x {baseline['pipeline']}, "
              f"run is {run.transport} x {run.pipeline}")
    findings = compare(run, baseline, args.multiple, args.wer_slack)
    print(f"\ncheck against {path} (limits x{args.multiple:g}):")
    print(table(findings, everything=True))
    failed = regressions(findings)
    print(f"\n{len(failed)} regression(s)" if failed else "\nno regressions")
    return 1 if failed else 0


def cmd_run(args: argparse.Namespace) -> int:
    clips = select(load_corpus(Path(args.corpus)), args.transport, args.quick)
    if args.only:
        wanted = set(args.only.split(","))
        clips = [u for u in clips if u.name in wanted or u.source in wanted or u.kind in wanted]
    if not clips:
        print("no clips selected")
        return 2
    repeat = args.repeat or (1 if args.quick else 3)
    levels = [int(n) for n in args.concurrency.split(",") if n.strip()]
    run = asyncio.run(measure(args, clips, repeat, levels if levels != [1] else []))
    out = Path(args.out)
    report = write_report(run, out)
    print(f"\n{headline(run.turns)}\nreport: {report}")
    if not args.baseline:
        return 0
    status = baseline_step(run, args)
    if not args.update_baseline:
        write_report(run, out, compare(run, json.loads(Path(args.baseline).read_text()),
                                       args.multiple, args.wer_slack))
    return status


def _question(corpus_folder: Path, transport: str) -> Utterance:
    band = select(load_corpus(corpus_folder), transport)
    return next(u for u in band if u.source == QUESTION and u.condition in ("clean", "telephone"))


async def measure(args: argparse.Namespace, clips: list[Utterance], repeat: int,
                  levels: list[int]) -> RunResults:
    serve_args = list(args.serve_arg)
    if args.debug_stage_delay:
        serve_args.append(f"--debug-stage-delay={args.debug_stage_delay}")
    target = argparse.Namespace(url=args.url, serve_arg=serve_args, pipeline=args.pipeline,
                                transport=args.transport, reference="")
    run = RunResults(args.transport, args.pipeline, args.quick, repeat,
                     info=run_info(args, serve_args), budget_ms=args.budget_ms)
    question = _question(Path(args.corpus), args.transport)
    async with target_service(target) as url:
        print(f"{len(clips)} clips x {repeat} over {args.transport} ({args.pipeline}) "
              f"against {url}", flush=True)
        for r in range(repeat):
            for utt in clips:
                result = await run_clip(url, args.transport, args.pipeline, utt, question,
                                        repeat=r)
                run.turns.append(result)
                print(progress_line(result), flush=True)
        talkers = [u for u in select(load_corpus(Path(args.corpus)), args.transport)
                   if u.kind in ("command", "question") and u.snr is None]
        for n in levels:
            level = await run_level(url, args.transport, args.pipeline, talkers, n,
                                    args.load_turns)
            run.load += level
            s = summarize_level(level, n)
            print(f"  load {n:>3} callers: {s.answered}/{s.turns} answered, p50 "
                  f"{s.p50_ms:.0f} ms, p95 {s.p95_ms:.0f} ms, max {s.max_ms:.0f} ms", flush=True)
    return run


def progress_line(r: TurnResult) -> str:
    figure = (f"v2v {r.v2v_ms:.0f} ms" if r.v2v_ms is not None
              else f"barge-in {r.barge_in_ms:.0f} ms" if r.barge_in_ms is not None else "-")
    stages = " ".join(f"{k.removesuffix('_ms')} {v:.0f}" for k, v in r.stages.items())
    wer = f" WER {r.wer:.2f}" if r.wer is not None and r.kind in SPEECH_KINDS else ""
    flags = "".join(f" [{f.replace('_', ' ')}]" for f in r.failures)
    flags += " [re-prompt]" if r.reprompted else ""
    error = f" ({r.error})" if r.error else ""
    return f"  r{r.repeat + 1} {r.utterance:<16} {figure:<18} {stages}{wer}{flags}{error}"


def run_info(args: argparse.Namespace, serve_args: list[str]) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": datetime.date.today().isoformat(), "commit": _commit(),
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "service": args.url or "started by the runner (bundled models, zero-delay LLM)"}
    if serve_args:
        info["serve_args"] = " ".join(serve_args)
    return info


def _commit() -> str:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=5, cwd=Path(__file__).parent)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() or "unknown"
