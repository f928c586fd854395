"""Recordings of calls, when the operator turns them on (`--record-calls`; off by
default): both sides in one stereo WAV, the caller on the left channel and the
assistant on the right, 16 kHz 16-bit, next to the call record.

The caller's audio is placed as it came, one chunk after another (it is a continuous
stream: transports fill a quiet caller with silence), and the assistant's at the time
the caller starts hearing it (`Playout` taps it as it leaves, with that time), on the
same clock. A chunk may arrive on the media clock thread (SIP), so taps only append
under a lock; the WAV is written from the event loop's thread pool every second and
at the end, so no audio thread ever waits for the disk. Memory held: about two
seconds of audio.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from voice.audio import Int16Array, StreamResampler, pcm16_bytes_to_array

RATE = 16000
HOLD_S = 1.0  # audio kept back before writing, for the assistant's chunks to land


class CallRecording:
    def __init__(self, path: Path, start_ns: int) -> None:
        import soundfile

        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file: Any = soundfile.SoundFile(str(path), "w", samplerate=RATE, channels=2,
                                             subtype="PCM_16")
        self._start_ns = start_ns
        self._lock = threading.Lock()
        self._caller: list[Int16Array] = []  # contiguous, from frame `_written`
        self._caller_frames = 0  # caller frames received in all
        self._assistant: list[tuple[int, Int16Array]] = []  # (frame, samples)
        self._written = 0  # frames in the file
        self._to_rate: dict[str, StreamResampler] = {}  # one stream per side: no seams
        self.closed = False

    def _resampled(self, side: str, samples: Int16Array, rate: int) -> Int16Array:
        if rate == RATE:
            return samples
        stream = self._to_rate.get(side)
        if stream is None or stream.in_rate != rate:
            stream = self._to_rate[side] = StreamResampler(rate, RATE)
        return stream.process(samples)

    def caller(self, samples: Int16Array, rate: int) -> None:
        """The caller's audio, in the order it came (session rate `rate`)."""
        audio = self._resampled("caller", samples, rate)
        with self._lock:
            self._caller.append(audio)
            self._caller_frames += len(audio)

    def assistant(self, pcm: bytes, rate: int, heard_ns: int) -> None:
        """A chunk of reply audio that the caller starts hearing at `heard_ns`."""
        audio = self._resampled("assistant", pcm16_bytes_to_array(pcm), rate)
        frame = max(0, (heard_ns - self._start_ns) * RATE // 1_000_000_000)
        with self._lock:
            self._assistant.append((frame, audio))

    def flush(self, final: bool = False) -> None:
        """Write what is older than HOLD_S (everything, when `final`). Not thread-safe
        against itself: one flusher at a time (the session's)."""
        with self._lock:
            end = self._caller_frames if final else self._caller_frames - int(HOLD_S * RATE)
            if final:
                last = max((f + len(a) for f, a in self._assistant), default=0)
                end = max(end, last)
            if end <= self._written:
                return
            frames = end - self._written
            left = np.zeros(frames, np.int16)
            caller = np.concatenate(self._caller) if self._caller else np.zeros(0, np.int16)
            take = min(frames, len(caller))
            left[:take] = caller[:take]
            self._caller = [caller[take:]] if take < len(caller) else []
            right = np.zeros(frames, np.int16)
            kept = []
            for frame, audio in self._assistant:
                start, stop = frame - self._written, frame - self._written + len(audio)
                if stop <= 0:
                    continue  # before what is written already: too late to place
                lo, hi = max(0, start), min(frames, stop)
                if hi > lo:
                    right[lo:hi] = audio[lo - start: hi - start]
                if stop > frames:  # the rest goes in the next block
                    kept.append((frame, audio))
            self._assistant = kept
            self._written = end
        self._file.write(np.stack([left, right], axis=1))
        if final:
            self._file.close()
            self.closed = True
