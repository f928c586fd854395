"""The final fall of pitch, heard over a phone line: the telephone band starts above a
low voice's fundamental, so the pitch tracker makes octave and edge errors there, which
used to leave the cue unknown (and the turn waiting for its maximum)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.harness import TURN_TAKING
from voice.audio import resample
from voice.turntaking.prosody import final_pitch_ratio
from wire.rtp import g711

pytestmark = pytest.mark.unit

REGRESSION = TURN_TAKING.parent / "regression"


def _speech(name: str) -> np.ndarray:
    import soundfile

    audio, rate = soundfile.read(REGRESSION / f"{name}.wav", dtype="int16")
    if rate == 8000:
        audio = g711.decode(g711.encode(audio, 0), 0)
    loud = np.flatnonzero(np.abs(audio.astype(np.int32)) > 500)
    return resample(audio[: loud[-1] + rate // 25], rate, 16000)  # up to 40 ms of silence


@pytest.mark.parametrize("command", ["c_lights", "c_music", "c_volume", "c_call", "c_garage",
                                     "c_timer", "c_podcast"])
def test_a_commands_final_fall_is_heard_over_the_phone_as_on_the_wide_band(command: str) -> None:
    wide, phone = final_pitch_ratio(_speech(command)), final_pitch_ratio(_speech(f"{command}_tel"))
    assert wide is not None and phone is not None
    assert wide < 0.85 and phone < 0.85  # fell: a finished command
    assert abs(wide - phone) < 0.1


@pytest.mark.parametrize("question", ["q_euro", "q_roast", "q_train", "q_petrol"])
def test_a_question_does_not_fall_over_the_phone_either(question: str) -> None:
    phone = final_pitch_ratio(_speech(f"{question}_tel"))
    assert phone is not None and phone >= 0.85


@pytest.mark.parametrize("request_", ["p_taxi", "p_report", "p_table", "p_door"])
def test_a_request_ending_low_falls_over_the_phone_as_on_the_wide_band(request_: str) -> None:
    """A low voice's last syllables at 80-90 Hz: through the telephone band their
    fundamental is missing and the third harmonic's lag peaks almost as high as the
    period's. Taking the highest peak read them as 240 Hz, and "I need a taxi to the
    airport at six" as a level, unfinished pitch (0.99 against 0.76 on the wide band)."""
    wide = final_pitch_ratio(_speech(request_))
    phone = final_pitch_ratio(_speech(f"{request_}_tel"))
    assert wide is not None and phone is not None
    assert wide < 0.85 and phone < 0.85
    assert abs(wide - phone) < 0.1
