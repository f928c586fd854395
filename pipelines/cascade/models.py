"""The cascade's providers, loaded once at startup and shared by every session.

Registration is explicit: `load_models()` is the one place that picks a provider for
each role from the settings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pipelines.cascade.llm import DemoResponder, LanguageModel, OpenAIChat
from pipelines.cascade.stt import SpeechToText, WhisperSTT
from pipelines.cascade.tts import PiperTTS, TextToSpeech
from voice.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class CascadeModels:
    stt: SpeechToText
    llm: LanguageModel
    tts: TextToSpeech


def build_llm(settings: Settings) -> LanguageModel:
    if not settings.openai_base_url and not settings.openai_api_key:
        log.warning("no OPENAI_BASE_URL or OPENAI_API_KEY set: using the built-in DEMO "
                    "responder, which only repeats back what it heard")
        return DemoResponder()
    return OpenAIChat(base_url=settings.openai_base_url or None,
                      api_key=settings.openai_api_key, model=settings.llm_model,
                      timeout_s=settings.llm_timeout_s, max_tokens=settings.llm_max_tokens)


def load_models(settings: Settings) -> CascadeModels:
    stt = WhisperSTT.load(settings.stt_model, settings.stt_device, settings.stt_compute_type,
                          settings.stt_threads, settings.stt_language)
    log.info("speech-to-text loaded: %s (%s, %s)", stt.name, settings.stt_device,
             settings.stt_compute_type)
    tts = PiperTTS.load(settings.tts_voice, settings.tts_voice_config)
    log.info("text-to-speech loaded: %s (%d Hz)", tts.name, tts.sample_rate)
    llm = build_llm(settings)
    log.info("language model: %s", llm.name)
    warm_up(stt, tts)
    return CascadeModels(stt=stt, llm=llm, tts=tts)


def warm_up(stt: SpeechToText, tts: TextToSpeech) -> None:
    """Run each model once so the first caller does not pay for lazy initialisation."""
    import asyncio

    import numpy as np

    async def _run() -> None:
        await stt.transcribe(np.zeros(16000, dtype=np.int16))
        await tts.synthesize("Hello.")

    asyncio.run(_run())
