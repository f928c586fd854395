"""The optional denoiser (voice/turntaking/denoise.py), streamed frame by frame as the
listener runs it: noise alone is taken down, speech is kept, and a session whose
setting names no denoiser gets none."""

from __future__ import annotations

import numpy as np
import pytest

from tests.harness import DATA, clip
from voice.audio import rms_dbfs
from voice.errors import ConfigError
from voice.turntaking.denoise import RNNoise, make_denoiser

pytestmark = pytest.mark.unit

SPEECH = clip(DATA / "weather.wav")


def _streamed(audio: np.ndarray) -> np.ndarray:
    denoiser = RNNoise()
    return np.concatenate([denoiser(audio[i: i + 320]) for i in range(0, len(audio) - 319, 320)])


def test_noise_alone_is_taken_down_and_speech_is_kept() -> None:
    rng = np.random.default_rng(3)
    noise = rng.normal(0, 600, 16000 * 3).astype(np.int16)
    assert rms_dbfs(_streamed(noise)[8000:]) < rms_dbfs(noise) - 15
    cleaned = _streamed(SPEECH)
    assert len(cleaned) == len(SPEECH) // 320 * 320  # as many samples as went in
    # the same speech, about 22 ms later (RNNoise's frame and the resamplers)
    kept = [np.corrcoef(cleaned[d: d + 32000].astype(float), SPEECH[:32000].astype(float))[0, 1]
            for d in range(0, 800, 8)]
    assert max(kept) > 0.9 and 8 * int(np.argmax(kept)) < 480  # under 30 ms
    assert abs(rms_dbfs(cleaned) - rms_dbfs(SPEECH)) < 3


def test_the_setting_picks_the_denoiser() -> None:
    assert make_denoiser("none") is None
    assert isinstance(make_denoiser("rnnoise"), RNNoise)
    with pytest.raises(ConfigError, match="denoiser"):
        make_denoiser("speex")
