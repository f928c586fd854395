"""PCM helpers and resampling (voice/audio.py)."""

from __future__ import annotations

import numpy as np
import pytest

from voice.audio import (
    StreamResampler,
    array_to_pcm16_bytes,
    float32_to_int16,
    int16_to_float32,
    pcm16_bytes_to_array,
    resample,
    rms_dbfs,
    trim_leading_silence,
)

pytestmark = pytest.mark.unit

CHUNK_MS = 20
INPUT_RATES = [8000, 24000, 44100, 48000]


def tone(freq: float, rate: int, seconds: float, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def stream(resampler: StreamResampler, samples: np.ndarray, rate: int) -> list[np.ndarray]:
    step = rate * CHUNK_MS // 1000
    return [resampler.process(samples[i: i + step]) for i in range(0, len(samples), step)]


@pytest.mark.parametrize("rate", INPUT_RATES)
def test_stream_resampler_returns_each_chunk_at_once(rate: int) -> None:
    """Every 20 ms chunk comes back as ~20 ms at 16 kHz: no chunk is held back."""
    chunks = stream(StreamResampler(rate, 16000), tone(440, rate, 2.0), rate)
    expected = 16000 * CHUNK_MS // 1000
    assert len(chunks) == 100
    for index, chunk in enumerate(chunks):
        assert chunk.dtype == np.int16
        assert abs(len(chunk) - expected) <= 4, (index, len(chunk))
    # and nothing accumulates: the running total stays within a few samples
    produced = np.cumsum([len(c) for c in chunks])
    assert np.max(np.abs(produced - expected * np.arange(1, 101))) <= 4


@pytest.mark.parametrize("rate", INPUT_RATES)
def test_stream_resampler_keeps_a_440_hz_tone_level(rate: int) -> None:
    source = tone(440, rate, 2.0)
    out = np.concatenate(stream(StreamResampler(rate, 16000), source, rate))
    settled = out[1600:]  # skip the first 100 ms (filter start-up)
    assert abs(rms_dbfs(settled) - rms_dbfs(source)) < 0.5
    # still a 440 Hz tone: the spectrum peaks there
    spectrum = np.abs(np.fft.rfft(settled * np.hanning(len(settled))))
    peak_hz = np.argmax(spectrum) * 16000 / len(settled)
    assert abs(peak_hz - 440) < 5


@pytest.mark.parametrize("rate", [44100, 48000])
def test_stream_resampler_suppresses_a_12_khz_tone_when_downsampling(rate: int) -> None:
    source = tone(12000, rate, 2.0)
    out = np.concatenate(stream(StreamResampler(rate, 16000), source, rate))
    # 12 kHz is above the 8 kHz Nyquist of the output: it must not alias into the band
    assert rms_dbfs(out[1600:]) - rms_dbfs(source) < -40


def test_stream_resampler_same_rate_is_identity() -> None:
    source = tone(440, 16000, 0.1)
    out = StreamResampler(16000, 16000).process(source)
    assert np.array_equal(out, source)


def test_stream_resampler_upsampling_is_rate_proportional() -> None:
    chunks = stream(StreamResampler(16000, 48000), tone(440, 16000, 1.0), 16000)
    assert all(abs(len(c) - 960) <= 8 for c in chunks)  # 8 samples = 0.17 ms at 48 kHz


@pytest.mark.parametrize("rate", [8000, 22050, 24000, 44100, 48000])
def test_one_shot_resample_length_and_level(rate: int) -> None:
    source = tone(440, rate, 1.0)
    out = resample(source, rate, 16000)
    assert out.dtype == np.int16
    assert abs(len(out) - 16000) <= 1
    assert abs(rms_dbfs(out[800:-800]) - rms_dbfs(source)) < 0.5


def test_one_shot_resample_same_rate_and_empty() -> None:
    source = tone(440, 16000, 0.05)
    assert np.array_equal(resample(source, 16000, 16000), source)
    assert resample(np.zeros(0, dtype=np.int16), 48000, 16000).size == 0


def test_trim_leading_silence_keeps_10_ms_before_the_sound() -> None:
    sound = tone(440, 16000, 0.1, amplitude=0.5)
    samples = np.concatenate([np.zeros(800, dtype=np.int16), sound])
    trimmed = trim_leading_silence(samples, 16000)
    first_loud = int(np.flatnonzero(np.abs(samples.astype(np.int32)) > 200)[0])
    assert len(trimmed) == len(samples) - first_loud + 160
    assert np.array_equal(trimmed[-len(sound):], sound)


def test_trim_leading_silence_leaves_silence_and_immediate_sound_alone() -> None:
    silent = np.full(1000, 50, dtype=np.int16)
    assert np.array_equal(trim_leading_silence(silent, 16000), silent)
    loud = tone(440, 16000, 0.05, amplitude=0.5)
    loud[0] = 10000
    assert np.array_equal(trim_leading_silence(loud, 16000), loud)


def test_rms_dbfs() -> None:
    assert rms_dbfs(np.zeros(320, dtype=np.int16)) == -100.0
    assert rms_dbfs(np.zeros(0, dtype=np.int16)) == -100.0
    full_scale_sine = tone(1000, 16000, 1.0, amplitude=1.0)
    assert rms_dbfs(full_scale_sine) == pytest.approx(-3.01, abs=0.05)
    assert rms_dbfs(np.full(320, -32768, dtype=np.int16)) == pytest.approx(0.0, abs=1e-6)
    assert rms_dbfs(np.full(320, 1, dtype=np.int16)) == pytest.approx(-90.3, abs=0.1)


def test_pcm16_bytes_round_trip_little_endian() -> None:
    samples = np.array([0, 1, -1, 32767, -32768], dtype=np.int16)
    data = array_to_pcm16_bytes(samples)
    assert data == b"\x00\x00\x01\x00\xff\xff\xff\x7f\x00\x80"
    assert np.array_equal(pcm16_bytes_to_array(data), samples)


def test_float_conversions_clip_and_round_trip() -> None:
    samples = np.array([0, 16384, -16384, 32767, -32768], dtype=np.int16)
    back = float32_to_int16(int16_to_float32(samples))
    assert np.all(np.abs(back.astype(int) - samples.astype(int)) <= 1)
    clipped = float32_to_int16(np.array([2.0, -2.0], dtype=np.float32))
    assert clipped.tolist() == [32767, -32767]


@pytest.mark.parametrize(("low", "high"), [(8000, 16000), (16000, 48000)])
def test_upsampling_by_a_whole_factor_leaves_no_images(low: int, high: int) -> None:
    """A call's 8 kHz audio upsampled for Whisper: a 3 kHz tone must not come back with
    its image at (low - 3) kHz, which a cubic interpolator leaves at about -30 dB and
    Whisper hears (it cost the telephone-band clips 0.09 of WER)."""
    source = tone(3000, low, 1.0)
    out = np.concatenate(stream(StreamResampler(low, high), source, low))[high // 10:]
    spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out))))
    hz = np.fft.rfftfreq(len(out), 1 / high)
    level = 20 * np.log10(spectrum / spectrum.max() + 1e-12)
    assert abs(hz[np.argmax(spectrum)] - 3000) < 5
    image = (hz > low - 3000 - 200) & (hz < low - 3000 + 200)
    assert level[image].max() < -50


def test_whole_factor_streams_keep_count_over_odd_chunks() -> None:
    """Decimation over chunks whose length is not a multiple of the factor loses and
    invents no samples: 48 kHz in odd pieces comes out as a third of it, in step."""
    rng = np.random.default_rng(3)
    source = tone(440, 48000, 1.0)
    down = StreamResampler(48000, 16000)
    cuts = np.cumsum(rng.integers(1, 700, 200))
    pieces = np.split(source, cuts[cuts < len(source)])
    out = np.concatenate([down.process(p) for p in pieces])
    assert len(out) == 16000
    whole = StreamResampler(48000, 16000).process(source)
    assert np.array_equal(out, whole)
