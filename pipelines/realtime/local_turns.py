"""The service's own turn detection for the realtime pipeline (`--realtime-turn-detection
local`): our VAD and turn detector decide when the caller's turn ends, and the pipeline
then commits the provider's input buffer and asks for a response itself.

Only the turn's audio goes to the provider: a short pre-roll kept while idle, then
everything until the turn ends.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from voice.audio import PIPELINE_RATE, Int16Array, StreamResampler
from voice.turns import FixedSilence, TurnDetector, TurnEvent, frames_of
from voice.vad import FrameClassifier

PREROLL_MS = 400


class LocalTurns:
    def __init__(self, aggressiveness: int, frame_ms: int, silence_ms: int,
                 min_speech_ms: int, max_turn_s: float, session_rate: int,
                 provider_rate: int) -> None:
        classifier = FrameClassifier(aggressiveness, frame_ms)
        self._detector = TurnDetector(classifier, FixedSilence(silence_ms), min_speech_ms,
                                      max_turn_s)
        self._frame_ms = frame_ms
        self._to_pipeline = StreamResampler(session_rate, PIPELINE_RATE)
        self._pending = np.zeros(0, dtype=np.int16)
        self._preroll: deque[Int16Array] = deque()
        self._preroll_samples = 0
        self._max_preroll = provider_rate * PREROLL_MS // 1000

    @property
    def in_turn(self) -> bool:
        return self._detector.in_turn

    def push(self, samples: Int16Array, arrival_ns: int) -> list[TurnEvent]:
        self._pending = np.concatenate([self._pending, self._to_pipeline.process(samples)])
        frames, self._pending = frames_of(self._pending, self._detector.frame_samples)
        events: list[TurnEvent] = []
        for frame in frames:
            events.extend(self._detector.push(frame, arrival_ns))
        return events

    def push_silence(self, ms: int, now_ns: int) -> list[TurnEvent]:
        """The caller stopped sending mid-turn: count the gap as silence."""
        events: list[TurnEvent] = []
        for _ in range(ms // self._frame_ms):
            if not self._detector.in_turn:
                break
            events.extend(self._detector.push(self._detector.silence_frame(), now_ns))
        return events

    def keep(self, provider_samples: Int16Array) -> None:
        """Audio heard while idle, at the provider's rate: the next turn's pre-roll."""
        self._preroll.append(provider_samples)
        self._preroll_samples += len(provider_samples)
        while self._preroll and self._preroll_samples - len(self._preroll[0]) >= \
                self._max_preroll:
            self._preroll_samples -= len(self._preroll.popleft())

    def take_preroll(self) -> Int16Array:
        audio = (np.concatenate(list(self._preroll)) if self._preroll
                 else np.zeros(0, dtype=np.int16))
        self._preroll.clear()
        self._preroll_samples = 0
        return audio


class SpeechEnds:
    """Our own view of where the caller's speech ends, while the provider decides the
    turns: the arrival time of each speech-like frame (webrtcvad and the energy gate of
    `voice.vad`, the cascade's definition of the true end of speech), kept for a while,
    so the latency timeline measures every provider from the same point."""

    def __init__(self, aggressiveness: int, frame_ms: int, session_rate: int,
                 keep_s: float = 30.0) -> None:
        self._classifier = FrameClassifier(aggressiveness, frame_ms)
        self._to_pipeline = StreamResampler(session_rate, PIPELINE_RATE)
        self._pending = np.zeros(0, dtype=np.int16)
        self._speech: deque[int] = deque(maxlen=int(keep_s * 1000) // frame_ms)

    def push(self, samples: Int16Array, arrival_ns: int) -> None:
        self._pending = np.concatenate([self._pending, self._to_pipeline.process(samples)])
        frames, self._pending = frames_of(self._pending, self._classifier.frame_samples)
        for frame in frames:
            if self._classifier.classify(frame, None).speech_like:
                self._speech.append(arrival_ns)

    def last_before(self, ns: int, not_before: int | None = None) -> int | None:
        """The last speech-like frame that arrived at or before `ns` (and not before
        `not_before`), or None."""
        for arrival in reversed(self._speech):
            if arrival <= ns:
                return arrival if not_before is None or arrival >= not_before else None
        return None
