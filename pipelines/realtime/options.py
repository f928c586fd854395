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
    dtmf_hangup_digit: str = "0"
    dtmf_hangup_message: str = "Goodbye."
    reconnect_backoff_s: float = 0.5
    no_speech_threshold: float = 0.6
    # the VAD, and our own turn-taking (turn_detection "local"), as in the cascade
    turns: TurnConfig = TurnConfig()

    @classmethod
    def from_settings(cls, s: Settings) -> RealtimeOptions:
        detection: rt.TurnDetection = (
            "semantic_vad" if s.realtime_turn_detection == "semantic_vad"
            else "local" if s.realtime_turn_detection == "local" else "server_vad")
        return cls(instructions=s.system_prompt, voice=s.realtime_voice,
                   turn_detection=detection, silence_ms=s.silence_ms, language=s.stt_language,
                   timeout_s=s.realtime_timeout_s, dtmf_hangup_digit=s.dtmf_hangup_digit,
                   dtmf_hangup_message=s.dtmf_hangup_message,
                   no_speech_threshold=s.stt_no_speech_threshold,
                   turns=TurnConfig.from_settings(s))
