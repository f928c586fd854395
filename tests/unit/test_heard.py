"""A dropped transcript gets Silero's second opinion (pipelines/providers/heard.py): speech
that was not understood is worth a re-prompt; noise, tones and a lone "okay" are not."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.providers.heard import SPEECH_EVIDENCE_MS, judge, speech_ms
from pipelines.providers.stt import Transcript
from tests.harness import DATA, TURN_TAKING, clip
from voice.audio import resample

pytestmark = pytest.mark.unit

CORPUS = TURN_TAKING.parent / "regression"
SPEECH = clip(DATA / "weather.wav")
DOUBTFUL = Transcript("So", no_speech_prob=0.94, avg_logprob=-2.0, audio_ms=2000)  # tones


def _clip_16k(name: str) -> np.ndarray:
    import soundfile

    audio, rate = soundfile.read(CORPUS / name, dtype="int16")
    return resample(audio, rate, 16000)


@pytest.mark.parametrize("name", ["n_noise_tel.wav", "n_hum.wav", "n_tones_tel.wav",
                                  "n_silence.wav", "n_tones.wav"])
def test_noise_hum_and_tones_hold_no_speech_and_are_never_reprompted(name: str) -> None:
    audio = _clip_16k(name)
    assert speech_ms(audio) < SPEECH_EVIDENCE_MS
    judged = judge(DOUBTFUL, audio, 0.6)
    assert judged.text is None and not judged.unclear


@pytest.mark.parametrize("name", ["c_volume_tel.wav", "c_podcast_tel.wav", "c_lights_tel.wav"])
def test_a_short_command_over_a_phone_line_holds_speech(name: str) -> None:
    audio = _clip_16k(name)
    assert speech_ms(audio) >= SPEECH_EVIDENCE_MS
    judged = judge(DOUBTFUL, audio, 0.6)
    assert judged.text is None and judged.unclear  # heard, not understood: ask again
    assert "ms of speech" in judged.dropped


def test_words_whisper_was_fairly_sure_of_are_kept_against_its_no_speech_doubt() -> None:
    sure = Transcript("the volume down", no_speech_prob=0.81, avg_logprob=-0.7, audio_ms=1600)
    assert judge(sure, SPEECH, 0.6).text == "the volume down"
    assert judge(sure, np.zeros(16000, np.int16), 0.6).text is None  # no speech in it


def test_a_lone_acknowledgement_or_a_known_hallucination_is_not_reprompted() -> None:
    okay = Transcript("Okay.", no_speech_prob=0.5, avg_logprob=-0.9, audio_ms=800)
    thanks = Transcript("Thank you.", no_speech_prob=0.9, avg_logprob=-0.8, audio_ms=800)
    assert not judge(okay, SPEECH, 0.6).unclear
    judged = judge(thanks, SPEECH, 0.6)
    assert judged.text is None and judged.unclear  # speech, but not those words


def test_a_confident_transcript_is_kept_without_asking_silero() -> None:
    good = Transcript("What is the weather like?", 0.01, -0.2, 2000)
    assert judge(good, None, 0.6).text == "What is the weather like?"
    assert judge(Transcript("", 0.9, -3.0, 10), None, 0.6).text is None
