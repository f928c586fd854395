"""Provider outages, as a caller lives through them: the real service with two local
OpenAI-compatible LLM servers (a primary that misbehaves on command, and a fallback),
and a realtime provider that cannot be reached. The real `openai` client runs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

from clients.ws_client import VoiceClient
from latency_tests.llm_server import Drop, ErrorStatus, Hang, LLMServer
from pipelines.providers.stt import WhisperSTT
from tests.conftest import word_recall
from tests.e2e.conftest import (
    RunningService,
    converse,
    free_port,
    start_service,
    stop_service,
    transcribe_back,
)

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

FIRST_TOKEN_S = 1.0
FALLBACK_REPLY = "The backup line answered this question."


@dataclass
class Line:
    service: RunningService
    primary: LLMServer
    fallback: LLMServer

    def breakers(self) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = self.service.health()["breakers"]
        return found

    def breaker_of(self, server: LLMServer) -> dict[str, Any]:
        return next(v for k, v in self.breakers().items() if server.base_url in k)


@pytest_asyncio.fixture(loop_scope="session")
async def servers() -> AsyncIterator[tuple[LLMServer, LLMServer]]:
    async with LLMServer() as primary, LLMServer() as fallback:
        fallback.behaviour.reply = FALLBACK_REPLY
        yield primary, fallback


@pytest.fixture
def line(servers: tuple[LLMServer, LLMServer], tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[Line]:
    """A fresh service per test: breakers start closed."""
    primary, fallback = servers
    unreachable = free_port()  # nothing listens here
    service = start_service(tmp_path_factory.mktemp("resilience"), {
        "OPENAI_BASE_URL": primary.base_url, "OPENAI_API_KEY": "sk-primary-secret",
        "VOICE_LLM_FALLBACK_BASE_URL": fallback.base_url,
        "VOICE_LLM_FALLBACK_API_KEY": "sk-fallback-secret",
        "VOICE_LLM_FIRST_TOKEN_TIMEOUT_S": str(FIRST_TOKEN_S), "VOICE_LLM_TIMEOUT_S": "3",
        "VOICE_REALTIME_URL": f"ws://127.0.0.1:{unreachable}/v1/realtime",
        "VOICE_IDLE_TIMEOUT_S": "20"}, name="resilience")
    yield Line(service, primary, fallback)
    stop_service(service)
    log = service.log()
    assert "sk-primary-secret" not in log and "sk-fallback-secret" not in log


def heard(client: VoiceClient, whisper: WhisperSTT, since: int = 0) -> str:
    """The reply audio received after the first `since` chunks, transcribed."""
    chunks = [c.samples for c in client.record.audio[since:]]
    assert chunks, "no reply audio"
    return transcribe_back(whisper, np.concatenate(chunks), 16000)


async def test_a_rate_limited_primary_is_skipped_once_its_breaker_opens(
        line: Line, whisper: WhisperSTT, utterances: dict[str, dict[str, str]]) -> None:
    line.primary.behaviour.always_fail = ErrorStatus(429, retry_after=60)
    async with VoiceClient(line.service.url) as client:
        for name in ("weather", "joke"):
            mark = len(client.record.audio)
            done = await converse(client, utterances[name]["path"])
            assert done["text"] == FALLBACK_REPLY
            assert word_recall(FALLBACK_REPLY, heard(client, whisper, mark)) >= 0.7
    assert client.events_of("error") == []
    # one request, answered 429 with Retry-After: 60; the breaker then kept it away
    assert len(line.primary.requests) == 1
    first, second = client.events_of("turn.latency")
    assert line.fallback.base_url in first["provider"]
    assert "llm_rate_limited" in first["fallback"]
    assert "breaker open" in second["fallback"]
    state = line.breaker_of(line.primary)
    assert state["state"] == "open" and 50 < state["retry_in_s"] <= 60
    assert state["fallbacks"] >= 2  # speculative calls count too


async def test_a_hanging_primary_is_left_after_the_first_token_timeout(
        line: Line, whisper: WhisperSTT, utterances: dict[str, dict[str, str]]) -> None:
    line.primary.behaviour.always_fail = Hang()
    async with VoiceClient(line.service.url) as client:
        done = await converse(client, utterances["weather"]["path"])
        assert done["text"] == FALLBACK_REPLY
        assert word_recall(FALLBACK_REPLY, heard(client, whisper)) >= 0.7
    latency = client.events_of("turn.latency")[0]
    assert "llm_timeout" in latency["fallback"]
    stamps = latency["stamps_ms"]
    # the LLM was asked when the transcript was ready (speculatively, maybe before
    # the turn ended); the fallback's first token came after the first-token
    # timeout plus the fallback's own time (a local server: well under 0.5 s)
    waited = stamps["llm_first_token"] - stamps["stt_final"]
    assert FIRST_TOKEN_S * 1000 <= waited <= FIRST_TOKEN_S * 1000 + 500, stamps


async def test_a_reply_cut_mid_stream_goes_on_without_repeating_itself(
        line: Line, whisper: WhisperSTT, utterances: dict[str, dict[str, str]]) -> None:
    reply = "Your parcel was shipped this morning. It will arrive on Monday afternoon."
    line.primary.behaviour.reply = line.fallback.behaviour.reply = reply
    line.primary.behaviour.token_interval = 0.15  # the first sentence is spoken first
    line.primary.behaviour.always_fail = Drop(after_deltas=8)
    async with VoiceClient(line.service.url) as client:
        done = await converse(client, utterances["weather"]["path"])
    assert done["text"] == reply
    words = heard(client, whisper).lower()
    # the first sentence, spoken before the drop, is not heard again
    assert words.count("parcel") == 1 and words.count("morning") == 1, words
    assert word_recall(reply, words) >= 0.7, words
    assert client.events_of("error") == []


async def test_with_every_endpoint_down_the_caller_hears_an_apology_then_recovers(
        line: Line, whisper: WhisperSTT, utterances: dict[str, dict[str, str]]) -> None:
    line.primary.behaviour.always_fail = ErrorStatus(500)
    line.fallback.behaviour.always_fail = ErrorStatus(503)
    async with VoiceClient(line.service.url) as client:
        await converse(client, utterances["weather"]["path"])
        assert [e["code"] for e in client.events_of("error")] == ["llm_error"]
        assert "sorry" in heard(client, whisper).lower()
        line.fallback.behaviour.always_fail = None  # the fallback comes back
        mark = len(client.record.audio)
        done = await converse(client, utterances["joke"]["path"])
        assert done["text"] == FALLBACK_REPLY
        assert word_recall(FALLBACK_REPLY, heard(client, whisper, mark)) >= 0.7


async def test_an_unreachable_realtime_provider_is_replaced_by_the_cascade(
        line: Line, whisper: WhisperSTT, utterances: dict[str, dict[str, str]]) -> None:
    line.primary.behaviour.reply = "The local models are answering you now."
    for attempt in range(2):  # the second session finds the breaker open
        async with VoiceClient(line.service.url, 16000, pipeline="realtime") as client:
            assert client.session["pipeline"] == "realtime"
            done = await converse(client, utterances["weather"]["path"])
            assert done["text"] == "The local models are answering you now."
            assert word_recall("The local models are answering you now.",
                               heard(client, whisper)) >= 0.7
            finals = client.events_of("transcript.final")
            assert word_recall(utterances["weather"]["text"], finals[0]["text"]) >= 0.7
        assert client.events_of("error") == []
        latency = client.events_of("turn.latency")[0]
        assert latency["provider"].startswith("openai-compatible:")
        assert "realtime:" in latency["fallback"]
        if attempt == 1:
            assert "breaker open" in latency["fallback"]
    realtime = next(v for k, v in line.breakers().items() if k.startswith("realtime:"))
    assert realtime["state"] == "open" and realtime["fallbacks"] == 2
