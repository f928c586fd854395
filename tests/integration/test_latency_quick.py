"""The latency suite end to end (`voice latency run`, docs/latency.md): the real CLI
starts the real service (bundled models, local zero-delay LLM server) and says the
quick clips over the WebSocket with the real client.

- Quick mode against the committed quick baseline, with the CI multiple: it fails on a
  functional regression or a median beyond 3x the baseline's limits, never on noise.
- A stage slowed on purpose (`--debug-stage-delay stt=150`) is reported as a
  regression of that stage and of no other. Both runs use the fixed end-of-turn
  preset, whose wait does not depend on the transcript, so the slower transcript
  cannot move the endpointing stage, with a 700 ms wait: the slowed transcript, the
  LLM and the first TTS piece (~350 ms of work on a loaded 2-core machine) still
  finish inside it, so no other stage reaches the critical path. What is tested is
  the report's attribution.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from latency_tests.suite.baseline import compare, regressions
from latency_tests.suite.metrics import SPEECH_KINDS
from latency_tests.suite.results import RunResults
from tests.conftest import word_recall

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
QUICK_BASELINE = ROOT / "latency_tests" / "baselines" / "quick-ws-cascade.json"
CI_MULTIPLE = "3"
DELAY_CLIPS = "c_music,c_call,c_volume,c_time"  # clean, short; none pauses inside
PNG = b"\x89PNG\r\n\x1a\n"


def voice(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=timeout,
                          env={**os.environ, "VOICE_LOG_LEVEL": "WARNING"})


def explain(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("latency") / "quick"
    done = voice("latency", "run", "--quick", "--out", str(out),
                 "--baseline", str(QUICK_BASELINE), "--multiple", CI_MULTIPLE)
    return done, out


def test_quick_mode_passes_its_committed_baseline(
        quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    done, _ = quick_run
    assert done.returncode == 0, explain(done)
    assert "no regressions" in done.stdout
    assert "| client_v2v_ms |" in done.stdout  # the comparison table was printed


def test_quick_mode_records_every_turn_as_a_caller_heard_it(
        quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    done, out = quick_run
    run = RunResults.load_file(out / "results.json")
    assert {t.kind for t in run.turns} == {*SPEECH_KINDS, "interruption", "no_turn"}, explain(done)
    for t in run.turns:
        if t.kind in SPEECH_KINDS:
            assert t.v2v_ms is not None and t.v2v_ms > 0, t
            assert {"endpointing_ms", "transport_ms"} <= set(t.stages), t
            assert t.server_v2v_ms is not None and t.work.get("stt_ms") is not None, t
        elif t.kind == "interruption":
            assert not t.missed_barge_in and t.barge_in_ms is not None, t
        else:
            assert not t.false_trigger and t.turns == 0, t
    question = next(t for t in run.turns if t.utterance == "q_paris")
    assert word_recall(question.reference, question.transcript) >= 0.8, question.transcript
    report = (out / "report.md").read_text()
    assert "## Check against the baseline" in report and "| q_paris |" in report
    for chart in ("stages.png", "v2v.png"):
        assert (out / chart).read_bytes()[:8] == PNG


def test_a_slowed_stt_stage_is_a_regression_of_stt_and_of_no_other_stage(
        tmp_path: Path) -> None:
    common = ["latency", "run", "--only", DELAY_CLIPS, "--repeat", "1",
              "--serve-arg=--turn-preset=fixed", "--serve-arg=--silence-ms=700"]
    baseline = tmp_path / "baseline.json"
    plain = voice(*common, "--out", str(tmp_path / "plain"), "--baseline", str(baseline),
                  "--update-baseline")
    assert plain.returncode == 0, explain(plain)
    slow = voice(*common, "--out", str(tmp_path / "slow"), "--debug-stage-delay", "stt=150",
                 "--baseline", str(baseline))
    assert slow.returncode == 1, explain(slow)
    findings = compare(RunResults.load_file(tmp_path / "slow" / "results.json"),
                       json.loads(baseline.read_text()))
    regressed = {f.subject for f in regressions(findings)}
    stages = {s for s in regressed if s.startswith(("stage.", "work."))}
    assert stages == {"work.stt_ms"}, explain(slow)
    assert not [f for f in regressions(findings) if f.functional], explain(slow)
    assert "| work.stt_ms |" in slow.stdout and "REGRESSED" in slow.stdout
