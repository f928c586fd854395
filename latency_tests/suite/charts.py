"""The report's PNG charts (matplotlib, no display needed)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
from matplotlib.figure import Figure  # noqa: E402

from latency_tests.suite.load import LoadLevel  # noqa: E402
from latency_tests.suite.results import TurnResult  # noqa: E402
from latency_tests.suite.stats import median  # noqa: E402

STAGE_ORDER = ("endpointing_ms", "stt_ms", "llm_ms", "first_text_ms", "tts_ms", "transport_ms")
STAGE_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")


def stage_bars(turns: Sequence[TurnResult], path: Path, title: str) -> None:
    """Per utterance: the median of each server stage, stacked (they add up to the
    server's voice-to-voice), and the client's median voice-to-voice as a dot."""
    by_utterance: dict[str, list[TurnResult]] = defaultdict(list)
    for t in turns:
        if t.timed:
            by_utterance[t.utterance].append(t)
    names = list(by_utterance)
    if not names:
        return
    stages = [s for s in STAGE_ORDER if any(s in t.stages for t in turns)]
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.28 * len(names)))
    left = [0.0] * len(names)
    for stage, colour in zip(stages, STAGE_COLOURS, strict=False):
        widths = [median([t.stages[stage] for t in by_utterance[n] if stage in t.stages] or [0])
                  for n in names]
        ax.barh(names, widths, left=left, color=colour, label=stage.removesuffix("_ms"))
        left = [a + b for a, b in zip(left, widths, strict=True)]
    client = [median([t.v2v_ms for t in by_utterance[n] if t.v2v_ms is not None]) for n in names]
    ax.plot(client, names, "k|", markersize=12, markeredgewidth=2, label="client v2v")
    ax.invert_yaxis()
    ax.set_xlabel("ms after the true end of speech (medians over repeats)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path)


def v2v_distribution(turns: Sequence[TurnResult], path: Path, title: str) -> None:
    """Client voice-to-voice: every turn's histogram, and box plots by kind and condition."""
    timed = [t for t in turns if t.timed and t.v2v_ms is not None]
    if not timed:
        return
    fig, (hist, boxes) = plt.subplots(1, 2, figsize=(11, 4), width_ratios=(1, 1.3))
    values = [t.v2v_ms for t in timed if t.v2v_ms is not None]
    hist.hist(values, bins=min(30, max(5, len(values) // 3)), color="#4c72b0")
    hist.axvline(median(values), color="k", linestyle="--", label=f"median {median(values):.0f}")
    hist.set_xlabel("client voice-to-voice (ms)")
    hist.set_ylabel("turns")
    hist.legend(fontsize=8)
    groups: dict[str, list[float]] = defaultdict(list)
    for t in timed:
        if t.v2v_ms is not None:
            groups[t.kind].append(t.v2v_ms)
            groups[t.condition].append(t.v2v_ms)
    labels = sorted(groups, key=lambda g: (g not in ("command", "question", "paused"), g))
    boxes.boxplot([groups[g] for g in labels], tick_labels=labels, vert=False)
    boxes.invert_yaxis()
    boxes.set_xlabel("client voice-to-voice (ms)")
    boxes.grid(axis="x", alpha=0.3)
    fig.suptitle(title)
    _save(fig, path)


def concurrency_chart(levels: Sequence[LoadLevel], budget_ms: float, capacity: int,
                      path: Path, title: str) -> None:
    if not levels:
        return
    n = [level.concurrency for level in levels]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(n, [level.p50_ms for level in levels], "o-", label="p50")
    ax.plot(n, [level.p95_ms for level in levels], "s-", label="p95")
    ax.plot(n, [level.max_ms for level in levels], "x:", label="max")
    ax.axhline(budget_ms, color="r", linestyle="--", label=f"budget {budget_ms:.0f} ms (p95)")
    if capacity:
        ax.axvline(capacity, color="g", alpha=0.5, label=f"capacity {capacity}")
    ax.set_xlabel("concurrent callers")
    ax.set_ylabel("client voice-to-voice (ms)")
    ax.set_xticks(n)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)


def _save(fig: Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
