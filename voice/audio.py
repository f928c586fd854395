"""PCM helpers and resampling (soxr), shared by every transport and pipeline."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import soxr

Int16Array = npt.NDArray[np.int16]
Float32Array = npt.NDArray[np.float32]

PIPELINE_RATE = 16000  # VAD and STT run at this rate, whatever the session rate
OPENAI_PCM_RATE = 24000  # OpenAI's raw `pcm`: the Realtime API's audio/pcm, /v1/audio/speech


def pcm16_bytes_to_array(data: bytes) -> Int16Array:
    """Little-endian 16-bit PCM to int16 samples; the length must be even."""
    samples: Int16Array = np.frombuffer(data, dtype="<i2").astype(np.int16, copy=False)
    return samples


def array_to_pcm16_bytes(samples: Int16Array) -> bytes:
    return samples.astype("<i2", copy=False).tobytes()


def int16_to_float32(samples: Int16Array) -> Float32Array:
    return (samples.astype(np.float32) / 32768.0).astype(np.float32, copy=False)


def float32_to_int16(samples: npt.NDArray[np.floating]) -> Int16Array:
    clipped = np.clip(samples, -1.0, 1.0) * 32767.0
    converted: Int16Array = clipped.astype(np.int16)
    return converted


def resample(samples: Int16Array, in_rate: int, out_rate: int) -> Int16Array:
    """One-shot resampling of a whole buffer (for example one synthesized sentence)."""
    if in_rate == out_rate or samples.size == 0:
        return samples
    out = soxr.resample(samples, in_rate, out_rate, quality="HQ")
    return np.asarray(out, dtype=np.int16)


class StreamResampler:
    """Resamples a stream chunk by chunk with (almost) no added delay.

    soxr's high-quality stream filters hold back 20-100 ms of audio, which would add
    straight to every turn's latency. Instead:
    - between rates a whole factor apart (8 <-> 16 kHz for calls, 16 <-> 48 kHz for
      WebRTC): zero-stuffing or decimation around a windowed-sinc low-pass (`ByFactor`,
      1-2 ms of delay), which keeps the images of 8 kHz audio out of what Whisper
      hears (a cubic interpolator's images cost telephone calls words);
    - otherwise a short windowed-sinc low-pass (0.5 ms group delay at 48 kHz) against
      aliasing when downsampling, then soxr's quick (cubic) stream resampler, which
      returns each chunk at once.
    """

    _TAPS = 48

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream: soxr.ResampleStream | None = None
        self._by_factor: ByFactor | None = None
        self._fir: Float32Array | None = None
        self._tail = np.zeros(0, dtype=np.float32)
        high, low = max(in_rate, out_rate), min(in_rate, out_rate)
        if in_rate == out_rate:
            return
        if high % low == 0 and high // low <= ByFactor.MAX_FACTOR:
            self._by_factor = ByFactor(high // low, up=out_rate > in_rate, rate=high)
            return
        self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32",
                                           quality="QQ")
        if in_rate > out_rate:
            cutoff = 0.45 * out_rate / in_rate  # cycles per input sample
            n = np.arange(self._TAPS) - (self._TAPS - 1) / 2
            taps = 2 * cutoff * np.sinc(2 * cutoff * n) * np.hamming(self._TAPS)
            self._fir = (taps / taps.sum()).astype(np.float32)
            self._tail = np.zeros(self._TAPS - 1, dtype=np.float32)

    def process(self, samples: Int16Array, last: bool = False) -> Int16Array:
        if self._by_factor is not None:
            return self._by_factor.process(samples)
        if self._stream is None:
            return samples
        x = samples.astype(np.float32)
        if self._fir is not None:
            padded = np.concatenate([self._tail, x])
            self._tail = padded[len(padded) - (self._TAPS - 1):]
            x = np.convolve(padded, self._fir, mode="valid").astype(np.float32)
        out = self._stream.resample_chunk(x, last=last)
        converted: Int16Array = np.clip(np.rint(out), -32768, 32767).astype(np.int16)
        return converted


class ByFactor:
    """Streaming resampling by a whole factor: zero-stuffing (up) or decimation (down)
    around a windowed-sinc low-pass at 0.45 of the lower rate, run at the higher rate
    (`rate`): 2 ms of taps, at least 63 (1 ms of delay at 48 kHz, 2 ms at 16 kHz).
    Each chunk comes back at once: `factor` times its length up, 1/`factor` of it
    down, the remainder carried to the next chunk."""

    MAX_FACTOR = 6

    def __init__(self, factor: int, up: bool, rate: int) -> None:
        taps_n = max(63, rate // 1000 * 2 - 1) | 1
        n = np.arange(taps_n) - (taps_n - 1) / 2
        cutoff = 0.45 / factor  # cycles per sample of the higher rate
        taps = 2 * cutoff * np.sinc(2 * cutoff * n) * np.hamming(taps_n)
        self._taps = taps / taps.sum() * (factor if up else 1)
        self._factor = factor
        self._up = up
        self._tail = np.zeros(taps_n - 1)
        self._phase = 0  # decimation: where in the next input the next kept sample is

    def process(self, samples: Int16Array) -> Int16Array:
        x = samples.astype(np.float64)
        if self._up:
            stuffed = np.zeros(len(x) * self._factor)
            stuffed[::self._factor] = x
            x = stuffed
        joined = np.concatenate([self._tail, x])
        y = np.convolve(joined, self._taps, "valid")
        self._tail = joined[len(x):]
        if not self._up:
            y, self._phase = y[self._phase::self._factor], (self._phase - len(y)) % self._factor
        converted: Int16Array = np.clip(np.rint(y), -32768, 32767).astype(np.int16)
        return converted


def rms_dbfs(samples: Int16Array) -> float:
    """Root-mean-square level in dB relative to full scale (-100 for digital silence)."""
    if samples.size == 0:
        return -100.0
    mean_square = float(np.mean(np.square(samples.astype(np.float64))))
    if mean_square <= 0.0:
        return -100.0
    return max(-100.0, 10.0 * float(np.log10(mean_square / (32768.0**2))))


def trim_leading_silence(samples: Int16Array, sample_rate: int, threshold: int = 200,
                         keep_ms: int = 10) -> Int16Array:
    """Drop the near-silent start of synthesized speech, keeping `keep_ms` before it.

    TTS voices open with ~50 ms of silence; on a reply's first piece that is latency
    the caller hears as nothing.
    """
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > threshold)
    if loud.size == 0:
        return samples
    start = max(0, int(loud[0]) - sample_rate * keep_ms // 1000)
    trimmed: Int16Array = samples[start:]
    return trimmed
