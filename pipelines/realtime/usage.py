"""What a realtime provider's responses used (their `response.done` usage), per turn
and for the session: a turn with tool rounds has several responses, so each report is
the turn's running total."""

from __future__ import annotations

from voice.events import TurnUsage
from voice.usage import Usage
from wire.openai_realtime.server_events import ResponseUsage


class ProviderUsage:
    def __init__(self, model: str) -> None:
        self.total = Usage()
        self._turn = Usage()
        self.models = {"llm": "", "stt": "", "tts": "", "realtime": model}

    def new_turn(self) -> None:
        self._turn = Usage()

    def add(self, turn_id: int, reported: ResponseUsage) -> TurnUsage:
        """Count one response's usage; the turn's `turn.usage` event so far."""
        used = Usage(realtime_text_in_tokens=reported.text_in,
                     realtime_audio_in_tokens=reported.audio_in,
                     realtime_cached_tokens=reported.cached_in,
                     realtime_text_out_tokens=reported.text_out,
                     realtime_audio_out_tokens=reported.audio_out)
        self.total.add(used)
        self._turn.add(used)
        return TurnUsage(turn_id=turn_id, usage=self._turn.to_dict(), models=self.models)
