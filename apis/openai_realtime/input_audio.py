"""The input audio buffer of one /v1/realtime session, and its server VAD.

Sans-I/O. Appended 24 kHz PCM is resampled to 16 kHz for the service's own turn
detector (`voice.turntaking.detector`), which runs in *audio time*: each frame is stamped with the
position of its end in the session's audio, so the detector's speech start, true
end of speech and turn end come out directly as the protocol's `audio_start_ms` /
`audio_end_ms`. `server_vad` ends a turn after a fixed `silence_duration_ms`;
`semantic_vad` uses the service's own end-of-turn policy, the cascade's
(`voice.turntaking.endpointing`, `--turn-preset`: transcript cues and the caller's pauses, told
the speculative transcript through `note_transcript`); `eagerness` low and high pick
the patient preset and a 500 ms cap. The buffer also keeps what was
appended since the last commit (for an explicit `input_audio_buffer.commit`), at most
`max_turn_s` of it.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from apis.openai_realtime.session_config import RATE, TurnDetection
from voice.audio import PIPELINE_RATE, Int16Array, StreamResampler, pcm16_bytes_to_array
from voice.settings import Settings
from voice.turntaking.detector import EndOfTurnPolicy, FixedSilence, TurnEvent
from voice.turntaking.endpointing import EAGER_MAX_WAIT_MS, CallerPauses, build_policy
from voice.turntaking.listener import Listener, TurnConfig

NS_PER_SAMPLE = 1_000_000_000 // PIPELINE_RATE


def audio_ms(position_ns: int) -> int:
    return position_ns // 1_000_000


class InputAudio:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._to_pipeline = StreamResampler(RATE, PIPELINE_RATE)
        self._buffer: deque[Int16Array] = deque()
        self._buffered = 0
        self._max_buffered = int(settings.max_turn_s * PIPELINE_RATE)
        self.position = 0  # 16 kHz samples received this session
        self.listener: Listener | None = None
        self.detection: TurnDetection | None = None
        self._pauses = CallerPauses()

    def configure(self, detection: TurnDetection | None) -> None:
        """(Re)start the server VAD for new settings; None turns it off."""
        if detection == self.detection and (detection is None) == (self.listener is None):
            return
        self.detection = detection
        self.listener = None
        if detection is not None:
            self.listener = Listener(TurnConfig.from_settings(self._settings), PIPELINE_RATE,
                                     self._policy(detection), self._pauses)

    def _policy(self, detection: TurnDetection) -> EndOfTurnPolicy:
        if detection.type == "server_vad":
            return FixedSilence(detection.silence_duration_ms)
        s = self._settings  # semantic VAD: the service's own end-of-turn policy
        if detection.eagerness == "low":
            return build_policy("patient", 0, 0, s.silence_ms, self._pauses)
        if detection.eagerness == "high":
            return build_policy("default", s.min_wait_ms, EAGER_MAX_WAIT_MS, s.silence_ms,
                                self._pauses)
        return build_policy(s.turn_preset, s.min_wait_ms, s.max_wait_ms, s.silence_ms,
                            self._pauses)

    def note_transcript(self, speech_end_ns: int, text: str | None) -> None:
        """The speculative transcript of the turn up to `speech_end_ns` (semantic VAD)."""
        if self.listener is not None:
            self.listener.set_transcript(speech_end_ns, text or "")

    def append(self, pcm: bytes) -> list[TurnEvent]:
        samples = self._to_pipeline.process(pcm16_bytes_to_array(pcm))
        self._keep(samples)
        if self.listener is None:
            self.position += len(samples)
            return []
        events: list[TurnEvent] = []
        for frame in self.listener.frames(samples):  # stamped in audio time
            self.position += len(frame)
            events.extend(self.listener.hear(frame, self.position * NS_PER_SAMPLE))
        return events

    def _keep(self, samples: Int16Array) -> None:
        self._buffer.append(samples)
        self._buffered += len(samples)
        while self._buffered - len(self._buffer[0]) >= self._max_buffered:
            self._buffered -= len(self._buffer.popleft())

    @property
    def buffered_ms(self) -> float:
        return self._buffered * 1000 / PIPELINE_RATE

    def take(self) -> Int16Array:
        """The buffer's audio (16 kHz), emptied: a commit."""
        audio = (np.concatenate(list(self._buffer)) if self._buffer
                 else np.zeros(0, dtype=np.int16))
        self.clear()
        return audio

    def clear(self) -> None:
        self._buffer.clear()
        self._buffered = 0

    def reset_turn(self) -> None:
        """Forget any turn in progress (after a clear or a manual commit)."""
        detection, self.detection = self.detection, None
        self.configure(detection)
