"""What the realtime pipeline is given: its options (from the settings) and the session
it serves."""

from __future__ import annotations

from dataclasses import dataclass

from voice.settings import Settings
from voice.turntaking.listener import TurnConfig
from wire.openai_realtime import server_events as rt


@dataclass(frozen=True)
class RealtimeOptions:
    instructions: str
    voice: str
    turn_detection: rt.TurnDetection
    silence_ms: int
    language: str
    timeout_s: float
    vad_aggressiveness: int = 2
    vad_frame_ms: int = 20
    min_speech_ms: int = 200
    max_turn_s: float = 30.0
    dtmf_hangup_digit: str = "0"
    dtmf_hangup_message: str = "Goodbye."
    reconnect_backoff_s: float = 0.5
    # our own turn-taking (turn_detection "local"), as in the cascade: voice.turntaking.endpointing
    turn_preset: str = "default"
    min_wait_ms: int = 0
    max_wait_ms: int = 0
    barge_in_pause_ms: int = 80
    barge_in_confirm_ms: int = 900
    continuation_window_ms: int = 1000
    no_speech_threshold: float = 0.6

    def turn_config(self) -> TurnConfig:
        return TurnConfig(
            vad_aggressiveness=self.vad_aggressiveness, vad_frame_ms=self.vad_frame_ms,
            min_speech_ms=self.min_speech_ms, max_turn_s=self.max_turn_s,
            turn_preset=self.turn_preset, min_wait_ms=self.min_wait_ms,
            max_wait_ms=self.max_wait_ms, silence_ms=self.silence_ms,
            barge_in_pause_ms=self.barge_in_pause_ms,
            barge_in_confirm_ms=self.barge_in_confirm_ms,
            continuation_window_ms=self.continuation_window_ms)

    @classmethod
    def from_settings(cls, s: Settings) -> RealtimeOptions:
        detection: rt.TurnDetection = (
            "semantic_vad" if s.realtime_turn_detection == "semantic_vad"
            else "local" if s.realtime_turn_detection == "local" else "server_vad")
        return cls(instructions=s.system_prompt, voice=s.realtime_voice,
                   turn_detection=detection, silence_ms=s.silence_ms, language=s.stt_language,
                   timeout_s=s.realtime_timeout_s, vad_aggressiveness=s.vad_aggressiveness,
                   vad_frame_ms=s.vad_frame_ms, min_speech_ms=s.min_speech_ms,
                   max_turn_s=s.max_turn_s, dtmf_hangup_digit=s.dtmf_hangup_digit,
                   dtmf_hangup_message=s.dtmf_hangup_message, turn_preset=s.turn_preset,
                   min_wait_ms=s.min_wait_ms, max_wait_ms=s.max_wait_ms,
                   barge_in_pause_ms=s.barge_in_pause_ms,
                   barge_in_confirm_ms=s.barge_in_confirm_ms,
                   continuation_window_ms=s.continuation_window_ms,
                   no_speech_threshold=s.stt_no_speech_threshold)
