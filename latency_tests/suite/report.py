"""DIR/report.md, DIR/results.json and the charts of one run."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from latency_tests.suite.baseline import Finding, table, timing_metrics, utterance_records
from latency_tests.suite.cost import cost_lines
from latency_tests.suite.load import LoadLevel, capacity, summarize_level
from latency_tests.suite.results import FUNCTIONAL_FLAGS, RunResults, TurnResult
from latency_tests.suite.stats import median, percentile
from voice.errors import ConfigError
from voice.usage import Prices

CHARTS = {"stages.png": "Where the time goes, per utterance",
          "v2v.png": "Client voice-to-voice distribution",
          "concurrency.png": "Voice-to-voice against concurrent callers"}


def load_levels(run: RunResults) -> list[LoadLevel]:
    levels = sorted({t.concurrency for t in run.load})
    return [summarize_level(run.load, n) for n in levels]


def write_report(run: RunResults, out: Path, findings: Sequence[Finding] | None = None) -> Path:
    try:
        from latency_tests.suite import charts
    except ImportError as exc:  # matplotlib is an extra: pip install -e ".[latency]"
        raise ConfigError(f"the report's charts need matplotlib ({exc}); install the "
                          "project with its latency extra: pip install -e \".[latency]\"") from exc
    out.mkdir(parents=True, exist_ok=True)
    run.save(out / "results.json")
    label = f"{run.transport} x {run.pipeline}" + (" (quick)" if run.quick else "")
    charts.stage_bars(run.turns, out / "stages.png", f"Server stages and client v2v: {label}")
    charts.v2v_distribution(run.turns, out / "v2v.png", f"Client voice-to-voice: {label}")
    levels = load_levels(run)
    cap = capacity(levels, run.budget_ms)
    charts.concurrency_chart(levels, run.budget_ms, cap, out / "concurrency.png",
                             f"Load: {label}, one worker")
    path = out / "report.md"
    path.write_text(markdown(run, levels, cap, findings, out))
    return path


def markdown(run: RunResults, levels: Sequence[LoadLevel], cap: int,
             findings: Sequence[Finding] | None, out: Path) -> str:
    info = ", ".join(f"{k} {v}" for k, v in run.info.items())
    lines = [f"# Latency run: {run.transport} x {run.pipeline}"
             + (" (quick)" if run.quick else ""), "",
             f"{len(run.turns)} trials ({run.repeat} repeat(s) of each clip); {info}.", "",
             "## Summary", "", "| metric | value |", "|---|---|"]
    for metric, value in timing_metrics(run.turns).items():
        shown = f"{value:.3f}" if metric == "wer" else f"{value:.0f} ms"
        lines.append(f"| {metric} | {shown} |")
    lines += ["", headline(run.turns)]
    lines += ["", "## Cost", "", *cost_lines(run, Prices())]
    lines += ["", "## Functional failures", "", functional_summary(run.turns)]
    if findings is not None:
        lines += ["", "## Check against the baseline", "", table(findings)]
    lines += ["", "## Per utterance", "", *utterance_table(run.turns)]
    if levels:
        lines += ["", "## Load", "", *load_table(levels, run.budget_ms),
                  "", f"**Capacity of one worker: {cap} concurrent callers** (largest N whose "
                  f"p95 client voice-to-voice stays within {run.budget_ms:.0f} ms with every "
                  "turn answered)."]
    lines += ["", "## Charts", ""]
    lines += [f"![{title}]({name})" for name, title in CHARTS.items() if (out / name).exists()]
    return "\n".join(lines) + "\n"


def headline(turns: Sequence[TurnResult]) -> str:
    """Plain medians and p95 over every counted turn (the metrics above are clip means)."""
    timed = [t for t in turns if t.timed]
    client = [t.v2v_ms for t in timed if t.v2v_ms is not None]
    server = [t.server_v2v_ms for t in timed if t.server_v2v_ms is not None]
    if not client:
        return "No turn was answered."
    return (f"Client voice-to-voice over {len(client)} counted turns: median "
            f"{median(client):.0f} ms, p95 {percentile(client, 95):.0f} ms; server "
            f"voice-to-voice median {median(server):.0f} ms.")


def functional_summary(turns: Sequence[TurnResult]) -> str:
    rows = []
    for name, record in utterance_records(turns).items():
        for flag in FUNCTIONAL_FLAGS:
            if record[flag]:
                rows.append(f"- {name}: {flag.replace('_', ' ')} in {record[flag]} of "
                            f"{record['runs']} run(s)")
    errors = sorted({f"- {t.utterance}: {t.error}" for t in turns if t.error})
    return "\n".join(rows + errors) if rows or errors else "none"


def _ms(values: Sequence[float | None]) -> str:
    present = [v for v in values if v is not None]
    return f"{median(present):.0f}" if present else "-"


def utterance_table(turns: Sequence[TurnResult]) -> list[str]:
    stages = ("endpointing_ms", "stt_ms", "llm_ms", "tts_ms", "transport_ms")
    lines = ["| clip | kind | condition | runs | client v2v | server v2v | "
             + " | ".join(s.removesuffix("_ms") for s in stages)
             + " | stt work | WER | barge-in | transcript (last run) | failures |",
             "|" + "---|" * (12 + len(stages) - 1)]
    by_utterance: dict[str, list[TurnResult]] = defaultdict(list)
    for t in turns:
        by_utterance[t.utterance].append(t)
    for name, runs in by_utterance.items():
        first = runs[0]
        timed = [t for t in runs if t.timed]
        wers = [t.wer for t in runs if t.wer is not None]
        failures = sorted({f for t in runs for f in t.failures})
        cells = [name, first.kind, first.condition, str(len(runs)),
                 _ms([t.v2v_ms for t in timed]), _ms([t.server_v2v_ms for t in timed]),
                 *(_ms([t.stages.get(s) for t in timed]) for s in stages),
                 _ms([t.work.get("stt_ms") for t in timed]),
                 f"{median(wers):.2f}" if wers else "-",
                 _ms([t.barge_in_ms for t in runs]),
                 runs[-1].transcript.replace("|", "/") or "-",
                 ", ".join(f.replace("_", " ") for f in failures) or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def load_table(levels: Sequence[LoadLevel], budget_ms: float) -> list[str]:
    lines = ["| callers | turns | answered | p50 | p95 | max | within budget |",
             "|---|---|---|---|---|---|---|"]
    for level in levels:
        lines.append(f"| {level.concurrency} | {level.turns} | {level.answered} | "
                     f"{level.p50_ms:.0f} ms | {level.p95_ms:.0f} ms | {level.max_ms:.0f} ms | "
                     f"{'yes' if level.within(budget_ms) else 'no'} |")
    return lines
