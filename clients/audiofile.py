"""Reading and writing audio files for the clients (any rate, any common format)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from voice.audio import Int16Array, float32_to_int16, resample


class AudioFileError(Exception):
    pass


def load_audio(path: str | Path, sample_rate: int) -> Int16Array:
    """Mono int16 samples at `sample_rate` from any file soundfile or pydub can read."""
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        samples = float32_to_int16(data.mean(axis=1))
    except (sf.LibsndfileError, RuntimeError, TypeError):
        samples, rate = _load_with_pydub(path)
    return resample(samples, int(rate), sample_rate)


def _load_with_pydub(path: str | Path) -> tuple[Int16Array, int]:
    try:
        from pydub import AudioSegment

        segment = AudioSegment.from_file(str(path)).set_channels(1).set_sample_width(2)
    except Exception as exc:  # pydub raises many kinds, ffmpeg may be missing
        raise AudioFileError(f"cannot read audio file {path}: {exc}") from exc
    return np.array(segment.get_array_of_samples(), dtype=np.int16), int(segment.frame_rate)


def save_wav(path: str | Path, samples: Int16Array, sample_rate: int) -> None:
    sf.write(str(path), samples, sample_rate, subtype="PCM_16")


def voiced_bounds(samples: Int16Array, sample_rate: int,
                  relative_db: float = 35.0) -> list[tuple[int, int]]:
    """(start, end) sample ranges of speech-like energy, in 10 ms steps.

    A region is any run of 10 ms windows within `relative_db` of the loudest window;
    gaps shorter than 200 ms are bridged.
    """
    step = sample_rate // 100
    n = len(samples) // step
    if n == 0:
        return []
    windows = samples[: n * step].astype(np.float64).reshape(n, step)
    level = 10 * np.log10(np.mean(windows**2, axis=1) + 1e-9)
    active = level > max(level.max() - relative_db, 10 * np.log10(32768.0**2) - 70)
    regions: list[tuple[int, int]] = []
    for i in (int(k) for k in np.flatnonzero(active)):
        if regions and i * step - regions[-1][1] <= 20 * step:
            regions[-1] = (regions[-1][0], (i + 1) * step)
        else:
            regions.append((i * step, (i + 1) * step))
    return regions
