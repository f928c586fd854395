"""Language models: any OpenAI-compatible streaming chat endpoint, or the demo responder.

OpenAI, Ollama, vLLM and llama.cpp's server all speak the same Chat Completions API;
`OpenAIChat` uses the official `openai` client against `base_url`. Vendor errors are
translated into `ProviderError` here, where they enter our code.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

import openai

from voice.errors import ProviderError, ProviderRateLimited, ProviderTimeout

log = logging.getLogger(__name__)

Message = dict[str, str]


class LanguageModel(Protocol):
    name: str

    def stream(self, messages: list[Message]) -> AsyncIterator[str]: ...


class OpenAIChat:
    """Streaming chat completions; a first-token and inter-token timeout bounds each turn."""

    def __init__(self, base_url: str | None, api_key: str, model: str, timeout_s: float,
                 max_tokens: int) -> None:
        self._client = openai.AsyncOpenAI(base_url=base_url or None, api_key=api_key or "none",
                                          max_retries=0, timeout=timeout_s)
        self._model = model
        self._timeout_s = timeout_s
        self._max_tokens = max_tokens
        self.name = f"openai-compatible:{base_url or 'api.openai.com'}:{model}"

    async def stream(self, messages: list[Message]) -> AsyncIterator[str]:
        try:
            async with asyncio.timeout(self._timeout_s):
                response: Any = await self._client.chat.completions.create(
                    model=self._model, messages=messages,  # type: ignore[arg-type]
                    stream=True, max_tokens=self._max_tokens)
            try:
                iterator = aiter(response)
                while True:
                    async with asyncio.timeout(self._timeout_s):
                        chunk = await anext(iterator, None)
                    if chunk is None:
                        return
                    if chunk.choices and chunk.choices[0].delta.content:
                        yield chunk.choices[0].delta.content
            finally:
                await response.close()
        except TimeoutError as exc:
            raise ProviderTimeout(f"LLM gave no token within {self._timeout_s:g} s",
                                  provider=self.name, code="llm_timeout") from exc
        except openai.RateLimitError as exc:
            raise ProviderRateLimited("LLM rate limit (HTTP 429)", provider=self.name,
                                      code="llm_rate_limited") from exc
        except openai.APITimeoutError as exc:
            raise ProviderTimeout("LLM request timed out", provider=self.name,
                                  code="llm_timeout") from exc
        except openai.APIStatusError as exc:
            raise ProviderError(f"LLM endpoint answered HTTP {exc.status_code}",
                                provider=self.name, code="llm_error") from exc
        except openai.APIConnectionError as exc:
            raise ProviderError("LLM endpoint unreachable", provider=self.name,
                                code="llm_unreachable") from exc
        except openai.OpenAIError as exc:
            raise ProviderError(f"LLM failed: {type(exc).__name__}", provider=self.name,
                                code="llm_error") from exc

    async def close(self) -> None:
        await self._client.close()


class DemoResponder:
    """Offline stand-in for an LLM: repeats back what it heard. Not an assistant."""

    name = "demo-responder (no LLM configured)"

    async def stream(self, messages: list[Message]) -> AsyncIterator[str]:
        heard = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        heard = heard.strip().rstrip(".?!")
        reply = f"You said: {heard}." if heard else "I did not catch that."
        for i, word in enumerate(reply.split(" ")):
            yield word if i == 0 else " " + word
            await asyncio.sleep(0)

    async def close(self) -> None:
        return None
