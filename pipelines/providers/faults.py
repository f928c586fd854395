"""Testing only: slow one stage of the cascade on purpose (`--debug-stage-delay`).

The latency regression suite (docs/latency.md) proves that it catches a slower stage
by running the service with, say, `--debug-stage-delay stt=150` and checking that the
report blames the stt stage and nothing else. The delay is added by wrapping the
provider, so the stage's own stamps move exactly as they would if the model were
slower:

- `stt`: before each transcription;
- `llm`: before the first token of each reply (later tokens are not delayed);
- `tts`: before each synthesis.

Never set this in production: every caller waits that much longer.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

from pipelines.providers.llm import LanguageModel, Message
from pipelines.providers.models import CascadeModels
from pipelines.providers.stt import SpeechToText, Transcript
from pipelines.providers.tts import TextToSpeech
from pipelines.tools import ToolCall
from voice.audio import Int16Array
from voice.errors import ConfigError

STAGES = ("stt", "llm", "tts")
MAX_DELAY_MS = 10_000.0


def parse_stage_delays(spec: str) -> dict[str, float]:
    """"stt=150,llm=80" -> {"stt": 0.15, "llm": 0.08} (seconds); empty -> {}."""
    delays: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        stage, _, value = part.partition("=")
        stage = stage.strip()
        try:
            ms = float(value)
        except ValueError:
            raise ConfigError(f"debug_stage_delay: {part!r} is not STAGE=MILLISECONDS") from None
        if stage not in STAGES:
            raise ConfigError(f"debug_stage_delay: unknown stage {stage!r}; "
                              f"stages: {', '.join(STAGES)}")
        if not 0 <= ms <= MAX_DELAY_MS:
            raise ConfigError(f"debug_stage_delay: {stage} delay must be 0-{MAX_DELAY_MS:.0f} ms")
        delays[stage] = ms / 1000
    return delays


class _Delegating:
    """Everything but the delayed call goes to the wrapped provider."""

    def __init__(self, inner: Any, delay_s: float) -> None:
        self._inner = inner
        self._delay_s = delay_s
        self.name = f"{inner.name} (+{delay_s * 1000:.0f} ms, debug)"

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._inner, attribute)


class DelayedSTT(_Delegating):
    async def transcribe(self, audio: Int16Array) -> Transcript:
        await asyncio.sleep(self._delay_s)
        transcript: Transcript = await self._inner.transcribe(audio)
        return transcript


class DelayedLLM(_Delegating):
    async def stream(self, messages: list[Message], tools: list[dict[str, Any]] | None = None,
                     calls: list[ToolCall] | None = None) -> AsyncIterator[str]:
        await asyncio.sleep(self._delay_s)
        inner = (self._inner.stream(messages, tools, calls) if tools
                 else self._inner.stream(messages))
        async for delta in inner:
            yield delta


class DelayedTTS(_Delegating):
    async def synthesize(self, text: str) -> Int16Array:
        await asyncio.sleep(self._delay_s)
        samples: Int16Array = await self._inner.synthesize(text)
        return samples


def delayed(models: CascadeModels, spec: str) -> CascadeModels:
    """`models` with the stages named in `spec` slowed down."""
    delays = parse_stage_delays(spec)
    stt: SpeechToText = models.stt
    llm: LanguageModel = models.llm
    tts: TextToSpeech = models.tts
    if "stt" in delays:
        stt = DelayedSTT(stt, delays["stt"])
    if "llm" in delays:
        llm = DelayedLLM(llm, delays["llm"])
    if "tts" in delays:
        tts = DelayedTTS(tts, delays["tts"])
    return dataclasses.replace(models, stt=stt, llm=llm, tts=tts)
