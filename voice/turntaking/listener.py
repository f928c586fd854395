"""The caller's audio as turn-taking hears it: one front end for every path that
decides turns (the cascade, the realtime pipeline's `local` turns, the /v1/realtime
endpoint's server VAD).

`Listener` resamples the session's audio to 16 kHz, cuts it into VAD frames, and feeds
them to the turn detector with the end-of-turn policy of the settings
(`endpointing.build_policy`, or one given, such as server VAD's fixed silence). It
records the caller's pauses inside turns (the adaptive policy learns from them) and
passes the speculative transcript and the final pitch on to the policy.
`TurnConfig` is the part of the settings it reads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from voice.audio import PIPELINE_RATE, Int16Array, StreamResampler
from voice.playout import Playout
from voice.settings import Settings
from voice.turntaking.denoise import make_denoiser
from voice.turntaking.detector import (
    EndOfTurnPolicy,
    SpeechResumed,
    TurnDetector,
    TurnEvent,
    frames_of,
)
from voice.turntaking.echo import EchoCanceller
from voice.turntaking.endpointing import CallerPauses, build_policy
from voice.turntaking.vad import FrameClassifier

STARVATION_S = 0.1  # no audio this long inside a turn counts as silence


@dataclass(frozen=True)
class TurnConfig:
    """The settings turn-taking reads (see `voice settings` for each)."""

    vad_aggressiveness: int = 2
    vad_frame_ms: int = 20
    min_speech_ms: int = 200
    max_turn_s: float = 30.0
    turn_preset: str = "default"
    min_wait_ms: float = 0
    max_wait_ms: float = 0
    silence_ms: int = 250
    barge_in_pause_ms: int = 80
    barge_in_confirm_ms: int = 900
    continuation_window_ms: int = 1000
    denoiser: str = "none"

    @classmethod
    def from_settings(cls, s: Settings) -> TurnConfig:
        return cls(vad_aggressiveness=s.vad_aggressiveness, vad_frame_ms=s.vad_frame_ms,
                   min_speech_ms=s.min_speech_ms, max_turn_s=s.max_turn_s,
                   turn_preset=s.turn_preset, min_wait_ms=s.min_wait_ms,
                   max_wait_ms=s.max_wait_ms, silence_ms=s.silence_ms,
                   barge_in_pause_ms=s.barge_in_pause_ms,
                   barge_in_confirm_ms=s.barge_in_confirm_ms, denoiser=s.denoiser,
                   continuation_window_ms=s.continuation_window_ms)


class Listener:
    def __init__(self, config: TurnConfig, session_rate: int,
                 policy: EndOfTurnPolicy | None = None,
                 pauses: CallerPauses | None = None) -> None:
        self.config = config
        self.pauses = pauses if pauses is not None else CallerPauses()  # `policy` learns here
        if policy is None:
            policy = build_policy(config.turn_preset, config.min_wait_ms, config.max_wait_ms,
                                  config.silence_ms, self.pauses)
        classifier = FrameClassifier(config.vad_aggressiveness, config.vad_frame_ms)
        self._detector = TurnDetector(classifier, policy, config.min_speech_ms,
                                      config.max_turn_s, onset_ms=config.barge_in_pause_ms)
        self._to_pipeline = StreamResampler(session_rate, PIPELINE_RATE)
        self._pending = np.zeros(0, dtype=np.int16)
        self._echo: EchoCanceller | None = None
        self._denoise = make_denoiser(config.denoiser)

    def cancel_echo_of(self, playout: Playout) -> None:
        """Take the echo of what `playout` plays out of every frame heard from now on
        (voice/turntaking/echo.py); frames must then be stamped with their arrival."""
        self._echo = EchoCanceller(playout.sample_rate)
        playout.taps.append(self._echo.tap)

    def use_preset(self, preset: str) -> None:
        """Another end-of-turn preset from the next frame on (a client's
        `session.update`); what was learnt of the caller's pauses is kept."""
        self.config = dataclasses.replace(self.config, turn_preset=preset)
        self._detector.use_policy(build_policy(
            preset, self.config.min_wait_ms, self.config.max_wait_ms, self.config.silence_ms,
            self.pauses))

    @property
    def in_turn(self) -> bool:
        return self._detector.in_turn

    @property
    def speech_ms(self) -> float:
        return self._detector.speech_ms

    @property
    def frame_samples(self) -> int:
        return self._detector.frame_samples

    def set_transcript(self, speech_end_ns: int, text: str,
                       final_pitch: float | None = None) -> None:
        """The speculative transcript (and final pitch) of the turn up to
        `speech_end_ns`, for the end-of-turn policy."""
        self._detector.set_transcript(speech_end_ns, text, final_pitch)

    def frames(self, samples: Int16Array) -> list[Int16Array]:
        """Whole 16 kHz VAD frames of `samples` (the session's audio); the rest waits."""
        self._pending = np.concatenate([self._pending, self._to_pipeline.process(samples)])
        frames, self._pending = frames_of(self._pending, self._detector.frame_samples)
        return frames

    def hear(self, frame: Int16Array, stamp_ns: int) -> list[TurnEvent]:
        """One frame, stamped with its arrival (or its position in audio time)."""
        if self._echo is not None:
            frame = self._echo.clean(frame, stamp_ns)
        if self._denoise is not None:  # after the echo: it is the linear part to take out
            frame = self._denoise(frame)
        events = self._detector.push(frame, stamp_ns)
        self._record_pauses(events)
        return events

    def push(self, samples: Int16Array, arrival_ns: int) -> list[TurnEvent]:
        events: list[TurnEvent] = []
        for frame in self.frames(samples):
            events.extend(self.hear(frame, arrival_ns))
        return events

    def push_silence(self, ms: float, now_ns: int) -> list[TurnEvent]:
        """The caller stopped sending mid-turn: count the gap as silence (fillers, taken
        out again if the audio was only late)."""
        events: list[TurnEvent] = []
        for _ in range(int(ms) // self.config.vad_frame_ms):
            if not self._detector.in_turn:
                break
            filled = self._detector.push_filler(now_ns)
            self._record_pauses(filled)
            events.extend(filled)
        return events

    def _record_pauses(self, events: list[TurnEvent]) -> None:
        for event in events:
            if isinstance(event, SpeechResumed):
                self.pauses.record(event.pause_ms)
