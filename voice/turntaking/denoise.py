"""An optional denoiser on the caller's audio, before the turn detector and Whisper hear
it (`denoiser` setting): RNNoise, the recurrent noise suppressor (BSD-3-Clause, C,
from the `pyrnnoise` package: `pip install 'voice-assistant-service[denoise]'`).

RNNoise works on 10 ms frames at 48 kHz, so each 20 ms frame at 16 kHz is resampled
up, denoised in two pieces and resampled down (`voice.audio.ByFactor`: 1 ms of delay each way).
Its state is per session. What it buys and costs was measured on the latency suite's
noisy clips (`python -m latency_tests.denoise_bench`, docs/latency.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from voice.audio import ByFactor, Int16Array
from voice.errors import ConfigError

DENOISERS = ("none", "rnnoise")
RNNOISE_RATE = 48000


class RNNoise:
    """Streaming RNNoise for 16 kHz int16 frames (any length)."""

    def __init__(self) -> None:
        self._lib = _rnnoise()
        self._state = self._lib.create()
        self._up = ByFactor(3, up=True, rate=RNNOISE_RATE)
        self._down = ByFactor(3, up=False, rate=RNNOISE_RATE)
        self._pending = np.zeros(0, np.int16)  # 48 kHz samples short of a whole frame
        self._out = np.zeros(0, np.int16)  # denoised 16 kHz audio not returned yet

    def __del__(self) -> None:
        state, self._state = getattr(self, "_state", None), None
        if state is not None:
            self._lib.destroy(state)

    def __call__(self, frame: Int16Array) -> Int16Array:
        size = self._lib.FRAME_SIZE
        audio = np.concatenate([self._pending, self._up.process(frame)])
        whole = len(audio) // size * size
        self._pending = audio[whole:]
        cleaned = [np.asarray(self._lib.process_mono_frame(self._state, audio[i: i + size])[0],
                              dtype=np.int16).reshape(-1) for i in range(0, whole, size)]
        if cleaned:
            self._out = np.concatenate([self._out, self._down.process(np.concatenate(cleaned))])
        if len(self._out) < len(frame):  # the resamplers' rounding: a sample or two, once
            self._out = np.concatenate([np.zeros(len(frame) - len(self._out), np.int16),
                                        self._out])
        out, self._out = self._out[: len(frame)], self._out[len(frame):]
        return out


def make_denoiser(name: str) -> RNNoise | None:
    if name not in DENOISERS:
        raise ConfigError(f"denoiser: one of {', '.join(DENOISERS)}, not {name[:20]!r}")
    return RNNoise() if name == "rnnoise" else None


def _rnnoise() -> Any:
    try:
        from pyrnnoise import rnnoise
    except ImportError as exc:
        raise ConfigError("denoiser rnnoise needs the pyrnnoise package: pip install "
                          "'voice-assistant-service[denoise]'") from exc
    return rnnoise
