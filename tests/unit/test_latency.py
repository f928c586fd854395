"""TurnTimeline (voice/latency.py): per-stage milliseconds from monotonic stamps."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voice.latency import OPTIONAL, STAGES, STAMPS, TurnTimeline

pytestmark = pytest.mark.unit

MS = 1_000_000
STAGE_NAMES = [name for name, _ in STAGES]
BASE_STAGE_NAMES = [name for name, stamp in STAGES if stamp not in OPTIONAL]  # no tools


def timeline(**stamps_ms: float) -> TurnTimeline:
    t = TurnTimeline(turn_id=1)
    for stamp, at_ms in stamps_ms.items():
        t.mark(stamp, int(at_ms * MS))
    return t


def test_in_order_stamps_give_each_stage_and_voice_to_voice() -> None:
    t = timeline(speech_start=0, speech_end=2000, turn_end=2250, stt_final=2290,
                 llm_first_token=2400, tts_first_text=2420, tts_first_audio=2460,
                 first_audio_out=2475)
    assert t.complete()
    assert t.stages_ms() == {
        "endpointing_ms": 250.0, "stt_ms": 40.0, "llm_ms": 110.0, "first_text_ms": 20.0,
        "tts_ms": 40.0, "transport_ms": 15.0, "voice_to_voice_ms": 475.0,
    }


def test_speculative_stt_before_turn_end_costs_nothing_and_stages_still_add_up() -> None:
    # transcript ready 60 ms before the turn was confirmed, LLM token 30 ms after it
    t = timeline(speech_end=1000, turn_end=1250, stt_final=1190, llm_first_token=1280,
                 tts_first_text=1281, tts_first_audio=1320, first_audio_out=1330)
    stages = t.stages_ms()
    assert stages["endpointing_ms"] == 250.0
    assert stages["stt_ms"] == 0.0
    assert stages["llm_ms"] == 30.0
    assert stages["voice_to_voice_ms"] == 330.0
    assert sum(stages[name] for name in BASE_STAGE_NAMES) == pytest.approx(330.0)


def test_voice_to_voice_is_first_audio_out_minus_speech_end() -> None:
    t = timeline(speech_end=500, turn_end=700, stt_final=650, llm_first_token=640,
                 tts_first_text=900, tts_first_audio=880, first_audio_out=1000)
    stages = t.stages_ms()
    assert stages["voice_to_voice_ms"] == 500.0
    assert all(stages[name] >= 0 for name in BASE_STAGE_NAMES)
    assert sum(stages[name] for name in BASE_STAGE_NAMES) == pytest.approx(500.0)


_stamp_values = st.integers(min_value=0, max_value=10**13)


@settings(database=None, deadline=None, max_examples=300)
@given(values=st.fixed_dictionaries({stamp: _stamp_values for stamp in STAMPS[1:]}))
def test_stages_are_non_negative_and_sum_to_voice_to_voice_in_any_order(
        values: dict[str, int]) -> None:
    t = TurnTimeline(turn_id=7)
    for stamp, ns in values.items():
        t.mark(stamp, ns)
    stages = t.stages_ms()
    assert set(stages) == {*STAGE_NAMES, "voice_to_voice_ms"}
    assert all(value >= 0 for value in stages.values())
    # each figure is rounded to 0.1 ms, so the sum may differ by the rounding of each
    assert sum(stages[name] for name in STAGE_NAMES) == pytest.approx(
        stages["voice_to_voice_ms"], abs=0.05 * (len(STAGE_NAMES) + 1))
    expected_total = max(values.values()) - values["speech_end"]
    assert stages["voice_to_voice_ms"] == pytest.approx(expected_total / MS, abs=0.05)


def test_no_speech_end_means_no_stages() -> None:
    assert timeline(speech_start=0, turn_end=10, first_audio_out=50).stages_ms() == {}
    assert timeline().relative_ms() == {}


def test_missing_stamps_give_the_stages_up_to_the_first_gap() -> None:
    t = timeline(speech_end=1000, turn_end=1200, stt_final=1260)
    assert not t.complete()
    assert t.stages_ms() == {"endpointing_ms": 200.0, "stt_ms": 60.0}


@pytest.mark.parametrize("stamps_ms", [
    {"speech_end": 1000, "tts_first_audio": 1300, "first_audio_out": 1320},  # realtime turn
    {"speech_end": 1000, "turn_end": 1200, "llm_first_token": 1400, "first_audio_out": 1500},
    {"speech_end": 1000, "turn_end": 1200, "stt_final": 1150, "tts_first_audio": 1450,
     "first_audio_out": 1500},
])
def test_gaps_give_partial_stages_and_still_voice_to_voice(stamps_ms: dict[str, float]
                                                            ) -> None:
    stages = timeline(**stamps_ms).stages_ms()
    assert stages["voice_to_voice_ms"] == stamps_ms["first_audio_out"] - stamps_ms["speech_end"]
    present = {stamp for stamp in stamps_ms}
    for name, stamp in STAGES:
        if stamp not in present:
            assert name not in stages  # no figure for a stage whose stamp is missing
    partial = [value for name, value in stages.items() if name != "voice_to_voice_ms"]
    assert all(value >= 0 for value in partial)
    assert sum(partial) <= stages["voice_to_voice_ms"]
    if "turn_end" in present:
        assert stages["endpointing_ms"] == stamps_ms["turn_end"] - stamps_ms["speech_end"]


def test_unknown_stamp_raises() -> None:
    t = TurnTimeline(turn_id=1)
    with pytest.raises(ValueError, match="speech_ended"):
        t.mark("speech_ended", 1)
    assert t.stamps == {}


def test_mark_keeps_the_first_stamp_unless_overwritten() -> None:
    t = timeline(speech_end=1000)
    t.mark("speech_end", 2000 * MS)
    assert t.relative_ms() == {"speech_end": 0.0}
    t.mark("turn_end", 2100 * MS)
    t.mark("speech_end", 1900 * MS, overwrite=True)
    assert t.relative_ms() == {"speech_end": 0.0, "turn_end": 200.0}


def test_relative_ms_is_signed_around_speech_end() -> None:
    t = timeline(speech_start=400, speech_end=1000, stt_final=950, first_audio_out=1300)
    assert t.relative_ms() == {"speech_start": -600.0, "speech_end": 0.0, "stt_final": -50.0,
                               "first_audio_out": 300.0}


def test_complete_needs_every_stamp_after_speech_start() -> None:
    stamps = {stamp: 1000 + i for i, stamp in enumerate(STAMPS)}
    del stamps["speech_start"]
    assert timeline(**stamps).complete()
    del stamps["tts_first_text"]
    assert not timeline(**stamps).complete()


def test_log_line_names_the_turn_and_its_stages() -> None:
    t = timeline(speech_end=1000, turn_end=1250, stt_final=1290)
    t.turn_id = 4
    assert t.log_line() == "turn 4 latency ms: endpointing=250 stt=40"
