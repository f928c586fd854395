"""Cost beside latency and WER: what a run's sessions used (their `turn.usage` events)
at the price table's rates (voice/usage.py), per minute of conversation; and several
runs side by side (`voice latency compare`), the cascade against the realtime
pipeline on the same corpus: one table and one chart."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from latency_tests.suite.baseline import timing_metrics
from latency_tests.suite.results import RunResults
from latency_tests.suite.stats import median, percentile
from voice.usage import Models, Prices, Usage

_COUNTS = {f.name for f in dataclasses.fields(Usage)}


def run_cost(run: RunResults, prices: Prices,
             local_as: dict[str, str] | None = None) -> dict[str, Any]:
    """The run's usage added over its sessions (concurrency-1 trials), its cost, and
    the cost per minute of those sessions. `local_as` prices the work of local models
    as a hosted model's (`{"stt": "whisper-1", "tts": "tts-1"}`): what the same
    conversations would cost with those."""
    total = Usage()
    seconds = 0.0
    models: dict[str, str] = {}
    for turn in run.turns:
        total.add(Usage(**{k: v for k, v in turn.usage.items() if k in _COUNTS}))  # type: ignore[arg-type]
        seconds += turn.seconds
        models = turn.models or models
    if local_as:
        models = {part: model or local_as.get(part, "") for part, model in models.items()}
    cost = prices.cost(total, Models(**models))
    minutes = seconds / 60
    return {"usage": total.to_dict(), "models": models, "minutes": round(minutes, 2),
            "cost": cost, "usd_per_minute": cost["usd"] / minutes if minutes else 0.0}


def cost_lines(run: RunResults, prices: Prices) -> list[str]:
    """The report's cost section."""
    figures = run_cost(run, prices)
    cost = figures["cost"]
    used = ", ".join(f"{k} {v}" for k, v in figures["usage"].items() if v)
    rows = ", ".join(f"{model} (prices of {dated})" for model, dated in cost["prices"].items())
    lines = [f"**${figures['usd_per_minute']:.4f} per minute** of conversation "
             f"(${cost['usd']:.4f} over {figures['minutes']} min of sessions).", "",
             f"- used: {used or 'nothing reported'}",
             f"- priced as: {rows or 'local models only (no price per use)'}"]
    if cost["unpriced"]:
        lines.append(f"- no price for: {', '.join(cost['unpriced'])} (counted as free)")
    return lines


def comparison(runs: list[RunResults], prices: Prices,
               local_as: dict[str, str] | None = None) -> list[str]:
    """One row per run: latency, WER and cost per minute; with `local_as`, a second row
    for a run that used local models, priced as if hosted ones had done their work."""
    lines = ["| run | median client v2v | p95 client v2v | WER | $ per minute | priced as |",
             "|---|---|---|---|---|---|"]
    rows: list[tuple[RunResults, dict[str, str] | None]] = [(run, None) for run in runs]
    if local_as:
        rows += [(run, local_as) for run in runs if not run_cost(run, prices)["models"]
                 .get("realtime")]
    for run, as_hosted in rows:
        client = [t.v2v_ms for t in run.turns if t.timed and t.v2v_ms is not None]
        wer = timing_metrics(run.turns).get("wer")
        figures = run_cost(run, prices, as_hosted)
        priced = ", ".join(figures["cost"]["prices"]) or "local models"
        if as_hosted:
            priced += " (the local STT/TTS priced as these)"
        lines.append(
            f"| {run.transport} x {run.pipeline} | "
            f"{median(client):.0f} ms | {percentile(client, 95):.0f} ms | "
            f"{wer:.3f} | ${figures['usd_per_minute']:.4f} | {priced} |"
            if client and wer is not None else
            f"| {run.transport} x {run.pipeline} | - | - | - | "
            f"${figures['usd_per_minute']:.4f} | {priced} |")
    return lines


def comparison_chart(runs: list[RunResults], prices: Prices, path: Path) -> None:
    """Median client voice-to-voice and cost per minute, one bar pair per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{r.transport} x {r.pipeline}" for r in runs]
    v2v = [median([t.v2v_ms for t in r.turns if t.timed and t.v2v_ms is not None] or [0.0])
           for r in runs]
    usd = [run_cost(r, prices)["usd_per_minute"] for r in runs]
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    left.bar(names, v2v, color="#4a7fb5")
    left.set_title("median client voice-to-voice (ms)")
    right.bar(names, usd, color="#c0703a")
    right.set_title("cost per minute of conversation ($)")
    for axis in (left, right):
        axis.tick_params(axis="x", labelrotation=15)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
