"""Frame classification: webrtcvad's verdict plus an energy gate.

webrtcvad keeps answering "voiced" for 100-160 ms after speech really ends (its
hangover), and it happily calls steady noise speech. So a frame only counts as
*speech-like* when webrtcvad says voiced AND its level stands clearly above the noise
floor and not far below the loudest speech of the turn. The last speech-like frame is
the true end of speech from which endpointing silence is counted.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import webrtcvad

from voice.audio import PIPELINE_RATE, Int16Array, array_to_pcm16_bytes, rms_dbfs


@dataclass(frozen=True)
class FrameVerdict:
    voiced: bool  # webrtcvad's raw verdict
    level_db: float
    speech_like: bool  # voiced and loud enough: real speech energy


class NoiseFloor:
    """Background level (dBFS) by minimum statistics: the quietest frame of the last
    `window_ms`. Speech always dips between syllables within a couple of seconds, so
    the minimum follows the background even mid-turn, while steady noise (which
    webrtcvad may call voiced) lifts the floor to itself within `window_ms`."""

    def __init__(self, initial_db: float = -60.0, frame_ms: int = 20,
                 window_ms: int = 2000) -> None:
        self._levels: deque[float] = deque([initial_db] * (window_ms // frame_ms),
                                           maxlen=window_ms // frame_ms)
        self.db = initial_db

    def update(self, level_db: float) -> None:
        self._levels.append(level_db)
        self.db = min(self._levels)


class FrameClassifier:
    """Classifies 16 kHz mono int16 frames of 10, 20 or 30 ms."""

    ABOVE_FLOOR_DB = 6.0  # speech must stand this far above the noise floor
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
        self.floor.update(level)
        voiced = self._vad.is_speech(array_to_pcm16_bytes(frame), PIPELINE_RATE)
        threshold = max(self.floor.db + self.ABOVE_FLOOR_DB, self.ABSOLUTE_MIN_DB)
        if peak_db is not None:
            threshold = max(threshold, peak_db - self.BELOW_PEAK_DB)
        speech_like = voiced and level >= threshold
        return FrameVerdict(voiced=voiced, level_db=level, speech_like=speech_like)
