"""The cascade's three models as one value, with the tools the LLM may call: loaded once
by `registry.load_models()` and shared by every session (and slowed down by `faults`,
for tests)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipelines.providers.llm import LanguageModel
from pipelines.providers.stt import SpeechToText
from pipelines.providers.tts import TextToSpeech
from pipelines.tools import ToolBox


@dataclass
class CascadeModels:
    stt: SpeechToText
    llm: LanguageModel
    tts: TextToSpeech
    tools: ToolBox = field(default_factory=lambda: ToolBox([]))
    # the voices a session may choose (session.update voice), by name; the default's
    # included. Empty: only `tts`.
    voices: dict[str, TextToSpeech] = field(default_factory=dict)

    def priced(self, llm_model: str) -> dict[str, str]:
        """The models a price table knows them by (voice/usage.py `Models`): the LLM
        that served (`llm_model`), and a remote STT or TTS's model; "" for local ones."""
        return {"llm": llm_model, "stt": getattr(self.stt, "priced_model", ""),
                "tts": getattr(self.tts, "priced_model", ""), "realtime": ""}
