"""Audio framing and the media clock of the WebRTC transport, sans-I/O.

WebRTC audio here is Opus at 48 kHz in 20 ms frames. Caller audio arrives as decoded
frames (Opus: 48 kHz stereo, interleaved; G.711: 8 kHz mono) and goes to the session
as 48 kHz mono. Reply audio leaves as one 20 ms frame per tick of a media clock:
frame n is due at `start + n * 20 ms`, computed from the frame index, never by adding
up sleeps, so a ten-minute call ends exactly ten minutes of audio after it started.
"""

from __future__ import annotations

import numpy as np

from voice.audio import Int16Array, StreamResampler

RTC_RATE = 48000
FRAME_MS = 20
FRAME_SAMPLES = RTC_RATE * FRAME_MS // 1000  # 960
FRAME_BYTES = FRAME_SAMPLES * 2


class FrameClock:
    """When each outgoing frame is due, and its RTP-style timestamp (pts, in samples).

    The first `tick(now)` anchors the clock. If the sender falls behind by more than
    `max_lag_ns` (the event loop stalled), the late frames are skipped rather than
    sent in a burst: the pts jumps, which a receiver treats as a gap, and the clock
    stays anchored to the same start, so nothing drifts.
    """

    def __init__(self, rate: int = RTC_RATE, frame_samples: int = FRAME_SAMPLES,
                 max_lag_ns: int = 60_000_000) -> None:
        self.rate = rate
        self.frame_samples = frame_samples
        self.max_lag_ns = max_lag_ns
        self._start_ns: int | None = None
        self._index = -1
        self.skipped_frames = 0

    def _due(self, index: int) -> int:
        assert self._start_ns is not None
        return self._start_ns + index * self.frame_samples * 1_000_000_000 // self.rate

    def tick(self, now_ns: int) -> tuple[int, int]:
        """(pts, due_ns) of the next frame; the caller waits until due_ns, then sends."""
        if self._start_ns is None:
            self._start_ns = now_ns
        self._index += 1
        late = now_ns - self._due(self._index)
        if late > self.max_lag_ns:
            frame_ns = self.frame_samples * 1_000_000_000 // self.rate
            skip = late // frame_ns
            self._index += skip
            self.skipped_frames += skip
        return self._index * self.frame_samples, self._due(self._index)


def reply_frame(chunk: bytes | None) -> bytes:
    """One outgoing 20 ms frame: the playout's chunk, zero-padded, or silence."""
    if chunk is None:
        return bytes(FRAME_BYTES)
    if len(chunk) >= FRAME_BYTES:
        return chunk[:FRAME_BYTES]
    return chunk + bytes(FRAME_BYTES - len(chunk))


def downmix(interleaved: Int16Array, channels: int) -> Int16Array:
    """Interleaved 16-bit samples of `channels` channels to mono (the mean)."""
    if channels <= 1:
        return interleaved.astype(np.int16, copy=False)
    usable = len(interleaved) - len(interleaved) % channels
    frames = interleaved[:usable].astype(np.int32).reshape(-1, channels)
    mono: Int16Array = (frames.sum(axis=1) // channels).astype(np.int16)
    return mono


class CallerAudio:
    """Decoded caller frames in, 48 kHz mono out (resampling if the codec runs slower)."""

    def __init__(self, out_rate: int = RTC_RATE) -> None:
        self.out_rate = out_rate
        self._resampler: StreamResampler | None = None

    def convert(self, interleaved: Int16Array, channels: int, rate: int) -> Int16Array:
        mono = downmix(interleaved, channels)
        if rate == self.out_rate:
            return mono
        if self._resampler is None or self._resampler.in_rate != rate:
            self._resampler = StreamResampler(rate, self.out_rate)
        return self._resampler.process(mono)
