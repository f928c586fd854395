"""The cascade's providers, loaded once at startup and shared by every session.

Registration is explicit: `load_models()` is the one place that picks a provider for
each role from the settings.
"""

from __future__ import annotations

import logging

from pipelines.providers.llm import EchoResponder, Endpoint, LanguageModel, LLMChain, OpenAIChat
from pipelines.providers.models import CascadeModels
from pipelines.providers.remote import RemoteSTT, RemoteTTS
from pipelines.providers.stt import SpeechToText, WhisperSTT
from pipelines.providers.tts import PiperTTS, TextToSpeech, load_voices
from pipelines.tools import ToolBox, load_module, load_webhooks
from voice.errors import ConfigError, ProviderError
from voice.redact import redact_url
from voice.resilience import BreakerPolicy, CircuitBreaker
from voice.settings import Settings

log = logging.getLogger(__name__)


def build_llm(settings: Settings) -> LanguageModel:
    """The LLM of every session: the chain of configured endpoints (one or two), each
    with its circuit breaker; the echo responder when asked for (`--llm echo`). The
    bundled local model is an endpoint too: service/local_llm.py starts its server and
    sets `openai_base_url` to it before this runs."""
    s = settings
    if s.llm == "echo":
        log.warning("--llm echo: the ECHO responder only repeats back what it heard")
        return EchoResponder()
    endpoints: list[tuple[str | None, str, str]] = []  # (base URL, key, model)
    if s.openai_base_url or s.openai_api_key:
        endpoints.append((s.openai_base_url or None, s.openai_api_key, s.llm_model))
    if s.llm_fallback_url:
        endpoints.append((s.llm_fallback_url, s.llm_fallback_api_key,
                          s.llm_fallback_model or s.llm_model))
    if not endpoints:
        raise ConfigError("no LLM endpoint: set OPENAI_BASE_URL or OPENAI_API_KEY, use the "
                          "bundled local model (--llm local) or --llm echo")
    first_token_s = min(s.llm_first_token_timeout_s, s.llm_timeout_s)
    return LLMChain([
        Endpoint(OpenAIChat(base_url=url, api_key=key, model=model, timeout_s=s.llm_timeout_s,
                            max_tokens=s.llm_max_tokens, first_token_timeout_s=first_token_s,
                            reply_timeout_s=s.llm_reply_timeout_s),
                 breaker_for(f"llm:{redact_url(url or '') or 'api.openai.com'}:{model}", s))
        for url, key, model in endpoints])


def breaker_for(name: str, settings: Settings) -> CircuitBreaker:
    s = settings
    return CircuitBreaker(name, BreakerPolicy(
        failure_ratio=s.breaker_failure_ratio, min_failures=s.breaker_min_failures,
        window_s=s.breaker_window_s, open_s=s.breaker_open_s, max_open_s=s.breaker_max_open_s))


def load_models(settings: Settings) -> CascadeModels:
    s = settings
    stt: SpeechToText
    if s.stt_url:
        stt = RemoteSTT(s.stt_url, s.stt_api_key, s.stt_remote_model, s.stt_language,
                        s.remote_timeout_s, breaker_for(f"stt:{redact_url(s.stt_url)}", s))
        log.info("speech-to-text: remote %s", stt.name)
    else:
        stt = WhisperSTT.load(s.stt_model, s.stt_device, s.stt_compute_type, s.stt_threads,
                              s.stt_language, s.stt_beam_size, s.stt_final_beam_size)
        log.info("speech-to-text loaded: %s (%s, %s)", stt.name, s.stt_device,
                 s.stt_compute_type)
    tts: TextToSpeech
    if s.tts_url:
        tts = RemoteTTS(s.tts_url, s.tts_api_key, s.tts_remote_model, s.tts_remote_voice,
                        s.remote_timeout_s, breaker_for(f"tts:{redact_url(s.tts_url)}", s))
        log.info("text-to-speech: remote %s", tts.name)
    else:
        tts = PiperTTS.load(s.tts_voice, s.tts_voice_config)
        log.info("text-to-speech loaded: %s (%d Hz)", tts.name, tts.sample_rate)
    llm = build_llm(settings)
    log.info("language model: %s", llm.name)
    warm_up(stt, tts)
    voices = load_voices(tts, s.tts_voices)
    if len(voices) > 1:
        log.info("voices sessions may choose: %s", ", ".join(voices))
    models = CascadeModels(stt=stt, llm=llm, tts=tts, tools=load_tools(settings),
                           voices=voices)
    if settings.debug_stage_delay:  # testing only: pipelines/providers/faults.py
        from pipelines.providers.faults import delayed
        models = delayed(models, settings.debug_stage_delay)
    return models


def load_tools(settings: Settings) -> ToolBox:
    """The tools every session's LLM may call: the `--tools` module's, the
    `--tools-file` webhooks."""
    found = []
    if settings.tools:
        found += load_module(settings.tools)
    if settings.tools_file:
        found += load_webhooks(settings.tools_file)
    box = ToolBox(found, settings.tool_timeout_s)
    if box:
        log.info("tools: %s", ", ".join(box.tools))
    return box


def warm_up(stt: SpeechToText, tts: TextToSpeech) -> None:
    """Run each model once so the first caller does not pay for lazy initialisation."""
    import asyncio

    import numpy as np

    async def _run() -> None:
        try:
            await stt.transcribe(np.zeros(16000, dtype=np.int16))
            await tts.synthesize("Hello.")
        except ProviderError as exc:  # a remote server that is not up yet: say so, go on
            log.warning("warm-up failed (%s); the first turns will tell", exc)

    asyncio.run(_run())
