"""Per-turn latency timeline (docs/protocol.md, "turn.latency", lists the stamps).

Stamps are monotonic nanoseconds. Work done speculatively can finish before the
stamp it follows (STT ready before the turn was confirmed), so stages are measured
along an *effective* timeline where each stamp is at least its predecessor: every
stage is then non-negative and the stages present add up exactly to voice-to-voice
(a stage whose stamp is missing, such as `llm_ms` when the LLM failed and the caller
heard an apology, is left out).
"""

from __future__ import annotations

from dataclasses import dataclass, field

STAMPS = ("speech_start", "speech_end", "turn_end", "stt_final", "llm_first_token",
          "tts_first_text", "tts_first_audio", "first_audio_out", "tool_result")
OPTIONAL = ("tool_result",)  # only in a turn whose first words waited for a tool

# (stage name, stamp it ends at); each stage starts where the previous one ended
STAGES = (
    ("endpointing_ms", "turn_end"),
    ("stt_ms", "stt_final"),
    ("tool_ms", "tool_result"),  # the LLM asking for tools, and the tools answering
    ("llm_ms", "llm_first_token"),
    ("first_text_ms", "tts_first_text"),
    ("tts_ms", "tts_first_audio"),
    ("transport_ms", "first_audio_out"),
)


@dataclass
class TurnTimeline:
    turn_id: int
    stamps: dict[str, int] = field(default_factory=dict)

    def mark(self, stamp: str, now_ns: int, *, overwrite: bool = False) -> None:
        if stamp not in STAMPS:
            raise ValueError(f"unknown stamp {stamp!r}")
        if overwrite or stamp not in self.stamps:
            self.stamps[stamp] = now_ns

    def has(self, stamp: str) -> bool:
        return stamp in self.stamps

    def complete(self) -> bool:
        return all(s in self.stamps for s in STAMPS[1:] if s not in OPTIONAL)

    def stages_ms(self) -> dict[str, float]:
        """Per-stage milliseconds for the stamps present; voice_to_voice_ms when complete."""
        if "speech_end" not in self.stamps:
            return {}
        stages: dict[str, float] = {}
        previous = self.stamps["speech_end"]
        for name, stamp in STAGES:
            if stamp not in self.stamps:  # e.g. no LLM token when the LLM failed
                continue
            effective = max(self.stamps[stamp], previous)
            stages[name] = round((effective - previous) / 1e6, 1)
            previous = effective
        if "first_audio_out" in self.stamps:
            total = max(self.stamps["first_audio_out"], previous) - self.stamps["speech_end"]
            stages["voice_to_voice_ms"] = round(total / 1e6, 1)
        return stages

    def relative_ms(self) -> dict[str, float]:
        """Raw stamps in ms relative to speech_end (negative = before it)."""
        origin = self.stamps.get("speech_end")
        if origin is None:
            return {}
        return {k: round((v - origin) / 1e6, 1) for k, v in self.stamps.items()}

    def log_line(self) -> str:
        parts = " ".join(f"{k.removesuffix('_ms')}={v:.0f}" for k, v in self.stages_ms().items())
        return f"turn {self.turn_id} latency ms: {parts}"
