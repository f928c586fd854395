"""Frame classification: webrtcvad's verdict plus an energy gate.

webrtcvad keeps answering "voiced" for 100-160 ms after speech really ends (its
hangover), and it happily calls steady noise speech. So a frame only counts as
*speech-like* when webrtcvad says voiced AND its level stands clearly above the noise
floor and not far below the loudest speech of the turn. The last speech-like frame is
the true end of speech from which endpointing silence is counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import webrtcvad

from voice.audio import PIPELINE_RATE, Int16Array, array_to_pcm16_bytes, rms_dbfs


@dataclass(frozen=True)
class FrameVerdict:
    voiced: bool  # webrtcvad's raw verdict
    level_db: float
    speech_like: bool  # voiced and loud enough: real speech energy


class NoiseFloor:
    """A slow-rising, fast-falling estimate of the background level (dBFS)."""

    def __init__(self, initial_db: float = -60.0, frame_ms: int = 20) -> None:
        self.db = initial_db
        self._rise = min(1.0, frame_ms / 1500.0)  # ~1.5 s time constant upwards
        self._fall = min(1.0, frame_ms / 60.0)  # ~60 ms downwards

    def update(self, level_db: float) -> None:
        rate = self._rise if level_db > self.db else self._fall
        self.db += rate * (level_db - self.db)


class FrameClassifier:
    """Classifies 16 kHz mono int16 frames of 10, 20 or 30 ms."""

    ABOVE_FLOOR_DB = 10.0  # speech must stand this far above the noise floor
    BELOW_PEAK_DB = 35.0  # ... and not fall further than this below the turn's peak
    ABSOLUTE_MIN_DB = -55.0

    def __init__(self, aggressiveness: int, frame_ms: int) -> None:
        self._vad = webrtcvad.Vad(aggressiveness)
        self.frame_ms = frame_ms
        self.frame_samples = PIPELINE_RATE * frame_ms // 1000
        self.floor = NoiseFloor(frame_ms=frame_ms)

    def classify(self, frame: Int16Array, peak_db: float | None) -> FrameVerdict:
        if frame.size != self.frame_samples:
            raise ValueError(f"frame of {frame.size} samples, expected {self.frame_samples}")
        level = rms_dbfs(frame)
        voiced = self._vad.is_speech(array_to_pcm16_bytes(frame), PIPELINE_RATE)
        threshold = max(self.floor.db + self.ABOVE_FLOOR_DB, self.ABSOLUTE_MIN_DB)
        if peak_db is not None:
            threshold = max(threshold, peak_db - self.BELOW_PEAK_DB)
        speech_like = voiced and level >= threshold
        return FrameVerdict(voiced=voiced, level_db=level, speech_like=speech_like)

    def learn_background(self, verdict: FrameVerdict) -> None:
        """Feed a frame known not to be part of a turn into the noise-floor estimate."""
        self.floor.update(verdict.level_db)
