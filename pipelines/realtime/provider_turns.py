"""Turns the provider decides (`server_vad`, `semantic_vad`), on our clock.

The provider says where a turn started and stopped in its input buffer; `InputClock`
maps that back to when the audio reached us. The end the latency timeline measures
from is our own view of where the caller's speech ended (`SpeechEnds`: the last
speech-like frame before the provider's decision, the cascade's definition of the true
end of speech), so every provider is measured from the same point; failing that, the
provider's `audio_end_ms` less the silence it waited (known for server VAD).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from pipelines.realtime.options import RealtimeOptions
from pipelines.realtime.provider_reply import InputClock
from voice.audio import PIPELINE_RATE, Int16Array, StreamResampler
from voice.turntaking.detector import frames_of
from voice.turntaking.vad import FrameClassifier

PREFIX_PADDING_MS = 300  # what session_update asks of server VAD


class ProviderTurns:
    def __init__(self, options: RealtimeOptions, session_rate: int) -> None:
        self._server_vad = options.turn_detection == "server_vad"
        self._silence_ms = options.silence_ms
        self._ends = SpeechEnds(options.turns.vad_aggressiveness, options.turns.vad_frame_ms,
                                session_rate)
        self.speaking = False  # between speech_started and speech_stopped

    def hear(self, samples: Int16Array, arrival_ns: int) -> None:
        self._ends.push(samples, arrival_ns)

    def started(self, audio_start_ms: int, clock: InputClock) -> int | None:
        """The provider heard speech start: when that speech reached us."""
        self.speaking = True
        padding = PREFIX_PADDING_MS if self._server_vad else 0
        return clock.arrival_ns(audio_start_ms + padding)

    def speech_end(self, audio_end_ms: int, clock: InputClock, speech_start_ns: int | None,
                   now_ns: int) -> int:
        """The provider ended the turn at `audio_end_ms`: the true end of speech."""
        self.speaking = False
        decided = clock.arrival_ns(audio_end_ms) or now_ns
        ours = self._ends.last_before(decided, not_before=speech_start_ns)
        silence = self._silence_ms if self._server_vad else 0
        reported = clock.arrival_ns(max(0, audio_end_ms - silence))
        return ours or reported or now_ns


class SpeechEnds:
    """Our own view of where the caller's speech ends, while the provider decides the
    turns: the arrival time of each speech-like frame (webrtcvad and the energy gate of
    `voice.turntaking.vad`, the cascade's definition of the true end of speech), kept for a while,
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
