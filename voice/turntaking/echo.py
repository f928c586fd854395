"""The reply's own echo, taken out of the caller's audio before anyone listens to it.

A phone on speaker, or a line with echo, sends the assistant's reply back a little
later and quieter. Heard as it is, that echo is speech over the reply: it pauses the
reply and its words (the reply's own) interrupt it. So every caller frame is cleaned
against the audio the caller was played (the playout's taps, with when the caller
started hearing each chunk) before the turn detector hears it:

- Echo path: the delay from playing a sample to its echo arriving is found by
  cross-correlating the last `WINDOW_MS` of caller audio with the reference over
  `MAX_DELAY_MS` of lags, every `SEARCH_EVERY_MS` while the reply plays (a few FFTs;
  nothing while the assistant is silent). A correlation under `MIN_CORRELATION` finds
  no echo and changes nothing.
- Each frame: the best lag within `FINE_MS` of that delay (network jitter moves it),
  and the least-squares gain; the scaled reference is subtracted. What is left is the
  caller's own voice (double talk keeps it: a real interruption still interrupts)
  and what the model does not capture.

The model is one delay and one gain: it cancels line echo and a phone whose speaker
the microphone hears directly (the test: -10 dB, 100-200 ms), not a room's
reverberation, which the phone's own echo canceller is for. Frames are 16 kHz int16;
the reference comes at the playout's rate and is resampled.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import numpy.typing as npt

from voice.audio import PIPELINE_RATE, Int16Array, pcm16_bytes_to_array, resample

Floats = npt.NDArray[np.float64]

MAX_DELAY_MS = 700  # playout lead + the network both ways + the phone's own buffers
WINDOW_MS = 400  # caller audio the delay is searched with
SEARCH_EVERY_MS = 200
FINE_MS = 8  # a frame's lag may stray this far from the delay found (jitter, drift)
REANCHOR_MS = 250  # caller audio this far off its arrival time has jumped (a gap)
MIN_CORRELATION = 0.4  # below this, no echo was found
HISTORY_S = 2.0  # reference and caller audio kept (> MAX_DELAY_MS + WINDOW_MS)
_MS = PIPELINE_RATE // 1000


class EchoCanceller:
    def __init__(self, reference_rate: int) -> None:
        self._reference_rate = reference_rate
        self._size = int(HISTORY_S * PIPELINE_RATE)
        self._reference = np.zeros(self._size)  # timeline sample i at i % size
        self._mic = np.zeros(self._size)
        self._origin_ns: int | None = None  # when timeline sample 0 was
        self._reference_end = 0  # timeline index after the last reference sample
        self._mic_end = 0
        self._pending: deque[tuple[bytes, int]] = deque()  # from the sending thread
        self._delay: int | None = None  # echo delay, samples
        self._next_search = 0
        self.cancelled_frames = 0  # frames an echo was taken out of

    def tap(self, chunk: bytes, heard_ns: int) -> None:
        """A playout tap: `chunk` (reference rate) starts being heard at `heard_ns`.
        Any thread: it is only queued here."""
        self._pending.append((chunk, heard_ns))

    def clean(self, frame: Int16Array, arrival_ns: int) -> Int16Array:
        """`frame` (16 kHz) without the reply's echo; unchanged when there is none."""
        self._take_pending()
        if self._origin_ns is None:
            return frame
        end = self._place_mic(frame, arrival_ns)
        if self._reference_end <= end - (MAX_DELAY_MS + WINDOW_MS) * _MS:
            return frame  # nothing was played lately: nothing to echo
        if end >= self._next_search:
            self._next_search = end + SEARCH_EVERY_MS * _MS
            self._search(end)
        if self._delay is None:
            return frame
        return self._subtract(frame, end)

    # -- the timeline ----------------------------------------------------------------
    def _index(self, t_ns: int) -> int:
        assert self._origin_ns is not None
        return (t_ns - self._origin_ns) * PIPELINE_RATE // 1_000_000_000

    def _take_pending(self) -> None:
        while self._pending:
            chunk, heard_ns = self._pending.popleft()
            if self._origin_ns is None:
                self._origin_ns = heard_ns
            samples = resample(pcm16_bytes_to_array(chunk), self._reference_rate,
                               PIPELINE_RATE).astype(np.float64)
            start = self._index(heard_ns)
            self._write(self._reference, start, samples)
            if start > self._reference_end:  # a pause in the reply: silence between
                self._write(self._reference, self._reference_end,
                            np.zeros(min(start - self._reference_end, self._size)))
            self._reference_end = max(self._reference_end, start + len(samples))

    def _place_mic(self, frame: Int16Array, arrival_ns: int) -> int:
        """The frame's end on the timeline: right after the previous frame (a caller's
        stream runs at its own sample clock, whatever the network's jitter), unless its
        arrival says the stream jumped (a gap, a burst after a stall)."""
        end = self._mic_end + len(frame)
        arrived = self._index(arrival_ns)
        if abs(end - arrived) > REANCHOR_MS * _MS:
            end = arrived
        self._write(self._mic, end - len(frame), frame.astype(np.float64))
        self._mic_end = end
        return end

    def _write(self, ring: Floats, start: int, samples: Floats) -> None:
        ring[np.arange(start, start + len(samples)) % self._size] = samples

    def _read(self, ring: Floats, start: int, end: int) -> Floats:
        return ring[np.arange(start, end) % self._size]

    # -- the echo path -----------------------------------------------------------------
    def _search(self, end: int) -> None:
        """The delay at which the reference best explains the last WINDOW_MS."""
        window, most = WINDOW_MS * _MS, MAX_DELAY_MS * _MS
        mic = self._read(self._mic, end - window, end)
        reference = self._read(self._reference, end - window - most, end)
        if not mic.any() or not reference.any():
            return
        n = 1 << (len(reference) + window).bit_length()
        # correlation[k]: reference[k : k + window] against mic; lag = most - k
        correlation = np.fft.irfft(np.fft.rfft(reference, n) * np.conj(np.fft.rfft(mic, n)),
                                   n)[: most + 1]
        energy = np.concatenate([[0.0], np.cumsum(reference ** 2)])
        reference_energy = energy[window: window + most + 1] - energy[: most + 1]
        ncc = correlation / np.sqrt(reference_energy * float(mic @ mic) + 1e-9)
        best = int(np.argmax(ncc))
        if ncc[best] >= MIN_CORRELATION:
            self._delay = most - best

    def _subtract(self, frame: Int16Array, end: int) -> Int16Array:
        assert self._delay is not None
        fine, n = FINE_MS * _MS, len(frame)
        start = end - n - self._delay
        reference = self._read(self._reference, start - fine, start + n + fine)
        if not reference.any():
            return frame
        mic = frame.astype(np.float64)
        correlation = np.correlate(reference, mic, "valid")  # 2 * fine + 1 lags
        energy = np.concatenate([[0.0], np.cumsum(reference ** 2)])
        lag_energy = energy[n:] - energy[:-n]
        ncc = correlation / np.sqrt(lag_energy * float(mic @ mic) + 1e-9)
        best = int(np.argmax(ncc))
        if ncc[best] < MIN_CORRELATION / 2:
            return frame  # no echo in this frame (or the caller drowns it)
        aligned = reference[best: best + n]
        gain = correlation[best] / (lag_energy[best] + 1e-9)
        self.cancelled_frames += 1
        cleaned: Int16Array = np.clip(mic - gain * aligned, -32768, 32767).astype(np.int16)
        return cleaned
