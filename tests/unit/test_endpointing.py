"""The end-of-turn policy and the backchannel judge."""

from __future__ import annotations

import pytest

from voice.turntaking.backchannel import is_backchannel
from voice.turntaking.detector import FixedSilence, TurnContext
from voice.turntaking.endpointing import (
    PRESETS,
    AdaptiveEndpointing,
    CallerPauses,
    build_policy,
    incompleteness,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("text", [
    "What is the weather like in Paris today?", "Set an alarm for seven.", "Hello.",
    "Um, I need a taxi.", "Thanks!"])
def test_finished_sentences_read_as_complete(text: str) -> None:
    assert incompleteness(text) == 0.0


@pytest.mark.parametrize("text", [
    "I would like to book a table for", "Send the report to Maria and", "I was thinking um",
    "Can you remind me to", "The meeting is on the", "", "   "])
def test_open_endings_read_as_unfinished(text: str) -> None:
    assert incompleteness(text) == 1.0


@pytest.mark.parametrize("text", [
    "My account number is four five six.", "My PIN is 4 7 1.", "Call me at 555", "one two"])
def test_digit_strings_read_as_probably_unfinished(text: str) -> None:
    assert 0.5 <= incompleteness(text) < 1.0


def test_trailing_comma_and_missing_punctuation_wait_longer_than_a_full_stop() -> None:
    assert incompleteness("The meeting is on Tuesday,") > incompleteness("It is Tuesday")
    assert incompleteness("It is Tuesday") > incompleteness("It is Tuesday.")


def context(transcript: str | None) -> TurnContext:
    return TurnContext(speech_ms=1500, silence_ms=0, transcript=transcript)


def test_adaptive_waits_between_the_preset_bounds() -> None:
    policy = AdaptiveEndpointing(PRESETS["default"], CallerPauses())
    assert policy.required_silence_ms(context("Is it open on Saturday?")) == 200
    assert policy.required_silence_ms(context("I want to go to the")) == 1000
    assert policy.required_silence_ms(context(None)) == 1000  # waits for the transcript


def test_a_caller_who_pauses_long_gets_longer_waits() -> None:
    pauses = CallerPauses()
    policy = AdaptiveEndpointing(PRESETS["default"], pauses)
    before = (policy.required_silence_ms(context("Done.")),
              policy.required_silence_ms(context("to the")))
    for pause in (850, 900, 1000, 950):
        pauses.record(pause)
    after = (policy.required_silence_ms(context("Done.")),
             policy.required_silence_ms(context("to the")))
    assert after[0] > before[0] and after[1] > before[1]
    assert after[1] <= 2 * PRESETS["default"].max_wait_ms


def test_short_gaps_are_not_learned_as_pauses() -> None:
    pauses = CallerPauses()
    for pause in (40, 60, 80, 60):
        pauses.record(pause)
    assert pauses.typical_ms() is None


def test_build_policy_fixed_and_overrides() -> None:
    assert build_policy("fixed", 0, 0, 300, CallerPauses()) == FixedSilence(300)
    patient = build_policy("patient", 0, 0, 250, CallerPauses())
    assert patient.required_silence_ms(context("Yes.")) == PRESETS["patient"].min_wait_ms
    custom = build_policy("default", 350, 1200, 250, CallerPauses())
    assert custom.required_silence_ms(context("Yes.")) == 350
    assert custom.required_silence_ms(context("and")) == 1200


@pytest.mark.parametrize("text", ["Uh-huh.", "Mm-hmm.", "Yeah.", "Okay, okay.", "", None, "Right."])
def test_backchannels_are_not_interruptions(text: str | None) -> None:
    assert is_backchannel(text)


@pytest.mark.parametrize("text", [
    "Wait, stop.", "No, I meant Tuesday.", "Hold on, let me think.",
    "Okay, but what about Friday?"])
def test_real_words_are_interruptions(text: str) -> None:
    assert not is_backchannel(text)


def test_a_statement_whose_pitch_did_not_fall_reads_as_unfinished() -> None:
    assert incompleteness("The meeting is on Tuesday.", final_pitch=0.95) > 0.5
    assert incompleteness("The meeting is on Tuesday.", final_pitch=0.7) == 0.0
    assert incompleteness("Is it on Tuesday?", final_pitch=1.1) == 0.0  # questions end high
    assert incompleteness("The meeting is on Tuesday.", final_pitch=None) == 0.0


def test_a_final_fall_of_pitch_outweighs_a_missing_full_stop_or_a_comma() -> None:
    """Whisper often ends a short command cut 40 ms into its silence with a comma or
    nothing ("turn on the lights,", "Call my mother"); the pitch fell, so it is done."""
    assert incompleteness("Call my mother", final_pitch=0.73) == 0.0
    assert incompleteness("Call my mother", final_pitch=None) == 0.5
    assert incompleteness("Call my mother", final_pitch=0.95) == 0.8  # level: a pause
    assert incompleteness("turn on the lights,", final_pitch=0.73) == 0.25
    assert incompleteness("turn on the lights,", final_pitch=0.95) == 0.8
    # the lexical cues still win: an open ending or a digit group is not finished
    assert incompleteness("Please send the report to", final_pitch=0.7) == 1.0
    assert incompleteness("My number is five five five", final_pitch=0.7) >= 0.5


@pytest.mark.parametrize("text", [
    "How far is it from here to the nearest petrol station.",
    "Could you read me the last three messages from my sister.",
    "So what time does it open.", "Is it open on Saturday."])
def test_a_question_that_lost_its_question_mark_is_not_read_as_a_pause(text: str) -> None:
    """Over a phone line Whisper often ends a question with a full stop; its pitch ends
    high, as a question's does, and that must not hold the turn as a mid-sentence
    pause (it held 2 of the suite's 28 telephone clips for 770 ms)."""
    assert incompleteness(text, final_pitch=1.04) == 0.0


@pytest.mark.parametrize("text", [
    "The meeting is on Tuesday.", "So I told him.", "What.", "Then we went home."])
def test_a_level_statement_still_reads_as_a_pause(text: str) -> None:
    assert incompleteness(text, final_pitch=1.0) == 0.7


@pytest.mark.parametrize("text", ["Can you remind me?", "Could you tell me.", "Please send me",
                                  "Let me"])
def test_a_request_that_has_not_said_what_yet_waits(text: str) -> None:
    """"Can you remind me |450 ms| to call my sister tomorrow?": Whisper reads the
    pause as the end of a question, which was answered 200 ms into the pause."""
    assert incompleteness(text, final_pitch=1.0) >= 0.7
    assert incompleteness(text, final_pitch=0.7) >= 0.7  # whatever the pitch did
    assert incompleteness("Can you remind me to call my sister tomorrow?") == 0.0
