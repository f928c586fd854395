"""The latency suite's metric computations (latency_tests/suite) on hand-made timelines:
WER, cut-off, false-trigger and barge-in detection, percentiles, tolerances, and the
baseline check's verdicts."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from latency_tests.suite import metrics
from latency_tests.suite.baseline import (
    Tolerance,
    clip_mean,
    compare_metrics,
    functional_findings,
    make_baseline,
    regressions,
    timing_metrics,
)
from latency_tests.suite.load import LoadLevel, capacity
from latency_tests.suite.metrics import Heard, Trial
from latency_tests.suite.results import RunResults, TurnResult
from latency_tests.suite.stats import median, percentile, trimmed_mean
from pipelines.providers.faults import delayed, parse_stage_delays
from pipelines.providers.models import CascadeModels
from pipelines.providers.stt import Transcript
from voice.errors import ConfigError
from voice.settings import Settings

pytestmark = pytest.mark.unit

MS = 1_000_000


def event(kind: str, at_ms: float, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "_received_ns": int(at_ms * MS), **fields}


def audible(at_ms: float, heard_ms: float | None = None) -> Heard:
    """A reply chunk arriving at `at_ms`, heard at `heard_ms` (default: on arrival)."""
    arrival = int(at_ms * MS)
    return Heard(arrival, int((heard_ms if heard_ms is not None else at_ms) * MS))


def silent(at_ms: float) -> Heard:
    return Heard(int(at_ms * MS), None)


def answered(end_ms: float = 3000, reply_ms: float = 3250, turn_id: int = 1) -> Trial:
    """A question whose speech left at `end_ms`, answered at `reply_ms`."""
    return Trial("question", [event("speech.started", 500, turn_id=turn_id),
                              event("speech.stopped", reply_ms - 10, turn_id=turn_id),
                              event("transcript.final", reply_ms - 5, turn_id=turn_id, text="hi"),
                              event("turn.latency", reply_ms + 2, turn_id=turn_id)],
                 [silent(reply_ms - 100), audible(reply_ms), audible(reply_ms + 20)],
                 speech_end_sent_ns=int(end_ms * MS))


# -- word error rate -------------------------------------------------------------------
def test_wer_is_zero_for_the_same_words_whatever_the_case_punctuation_and_numerals() -> None:
    assert metrics.wer("Set a timer for ten minutes.", "set a timer for 10 minutes") == 0.0
    assert metrics.wer("My number is five five five one two three four.",
                       "My number is 555-1234.") == 0.0
    assert metrics.wer("What time is it?", "What time is it") == 0.0


def test_wer_counts_substitutions_deletions_and_insertions_over_reference_words() -> None:
    assert metrics.wer("turn on the lights", "turn off the lights") == 0.25
    assert metrics.wer("turn on the lights", "turn the lights") == 0.25
    assert metrics.wer("turn on the lights", "please turn on all the lights") == 0.5
    assert metrics.wer("stop the music", "") == 1.0
    assert metrics.wer("", "") == 0.0
    assert metrics.wer("", "hello") == 1.0


# -- voice-to-voice, cut-off, false triggers ---------------------------------------------
def test_voice_to_voice_runs_from_the_last_voiced_sample_to_the_first_audible_sample() -> None:
    trial = answered(end_ms=3000, reply_ms=3250)
    trial.audio.insert(0, silent(3100))  # the service's idle silence is not a reply
    assert metrics.voice_to_voice_ms(trial) == 250.0
    trial.audio = [audible(3240, heard_ms=3300)]  # buffered behind earlier audio
    assert metrics.voice_to_voice_ms(trial) == 300.0
    trial.audio = []
    assert metrics.voice_to_voice_ms(trial) is None
    assert metrics.has_no_reply(trial)


def test_a_reply_gap_is_the_longest_the_playback_ran_dry_after_the_reply_began() -> None:
    def chunk(play_ms: float, audible: bool = True) -> Heard:
        play = int(play_ms * MS)  # each chunk is 100 ms of audio, played on arrival
        return Heard(play, play if audible else None, play, play + 100 * MS)

    # silence before the reply is not a gap; 100 ms back to back is none; a sentence
    # that came 640 ms after the one before had played is one
    trial = Trial("command", audio=[chunk(0, False), chunk(500), chunk(600), chunk(700),
                                    chunk(1440), chunk(1540, False)])
    assert metrics.reply_gap_ms(trial) == 640.0
    assert metrics.reply_gap_ms(Trial("command", audio=[chunk(0, False)])) is None


def test_a_turn_ended_before_the_speech_was_all_sent_is_a_cut_off() -> None:
    trial = answered(end_ms=3000, reply_ms=3250)
    assert not metrics.is_cut_off(trial)
    # the turn ended in the pause: speech.stopped and the transcript arrived at 2000 ms
    early = Trial("paused", [event("speech.stopped", 2000, turn_id=1),
                             event("transcript.final", 2005, turn_id=1, text="book a table for")],
                  [audible(3300)], speech_end_sent_ns=3000 * MS)
    assert metrics.is_cut_off(early)
    # reply audio heard before the end is a cut-off too, silence is not
    heard_early = Trial("paused", [], [audible(2500)], speech_end_sent_ns=3000 * MS)
    assert metrics.is_cut_off(heard_early)
    quiet_early = Trial("paused", [], [silent(2500), audible(3300)],
                        speech_end_sent_ns=3000 * MS)
    assert not metrics.is_cut_off(quiet_early)


def test_a_no_turn_clip_triggers_falsely_on_any_transcript_reply_or_audible_audio() -> None:
    assert not metrics.is_false_trigger(Trial("no_turn", [event("speech.started", 800)],
                                              [silent(900)]))
    assert metrics.is_false_trigger(Trial("no_turn", [event("transcript.final", 900,
                                                            turn_id=1, text="Music")]))
    assert metrics.is_false_trigger(Trial("no_turn", [], [audible(1200)]))


def test_a_second_answered_turn_is_a_false_trigger_unless_a_cut_off_explains_it() -> None:
    trial = answered()
    assert not metrics.is_false_trigger(trial)
    trial.events.append(event("transcript.final", 3900, turn_id=2, text="noise"))
    assert metrics.answered_turns(trial) == 2
    assert metrics.is_false_trigger(trial)
    cut = Trial("paused", [event("transcript.final", 2000, turn_id=1, text="a"),
                           event("transcript.final", 3300, turn_id=2, text="a b")],
                [audible(3400)], speech_end_sent_ns=3000 * MS)
    assert metrics.is_cut_off(cut) and not metrics.is_false_trigger(cut)
    assert metrics.answered_transcript(cut) == "a b"  # the turn that answered the whole


# -- barge-in ----------------------------------------------------------------------------
def test_barge_in_reaction_runs_to_the_last_audible_audio_of_the_old_reply() -> None:
    trial = Trial("interruption",
                  [event("response.interrupted", 5200, turn_id=1, reason="barge_in"),
                   event("transcript.final", 5300, turn_id=2, text="wait stop")],
                  [audible(4000), audible(4980), silent(5050), audible(5400)],
                  speech_end_sent_ns=3000 * MS, barge_start_sent_ns=4900 * MS)
    assert metrics.barge_in(trial) == (False, 80.0)


def test_a_reply_that_was_not_interrupted_is_a_missed_barge_in() -> None:
    trial = Trial("interruption",
                  [event("response.interrupted", 4000, reason="barge_in")],  # before the caller
                  [audible(4950)], speech_end_sent_ns=3000 * MS, barge_start_sent_ns=4900 * MS)
    assert metrics.barge_in(trial) == (True, None)
    assert metrics.barge_in(answered()) == (False, None)  # no interruption said at all


def test_stage_work_comes_from_the_raw_stamps_even_when_speculation_hid_it() -> None:
    stamps = {"speech_end": 0.0, "stt_final": 60.0, "turn_end": 200.0,
              "llm_first_token": 75.0, "tts_first_text": 76.0, "tts_first_audio": 110.0,
              "first_audio_out": 201.0}
    assert metrics.stage_work_ms(stamps) == {"stt_ms": 60.0, "llm_ms": 15.0,
                                             "first_text_ms": 1.0, "tts_ms": 34.0}
    assert metrics.stage_work_ms({"speech_end": 0.0, "first_audio_out": 250.0}) == {}


# -- statistics, tolerances, baselines --------------------------------------------------
def test_percentiles_interpolate_and_are_nan_for_no_values() -> None:
    values = [float(v) for v in range(1, 101)]
    assert median(values) == 50.5
    assert percentile(values, 95) == pytest.approx(95.05)
    assert math.isnan(percentile([], 95))


def turn(name: str, v2v: float, kind: str = "question", repeat: int = 0,
         **extra: Any) -> TurnResult:
    stages = extra.pop("stages", {"endpointing_ms": v2v - 1, "transport_ms": 1.0})
    return TurnResult(utterance=name, source=name, kind=kind, condition="clean",
                      transport="ws", pipeline="cascade", repeat=repeat, v2v_ms=v2v,
                      server_v2v_ms=v2v - 5, stages=stages, wer=extra.pop("wer", 0.0), **extra)


def test_one_slow_repeat_does_not_move_the_clip_mean_and_one_odd_clip_little() -> None:
    turns = [turn("a", 240, repeat=0), turn("a", 250, repeat=1), turn("a", 900, repeat=2),
             turn("b", 300, repeat=0), turn("b", 310, repeat=1), turn("b", 305, repeat=2)]
    assert clip_mean(turns, lambda t: t.v2v_ms) == pytest.approx((250 + 305) / 2)
    clips = [turn(f"c{i}", 200 + i) for i in range(9)] + [turn("slow", 5000)]
    # 2 of 10 dropped at each end: the slow clip and 208, 200 and 201
    assert clip_mean(clips, lambda t: t.v2v_ms) == pytest.approx(204.5)


def test_a_trimmed_mean_moves_a_step_where_a_median_flips_between_clusters() -> None:
    before = [200.0] * 5 + [800.0] * 4
    after = [200.0] * 4 + [800.0] * 5  # one clip went from one cluster to the other
    assert median(after) - median(before) == 600
    assert trimmed_mean(after) - trimmed_mean(before) == pytest.approx(600 / 7)
    assert trimmed_mean([1.0, 2.0, 3.0, 4.0]) == 2.5  # under five values: nothing dropped
    assert math.isnan(trimmed_mean([]))


def test_a_metric_regresses_only_beyond_relative_plus_absolute_tolerance() -> None:
    assert Tolerance(0.15, 40).limit(200) == pytest.approx(270)
    assert Tolerance(0.15, 40).limit(200, multiple=3) == pytest.approx(810)
    base = {"client_v2v_ms": 200.0, "work.stt_ms": 60.0, "wer": 0.1}
    same = compare_metrics({"client_v2v_ms": 265.0, "work.stt_ms": 95.0, "wer": 0.14}, base)
    assert regressions(same) == []
    worse = compare_metrics({"client_v2v_ms": 275.0, "work.stt_ms": 210.0, "wer": 0.2}, base)
    assert [f.subject for f in regressions(worse)] == ["client_v2v_ms", "work.stt_ms", "wer"]
    generous = compare_metrics({"client_v2v_ms": 500.0, "work.stt_ms": 210.0, "wer": 0.2},
                               base, multiple=3)
    assert regressions(generous) == []


def run_of(turns: list[TurnResult]) -> RunResults:
    return RunResults("ws", "cascade", quick=False, repeat=1, turns=turns)


def test_new_functional_failures_fail_and_known_ones_are_only_reported() -> None:
    base = make_baseline(run_of([turn("p_table", 400, kind="paused"),
                                 turn("p_madrid", 400, kind="paused", cut_off=True)]))
    now = [turn("p_table", 400, kind="paused", cut_off=True),
           turn("p_madrid", 400, kind="paused", cut_off=True)]
    findings = functional_findings(now, base)
    assert [(f.subject, f.regressed, f.known) for f in findings] == [
        ("p_table: cut off", True, False), ("p_madrid: cut off", False, True)]


def test_a_wrong_transcript_and_a_missing_stage_fail_whatever_the_timing() -> None:
    base = make_baseline(run_of([turn("q_paris", 250, wer=0.1)]))
    assert base["stages"] == ["endpointing_ms", "transport_ms"]
    fine = functional_findings([turn("q_paris", 250, wer=0.3)], base)
    assert regressions(fine) == []
    wrong = functional_findings([turn("q_paris", 250, wer=0.6)], base)
    assert [f.subject for f in regressions(wrong)] == ["q_paris: wrong transcript (WER)"]
    missing = functional_findings([turn("q_paris", 250, stages={"endpointing_ms": 249.0})],
                                  base)
    assert [f.subject for f in regressions(missing)] == ["q_paris: missing stage transport_ms"]


def test_cut_off_turns_do_not_count_in_voice_to_voice() -> None:
    turns = [turn("a", 250), turn("b", 260), turn("c", 40, cut_off=True)]
    assert timing_metrics(turns)["client_v2v_ms"] == 255.0


def test_capacity_is_the_largest_concurrency_within_budget_with_all_smaller_ones() -> None:
    levels = [LoadLevel(1, 3, 3, 240, 260, 270), LoadLevel(2, 6, 6, 250, 420, 500),
              LoadLevel(4, 12, 12, 400, 790, 900), LoadLevel(8, 24, 24, 700, 1500, 2000)]
    assert capacity(levels, 800) == 4
    assert capacity(levels, 400) == 1
    unanswered = [LoadLevel(1, 3, 3, 240, 260, 270), LoadLevel(2, 6, 5, 250, 300, 300)]
    assert capacity(unanswered, 800) == 1  # a turn without a reply is over any budget


# -- the debug stage delay setting ---------------------------------------------------------
def test_stage_delays_parse_and_bad_ones_are_configuration_errors() -> None:
    assert parse_stage_delays("stt=150") == {"stt": 0.15}
    assert parse_stage_delays("stt=150, llm=80.5") == {"stt": 0.15, "llm": 0.0805}
    assert parse_stage_delays("") == {}
    for bad in ("vad=10", "stt", "stt=fast", "tts=-5"):
        with pytest.raises(ConfigError):
            parse_stage_delays(bad)
    assert Settings.load(None, {"VOICE_DEBUG_STAGE_DELAY": "tts=40"}).debug_stage_delay == "tts=40"
    with pytest.raises(ConfigError):
        Settings.load(None, {"VOICE_DEBUG_STAGE_DELAY": "endpointing=40"})


class _Echo:
    """A provider for all three roles that says what it was given."""

    name = "echo"
    sample_rate = 22050

    async def transcribe(self, audio: Any) -> Transcript:
        return Transcript(f"{len(audio)} samples", 0.0, 0.0, len(audio) / 16)

    async def stream(self, messages: list[dict[str, str]]) -> AsyncIterator[str]:
        for word in messages[-1]["content"].split():
            yield word

    async def synthesize(self, text: str) -> Any:
        return np.full(len(text), 7, np.int16)


async def test_only_the_named_stages_are_wrapped_and_they_pass_everything_through() -> None:
    echo = _Echo()
    models = delayed(CascadeModels(stt=echo, llm=echo, tts=echo), "stt=1,tts=1")
    assert models.llm is echo and models.stt is not echo and models.tts is not echo
    assert models.stt.name == "echo (+1 ms, debug)"
    assert models.tts.sample_rate == 22050
    transcript = await models.stt.transcribe(np.zeros(160, np.int16))
    assert transcript.text == "160 samples"
    assert (await models.tts.synthesize("abc")).tolist() == [7, 7, 7]
    slow_llm = delayed(CascadeModels(stt=echo, llm=echo, tts=echo), "llm=1").llm
    assert [d async for d in slow_llm.stream([{"role": "user", "content": "a b c"}])] == \
        ["a", "b", "c"]


def test_usage_comes_from_the_last_report_of_each_turn_and_costs_per_minute() -> None:
    from latency_tests.suite.cost import comparison, run_cost
    from voice.usage import Prices

    models = {"llm": "", "stt": "", "tts": "", "realtime": "gpt-realtime"}
    trial = Trial("question", events=[
        {"type": "session.created", "_received_ns": 0},
        {"type": "turn.usage", "turn_id": 1, "models": models,
         "usage": {"realtime_audio_in_tokens": 10, "realtime_audio_out_tokens": 0}},
        {"type": "turn.usage", "turn_id": 1, "models": models,  # the running total
         "usage": {"realtime_audio_in_tokens": 30, "realtime_audio_out_tokens": 60}},
        {"type": "turn.usage", "turn_id": 2, "models": models,
         "usage": {"realtime_audio_in_tokens": 20, "realtime_audio_out_tokens": 40,
                   "llm_estimated": False}},
        {"type": "response.done", "_received_ns": 30 * 10**9}])
    used, named = metrics.usage(trial)
    assert used == {"realtime_audio_in_tokens": 50, "realtime_audio_out_tokens": 100}
    assert named == models and metrics.session_seconds(trial) == 30.0
    trial.audio.append(Heard(29 * 10**9, 29 * 10**9, 29 * 10**9, 36 * 10**9))  # still heard
    assert metrics.session_seconds(trial) == 36.0
    turn = TurnResult("q", "s", "question", "clean", "ws", "realtime", usage=used,
                      models=named, seconds=30.0)
    run = RunResults("ws", "realtime", quick=True, repeat=1, turns=[turn, turn])
    figures = run_cost(run, Prices())
    # 100 audio tokens in at $32/M, 200 out at $64/M, over one minute
    assert figures["usd_per_minute"] == pytest.approx((100 * 32 + 200 * 64) / 1e6)
    assert figures["cost"]["prices"] == {"gpt-realtime": "2025-12"}
    (row,) = comparison([run], Prices())[2:]
    assert row.startswith("| ws x realtime |") and "$0.0160" in row


def test_local_models_can_be_priced_as_hosted_ones_for_a_what_if_row() -> None:
    from latency_tests.suite.cost import comparison, run_cost
    from voice.usage import Prices

    models = {"llm": "gpt-4o-mini", "stt": "", "tts": "", "realtime": ""}
    turn = TurnResult("q", "s", "question", "clean", "ws", "cascade", seconds=60.0,
                      models=models, usage={"stt_seconds": 30.0, "tts_characters": 1000})
    run = RunResults("ws", "cascade", quick=True, repeat=1, turns=[turn])
    assert run_cost(run, Prices())["usd_per_minute"] == 0
    hosted = run_cost(run, Prices(), {"stt": "whisper-1", "tts": "tts-1"})
    assert hosted["usd_per_minute"] == pytest.approx(0.5 * 0.006 + 1000 * 15 / 1e6)
    rows = comparison([run], Prices(), {"stt": "whisper-1", "tts": "tts-1"})[2:]
    assert len(rows) == 2 and "priced as these" in rows[1]
