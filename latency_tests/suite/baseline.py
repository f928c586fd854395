"""Baselines and the noise-aware check of a run against one.

A run is summarized into **metrics** (one number each) and **utterance records**
(functional facts per clip). A timing metric is the 20 %-trimmed mean over clips of
each clip's median over its repeats: one slow repeat moves nothing, one odd clip
little, and a clip whose policy wait jumps between two values (the end-of-turn policy
reads its transcript as finished or not) moves it by a small step instead of flipping
a median between two clusters. The p95 of client voice-to-voice over all turns
watches the tail.

A metric regresses when `now > multiple * (baseline * (1 + rel) + abs)`: the relative
tolerance absorbs the machine's proportional noise, the absolute one the noise of
figures near zero, and `multiple` (1 normally; 3 in CI) makes room for a slower or
busier machine. Lower is better for every metric.

Functional regressions fail whatever the tolerances: a clip cut off, falsely
triggered, unanswered, or not interrupted where the baseline never was; a transcript
whose median WER exceeds the baseline's worst by `wer_slack` (and `WER_FLOOR`); a stage
that every baseline turn had missing from a turn. A failure the baseline already
shows on that clip is known: reported, not failed.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from latency_tests.suite.metrics import SPEECH_KINDS
from latency_tests.suite.results import FUNCTIONAL_FLAGS, RunResults, TurnResult
from latency_tests.suite.stats import mean, median, percentile, trimmed_mean

FORMAT = 1
WER_SLACK = 0.3
WER_FLOOR = 0.4


@dataclass(frozen=True)
class Tolerance:
    rel: float
    abs: float

    def limit(self, base: float, multiple: float = 1.0) -> float:
        return multiple * (base * (1 + self.rel) + self.abs)


# the first prefix that matches a metric's name gives its tolerance
TOLERANCES: tuple[tuple[str, Tolerance], ...] = (
    ("client_v2v_p95_ms", Tolerance(0.30, 100)),
    ("client_v2v_ms[", Tolerance(0.20, 60)),  # per kind or condition: fewer turns
    ("client_v2v_ms", Tolerance(0.15, 40)),
    ("server_v2v_ms", Tolerance(0.15, 40)),
    ("stage.", Tolerance(0.20, 30)),
    ("work.", Tolerance(0.25, 25)),
    ("barge_in_ms", Tolerance(0.30, 50)),
    ("wer", Tolerance(0.0, 0.05)),
)


def tolerance_for(metric: str) -> Tolerance:
    return next(t for prefix, t in TOLERANCES if metric.startswith(prefix))


def clip_mean(turns: Iterable[TurnResult], value: Callable[[TurnResult], float | None]) -> float:
    """The trimmed mean over clips of each clip's median over its repeats."""
    per_utterance: dict[str, list[float]] = defaultdict(list)
    for t in turns:
        v = value(t)
        if v is not None:
            per_utterance[t.utterance].append(v)
    return trimmed_mean([median(vs) for vs in per_utterance.values()])


def timing_metrics(turns: Sequence[TurnResult]) -> dict[str, float]:
    timed = [t for t in turns if t.timed]
    found: dict[str, float] = {
        "client_v2v_ms": clip_mean(timed, lambda t: t.v2v_ms),
        "client_v2v_p95_ms": percentile([t.v2v_ms for t in timed if t.v2v_ms is not None], 95),
        "server_v2v_ms": clip_mean(timed, lambda t: t.server_v2v_ms),
    }
    for kind in SPEECH_KINDS:
        found[f"client_v2v_ms[{kind}]"] = clip_mean(
            (t for t in timed if t.kind == kind), lambda t: t.v2v_ms)
    for condition in sorted({t.condition for t in timed}):
        found[f"client_v2v_ms[{condition}]"] = clip_mean(
            (t for t in timed if t.condition == condition), lambda t: t.v2v_ms)
    for name in dict.fromkeys(n for t in timed for n in t.stages):
        found[f"stage.{name}"] = clip_mean(timed, _getter("stages", name))
    for name in dict.fromkeys(n for t in timed for n in t.work):
        found[f"work.{name}"] = clip_mean(timed, _getter("work", name))
    found["barge_in_ms"] = clip_mean(
        (t for t in turns if t.kind == "interruption"), lambda t: t.barge_in_ms)
    speech = [t for t in turns if t.kind in SPEECH_KINDS]
    wers = utterance_wers(speech)
    found["wer"] = mean(list(wers.values()))
    return {k: round(v, 4 if k == "wer" else 1) for k, v in found.items() if not math.isnan(v)}


def _getter(family: str, name: str) -> Callable[[TurnResult], float | None]:
    def get(t: TurnResult) -> float | None:
        value: float | None = getattr(t, family).get(name)
        return value
    return get


def utterance_wers(turns: Iterable[TurnResult]) -> dict[str, float]:
    per: dict[str, list[float]] = defaultdict(list)
    for t in turns:
        if t.wer is not None:
            per[t.utterance].append(t.wer)
    return {u: median(vs) for u, vs in per.items()}


def utterance_records(turns: Sequence[TurnResult]) -> dict[str, dict[str, Any]]:
    by_utterance: dict[str, list[TurnResult]] = defaultdict(list)
    for t in turns:
        by_utterance[t.utterance].append(t)
    wers = utterance_wers(turns)
    records: dict[str, dict[str, Any]] = {}
    for name, runs in by_utterance.items():
        worst = max((r.wer for r in runs if r.wer is not None), default=None)
        record: dict[str, Any] = {"kind": runs[0].kind, "runs": len(runs),
                                  "wer": round(wers[name], 4) if name in wers else None,
                                  "wer_max": worst}
        for flag in FUNCTIONAL_FLAGS:
            record[flag] = sum(getattr(r, flag) for r in runs)
        records[name] = record
    return records


def common_stages(turns: Sequence[TurnResult]) -> list[str]:
    """Stages present in every answered turn."""
    answered = [set(t.stages) for t in turns if t.timed]
    return sorted(set.intersection(*answered)) if answered else []


def make_baseline(run: RunResults) -> dict[str, Any]:
    return {
        "format": FORMAT, "transport": run.transport, "pipeline": run.pipeline,
        "quick": run.quick, "repeat": run.repeat, "info": run.info,
        "metrics": timing_metrics(run.turns), "stages": common_stages(run.turns),
        "utterances": utterance_records(run.turns),
    }


@dataclass(frozen=True)
class Finding:
    """One row of the check: a metric compared, or a functional failure."""

    subject: str  # metric name, or "utterance: what"
    baseline: float | None
    now: float | None
    limit: float | None
    regressed: bool
    functional: bool = False
    known: bool = False  # a functional failure the baseline shows too


def compare(run: RunResults, baseline: dict[str, Any], multiple: float = 1.0,
            wer_slack: float = WER_SLACK) -> list[Finding]:
    findings = compare_metrics(timing_metrics(run.turns), baseline["metrics"], multiple)
    return findings + functional_findings(run.turns, baseline, wer_slack)


def compare_metrics(now: dict[str, float], base: dict[str, float],
                    multiple: float = 1.0) -> list[Finding]:
    findings = []
    for metric, base_value in base.items():
        if metric not in now:
            continue
        limit = tolerance_for(metric).limit(base_value, multiple)
        findings.append(Finding(metric, base_value, now[metric], round(limit, 4),
                                regressed=now[metric] > limit))
    return findings


def functional_findings(turns: Sequence[TurnResult], baseline: dict[str, Any],
                        wer_slack: float = WER_SLACK) -> list[Finding]:
    base_records: dict[str, dict[str, Any]] = baseline.get("utterances", {})
    findings = []
    for name, record in utterance_records(turns).items():
        base = base_records.get(name, {})
        for flag in FUNCTIONAL_FLAGS:
            if record[flag]:
                known = base.get(flag, 0) > 0
                findings.append(Finding(f"{name}: {flag.replace('_', ' ')}",
                                        base.get(flag, 0) / max(1, base.get("runs", 1)),
                                        record[flag] / record["runs"], 0.0,
                                        regressed=not known, functional=True, known=known))
        if record["wer"] is not None:  # against the worst the baseline heard
            base_wer = base.get("wer_max", base.get("wer")) or 0.0
            limit = max(base_wer + wer_slack, WER_FLOOR)
            if record["wer"] > limit:
                findings.append(Finding(f"{name}: wrong transcript (WER)", base_wer,
                                        record["wer"], limit, regressed=True, functional=True))
    required = set(baseline.get("stages", []))
    for t in turns:
        for stage in sorted(required - set(t.stages) if t.timed else set()):
            findings.append(Finding(f"{t.utterance}: missing stage {stage}", None, None, None,
                                    regressed=True, functional=True))
    return findings


def regressions(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.regressed]


def _fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    if metric == "wer" or "WER" in metric:
        return f"{value:.2f}"
    if metric.endswith("_ms") or metric.endswith("]"):
        return f"{value:.0f} ms"
    return f"{value:.2f}"


def table(findings: Sequence[Finding], everything: bool = False) -> str:
    """A Markdown table of the regressions (or of every row)."""
    rows = [f for f in findings if everything or f.regressed or f.known]
    if not rows:
        return "no regressions"
    lines = ["| what | baseline | now | limit | change | verdict |", "|---|---|---|---|---|---|"]
    for f in rows:
        change = "-"
        if f.baseline is not None and f.now is not None and not f.functional:
            delta = f.now - f.baseline
            pct = f" ({delta / f.baseline:+.0%})" if f.baseline else ""
            change = (f"{delta:+.2f}" if f.subject == "wer" else f"{delta:+.0f} ms") + pct
        verdict = "REGRESSED" if f.regressed else "known" if f.known else "ok"
        if f.functional and f.limit == 0.0:  # a rate: shown as rates, no limit
            base, now, limit = f"{f.baseline:.0%}", f"{f.now:.0%}", "0%"
        else:
            base, now, limit = (_fmt(f.subject, f.baseline), _fmt(f.subject, f.now),
                                _fmt(f.subject, f.limit))
        lines.append(f"| {f.subject} | {base} | {now} | {limit} | {change} | {verdict} |")
    return "\n".join(lines)
