"""Speech-to-text and text-to-speech on a shared inference server that speaks the OpenAI
audio API (`POST /v1/audio/transcriptions`, `POST /v1/audio/speech`): OpenAI itself, or
another worker of this service started with `--audio-api-port` (transports/audio_api),
so that one machine (with a GPU, in production) serves the models for many workers.

The `openai` library is the client, with its retries off (a live turn cannot wait for
them; the turn apologises instead) and our timeout. Each server has a circuit breaker
(`voice.resilience`): while it is open, a call fails at once instead of waiting for a
server that keeps failing to time out again, so the caller hears the apology in
milliseconds rather than after `remote_timeout_s`. Transcriptions ask for
`verbose_json`, whose segments carry `no_speech_prob` and `avg_logprob`, so the
hallucination filter works as it does locally; a server that omits them is trusted.
Speech asks for raw PCM, which the API defines as 24 kHz 16-bit mono, read as it
streams.
"""

from __future__ import annotations

import asyncio
import copy
import io
import wave
from typing import Any

import numpy as np
import openai

from pipelines.providers.stt import Transcript
from voice.audio import (
    OPENAI_PCM_RATE,
    PIPELINE_RATE,
    Int16Array,
    array_to_pcm16_bytes,
    pcm16_bytes_to_array,
)
from voice.errors import ProviderError, ProviderRateLimited, ProviderTimeout
from voice.redact import redact_url
from voice.resilience import CircuitBreaker, retry_after_s


class _LoopClient:
    """An `openai.AsyncOpenAI` for the running event loop. Its connection pool belongs
    to the loop that first used it, and models are loaded (and warmed up) on a loop of
    their own before the service's loop runs: a client per loop keeps a pooled
    connection from outliving its loop."""

    def __init__(self, base_url: str, api_key: str, timeout_s: float) -> None:
        self._args = {"base_url": base_url, "api_key": api_key or "none", "max_retries": 0,
                      "timeout": timeout_s}
        self._clients: dict[int, openai.AsyncOpenAI] = {}

    def get(self) -> openai.AsyncOpenAI:
        loop = id(asyncio.get_running_loop())
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = openai.AsyncOpenAI(**self._args)  # type: ignore[arg-type]
        return client


def _translate(exc: openai.OpenAIError, name: str, what: str) -> ProviderError:
    if isinstance(exc, openai.RateLimitError):
        return ProviderRateLimited(f"{what}: rate limit (HTTP 429)", provider=name,
                                   retry_after_s=retry_after_s(
                                       exc.response.headers.get("retry-after")))
    if isinstance(exc, openai.APITimeoutError):
        return ProviderTimeout(f"{what}: timed out", provider=name)
    if isinstance(exc, openai.APIStatusError):
        return ProviderError(f"{what}: HTTP {exc.status_code}", provider=name)
    if isinstance(exc, openai.APIConnectionError):
        return ProviderError(f"{what}: server unreachable", provider=name)
    return ProviderError(f"{what}: {type(exc).__name__}", provider=name)


def wav_bytes(audio: Int16Array, rate: int) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(array_to_pcm16_bytes(audio))
    return buffer.getvalue()


def _admit(breaker: CircuitBreaker, name: str, what: str) -> None:
    if not breaker.allow():
        raise ProviderError(f"{what}: the server's breaker is open (next probe in "
                            f"{breaker.retry_in_s():.0f} s)", provider=name,
                            code="provider_unavailable")


def _failed(breaker: CircuitBreaker, exc: openai.OpenAIError, name: str,
            what: str) -> ProviderError:
    error = _translate(exc, name, what)
    retry_after = error.retry_after_s if isinstance(error, ProviderRateLimited) else None
    breaker.record_failure(error.code, retry_after)
    return error


class RemoteSTT:
    def __init__(self, base_url: str, api_key: str, model: str, language: str,
                 timeout_s: float, breaker: CircuitBreaker) -> None:
        self._client = _LoopClient(base_url, api_key, timeout_s)
        self._model = model
        self.priced_model = model
        self._language = language
        self.name = f"openai-audio:{redact_url(base_url)}:{model}"
        self.breaker = breaker

    @property
    def language(self) -> str:
        return self._language

    def for_language(self, code: str) -> RemoteSTT:
        """The same server, told the session's language (ISO 639-1, as the audio API
        takes it); the server judges the code."""
        other = copy.copy(self)
        other._language = code
        return other

    async def transcribe(self, audio: Int16Array) -> Transcript:
        language: dict[str, Any] = {"language": self._language} if self._language else {}
        _admit(self.breaker, self.name, "transcription")
        try:
            result: Any = await self._client.get().audio.transcriptions.create(
                file=("turn.wav", wav_bytes(audio, PIPELINE_RATE), "audio/wav"),
                model=self._model, response_format="verbose_json", **language)
        except openai.OpenAIError as exc:
            raise _failed(self.breaker, exc, self.name, "transcription") from exc
        self.breaker.record_success()
        segments = getattr(result, "segments", None) or []
        no_speech = [s.no_speech_prob for s in segments if s.no_speech_prob is not None]
        logprobs = [s.avg_logprob for s in segments if s.avg_logprob is not None]
        return Transcript(text=str(result.text).strip(),
                          no_speech_prob=float(np.mean(no_speech)) if no_speech else 0.0,
                          avg_logprob=float(np.mean(logprobs)) if logprobs else 0.0,
                          audio_ms=len(audio) * 1000 / PIPELINE_RATE)


class RemoteTTS:
    sample_rate = OPENAI_PCM_RATE

    def __init__(self, base_url: str, api_key: str, model: str, voice: str,
                 timeout_s: float, breaker: CircuitBreaker) -> None:
        self._client = _LoopClient(base_url, api_key, timeout_s)
        self._model = model
        self.priced_model = model
        self._voice = voice
        self.name = f"openai-audio:{redact_url(base_url)}:{model}:{voice}"
        self.breaker = breaker

    async def synthesize(self, text: str) -> Int16Array:
        pcm = bytearray()
        _admit(self.breaker, self.name, "speech synthesis")
        try:
            async with self._client.get().audio.speech.with_streaming_response.create(
                    model=self._model, voice=self._voice, input=text,
                    response_format="pcm") as response:
                async for chunk in response.iter_bytes():
                    pcm += chunk
        except openai.OpenAIError as exc:
            raise _failed(self.breaker, exc, self.name, "speech synthesis") from exc
        self.breaker.record_success()
        return pcm16_bytes_to_array(bytes(pcm[: len(pcm) // 2 * 2]))
