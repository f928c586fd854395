"""Whisper hallucination guard: hallucination_reason (pipelines/providers/stt.py)."""

from __future__ import annotations

import pytest

from pipelines.providers.stt import Transcript, cut_repeated_words, hallucination_reason

pytestmark = pytest.mark.unit

THRESHOLD = 0.6  # the settings default (stt_no_speech_threshold)


def reason(text: str, no_speech: float = 0.05, logprob: float = -0.25) -> str | None:
    return hallucination_reason(Transcript(text=text, no_speech_prob=no_speech,
                                           avg_logprob=logprob, audio_ms=1500.0), THRESHOLD)


@pytest.mark.parametrize("text", ["", "   ", "...", "♪", "♪♪ ♪", "!?"])
def test_empty_or_symbol_only_text_is_dropped(text: str) -> None:
    assert reason(text) == "empty"


@pytest.mark.parametrize("text", ["[Music]", " [BLANK_AUDIO] ", "(upbeat music)", "♪ la la la ♪",
                                  "*applause*"])
def test_non_speech_annotations_are_dropped(text: str) -> None:
    assert reason(text) == "non-speech annotation"


def test_high_no_speech_with_low_logprob_is_dropped() -> None:
    assert reason("I went to the store", no_speech=0.9, logprob=-0.8) == "no_speech_prob 0.90"


def test_high_no_speech_alone_does_not_drop_a_confident_transcript() -> None:
    assert reason("I went to the store", no_speech=0.9, logprob=-0.2) is None


@pytest.mark.parametrize("text", ["Thank you.", "thank you", "Thanks for watching!", "Bye.",
                                  "you"])
def test_known_phrase_with_some_no_speech_is_dropped(text: str) -> None:
    assert reason(text, no_speech=0.5, logprob=-0.3) == "known hallucination"


def test_known_phrase_with_a_poor_logprob_is_dropped() -> None:
    assert reason("Thank you.", no_speech=0.01, logprob=-0.7) == "known hallucination"


def test_known_phrase_said_clearly_is_kept() -> None:
    assert reason("Thank you.", no_speech=0.01, logprob=-0.2) is None


def test_very_low_logprob_with_some_doubt_about_speech_is_dropped() -> None:
    assert reason("purple monkey dishwasher", no_speech=0.45, logprob=-1.5) == "avg_logprob -1.50"


def test_garbled_but_clearly_spoken_words_are_kept() -> None:
    # a voice Whisper hears badly is still a caller who spoke: better a guess than silence
    assert reason("I'm not a long force ever in the morning.", no_speech=0.26,
                  logprob=-1.52) is None


@pytest.mark.parametrize("text", [
    "the the the the the the the the",
    "I'm sorry I'm sorry I'm sorry I'm sorry I'm sorry I'm sorry",
    "go go go go go go go go go go go go",
])
def test_repetition_loop_is_dropped(text: str) -> None:
    assert reason(text) == "repetition loop"


@pytest.mark.parametrize("text", [
    "What's the weather like in Paris today?",
    "Please book a table for two at seven o'clock.",
    "No, no, I said the blue one, not the red one.",
    "Okay, so can you tell me a joke about cats?",
])
def test_real_sentences_with_good_scores_pass(text: str) -> None:
    assert reason(text, no_speech=0.02, logprob=-0.3) is None


@pytest.mark.parametrize("decoded, kept", [
    # the short-window decoder starting the utterance over, as tiny.en did on the corpus
    ("Call my mother Call my mother", "Call my mother"),
    ("Turn on the lights, turn on the lights,", "Turn on the lights"),
    ("Turn on the light, turn on the", "Turn on the light"),
    ("What is the weather like in Madrid? Madrid? Madrid? Madrid",
     "What is the weather like in Madrid?"),
])
def test_a_decode_that_starts_over_is_cut_at_the_repeat(decoded: str, kept: str) -> None:
    assert cut_repeated_words(decoded) == kept


@pytest.mark.parametrize("said", [
    "New York, New York", "no no", "very very good", "please please please help",
    "book a table for four people", "What time is it?", "one two three four",
    "I said no, and then I said no again.",
])
def test_words_a_person_repeats_are_kept(said: str) -> None:
    assert cut_repeated_words(said) == said
