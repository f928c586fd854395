"""One turn's figures (`TurnResult`), as results.json stores them, made from a trial."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from latency_tests.suite import metrics
from latency_tests.suite.corpus import Utterance

FUNCTIONAL_FLAGS = ("cut_off", "false_trigger", "no_reply", "missed_barge_in")


@dataclass
class TurnResult:
    utterance: str
    source: str
    kind: str
    condition: str  # clean, snr20, snr10, telephone
    transport: str
    pipeline: str
    repeat: int = 0
    concurrency: int = 1  # callers at once (load runs)
    caller: int = 0
    v2v_ms: float | None = None  # client: last voiced sample sent -> first audible reply
    server_v2v_ms: float | None = None
    stages: dict[str, float] = field(default_factory=dict)  # turn.latency critical path
    work: dict[str, float] = field(default_factory=dict)  # each stage's own duration
    stamps_ms: dict[str, float] = field(default_factory=dict)
    speculative: bool | None = None
    reference: str = ""
    transcript: str = ""
    wer: float | None = None
    turns: int = 0  # answered turns (transcript.final) seen
    cut_off: bool = False
    false_trigger: bool = False
    no_reply: bool = False
    reprompted: bool = False  # answered with the re-prompt: heard, not understood
    missed_barge_in: bool = False
    barge_in_ms: float | None = None
    reply_gap_ms: float | None = None  # the longest the reply's playback ran dry
    usage: dict[str, float] = field(default_factory=dict)  # the session's turn.usage
    models: dict[str, str] = field(default_factory=dict)  # the priced models it names
    seconds: float = 0.0  # the session's length (for cost per minute)
    error: str = ""

    @property
    def failures(self) -> list[str]:
        return [flag for flag in FUNCTIONAL_FLAGS if getattr(self, flag)]

    @property
    def timed(self) -> bool:
        """A speech turn whose voice-to-voice counts: answered, not cut off."""
        return self.kind in metrics.SPEECH_KINDS and self.v2v_ms is not None and not self.cut_off

    @classmethod
    def from_trial(cls, utt: Utterance, trial: metrics.Trial, transport: str, pipeline: str,
                   **where: Any) -> TurnResult:
        latency = metrics.answered_latency(trial) or {}
        stages: dict[str, float] = dict(latency.get("stages", {}))
        stamps: dict[str, float] = dict(latency.get("stamps_ms", {}))
        transcript = metrics.answered_transcript(trial)
        missed, reaction = metrics.barge_in(trial)
        speaks = utt.kind in metrics.SPEECH_KINDS
        used, models = metrics.usage(trial)
        return cls(
            utterance=utt.name, source=utt.source, kind=utt.kind, condition=utt.condition,
            transport=transport, pipeline=pipeline, **where,
            v2v_ms=metrics.voice_to_voice_ms(trial) if speaks else None,
            server_v2v_ms=stages.pop("voice_to_voice_ms", None),
            stages=stages, work=metrics.stage_work_ms(stamps), stamps_ms=stamps,
            speculative=latency.get("speculative"), reference=utt.text, transcript=transcript,
            wer=metrics.wer(utt.text, transcript) if speaks else None,
            turns=metrics.answered_turns(trial), cut_off=metrics.is_cut_off(trial),
            false_trigger=metrics.is_false_trigger(trial), no_reply=metrics.has_no_reply(trial),
            reprompted=metrics.was_reprompted(trial), missed_barge_in=missed, barge_in_ms=reaction,
            reply_gap_ms=metrics.reply_gap_ms(trial) if speaks else None,
            usage=used, models=models, seconds=metrics.session_seconds(trial))

    @classmethod
    def failed(cls, utt: Utterance, transport: str, pipeline: str, error: str,
               **where: Any) -> TurnResult:
        """A trial whose client failed (connection refused, call rejected, ...)."""
        return cls(utterance=utt.name, source=utt.source, kind=utt.kind,
                   condition=utt.condition, transport=transport, pipeline=pipeline, **where,
                   reference=utt.text, no_reply=utt.kind in metrics.SPEECH_KINDS,
                   missed_barge_in=utt.kind == "interruption", error=error)


@dataclass
class RunResults:
    """Everything one `voice latency run` measured (results.json)."""

    transport: str
    pipeline: str
    quick: bool
    repeat: int
    info: dict[str, Any] = field(default_factory=dict)  # machine, commit, settings
    turns: list[TurnResult] = field(default_factory=list)  # concurrency 1, one clip each
    load: list[TurnResult] = field(default_factory=list)  # concurrency runs
    budget_ms: float = 800.0

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load_file(cls, path: Path) -> RunResults:
        data: dict[str, Any] = json.loads(path.read_text())
        turns = [TurnResult(**t) for t in data.pop("turns")]
        load = [TurnResult(**t) for t in data.pop("load")]
        return cls(**data, turns=turns, load=load)
