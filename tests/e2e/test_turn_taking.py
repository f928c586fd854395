"""Turn-taking as a caller experiences it: pauses, early replies, backchannels."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clients.audiofile import load_audio, voiced_bounds
from clients.ws_client import VoiceClient
from latency_tests.llm_server import LLMServer
from tests.conftest import word_recall
from tests.e2e.conftest import (
    RunningService,
    start_self_realtime_service,
    start_service,
    stop_service,
)

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

CORPUS = Path(__file__).parents[2] / "latency_tests" / "corpus" / "turn_taking"
MANIFEST: dict[str, dict[str, Any]] = json.loads((CORPUS / "utterances.json").read_text())
LONG_REPLY = ("Here is the forecast for the whole week. Monday will be sunny and warm. "
              "Tuesday brings clouds in the morning and some rain in the afternoon. "
              "Wednesday stays dry with a light wind from the west.")
# where a test needs only *a* reply: longer than any pause in the clips (at most 800 ms),
# so an early one cannot finish before the caller goes on
SHORT_REPLY = "Thank you, I have noted that."


def clip(name: str) -> str:
    return str(CORPUS / MANIFEST[name]["file"])


def halves(name: str) -> list[str]:
    return re.split(r"\s*\|\d+\|\s*", MANIFEST[name]["marked_text"])


EAGER = {"VOICE_TURN_PRESET": "fixed", "VOICE_SILENCE_MS": "250"}


@pytest.fixture(scope="module")
def eager_service(llm: LLMServer, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[RunningService]:
    """A service that ends turns after a fixed 250 ms: it answers paused callers early."""
    running = start_service(tmp_path_factory.mktemp("eager"),
                            {"OPENAI_BASE_URL": llm.base_url, **EAGER}, name="eager")
    yield running
    stop_service(running)


def realtime_local_service(llm: LLMServer, tmp_path_factory: pytest.TempPathFactory,
                           name: str, extra: dict[str, str]) -> Iterator[RunningService]:
    """The realtime pipeline with our own turn-taking (`local`), its provider the
    service's own /v1/realtime endpoint: the same decisions as the cascade's."""
    running = start_self_realtime_service(
        tmp_path_factory.mktemp(name),
        {"OPENAI_BASE_URL": llm.base_url, "VOICE_PIPELINE": "realtime",
         "VOICE_REALTIME_TURN_DETECTION": "local", **extra}, name=name)
    yield running
    stop_service(running)


@pytest.fixture(scope="module")
def realtime_local(llm: LLMServer, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[RunningService]:
    yield from realtime_local_service(llm, tmp_path_factory, "realtime-local", {})


@pytest.fixture(scope="module")
def eager_realtime(llm: LLMServer, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[RunningService]:
    yield from realtime_local_service(llm, tmp_path_factory, "eager-realtime", EAGER)


def on_line(request: pytest.FixtureRequest, pipeline: str, eager: bool = False
            ) -> RunningService:
    fixture = {("cascade", False): "service", ("realtime", False): "realtime_local",
               ("cascade", True): "eager_service", ("realtime", True): "eager_realtime"
               }[pipeline, eager]
    service: RunningService = request.getfixturevalue(fixture)
    return service


async def talk(client: VoiceClient, name: str, settle_s: float = 1.5) -> None:
    """Say a clip, then stay on the line (silence) until its reply has played."""
    await client.stream(load_audio(clip(name), client.sample_rate))
    await client.stream_silence(settle_s)
    while not client.events_of("response.done"):
        await client.stream_silence(0.1)


def user_messages(request: dict[str, Any]) -> list[str]:
    return [m["content"] for m in request["messages"] if m["role"] == "user"]


@pytest.mark.parametrize("pipeline, name", [
    ("cascade", "p_meeting"), ("cascade", "p_account"), ("cascade", "p_table"),
    ("cascade", "p_remind"), ("realtime", "p_meeting"), ("realtime", "p_account")])
async def test_a_paused_utterance_is_answered_once_and_whole(
        request: pytest.FixtureRequest, fresh_llm: LLMServer, pipeline: str, name: str) -> None:
    service = on_line(request, pipeline)
    fresh_llm.behaviour.reply = SHORT_REPLY
    start = len(fresh_llm.requests)
    async with VoiceClient(service.url) as client:
        await talk(client, name)
    finals = client.events_of("transcript.final")
    # answered once: one reply completed; a reply that started too early was stopped
    # as a continuation, never kept beside a second answer
    assert len(client.events_of("response.done")) == 1
    assert all(e["reason"] == "continuation" for e in client.events_of("response.interrupted"))
    answered = finals[-1]["text"]
    for part in halves(name):  # no word lost: both sides of the pause were answered
        assert word_recall(part, answered) >= 0.5, (part, answered)
    requests = fresh_llm.requests[start:]
    assert all(len(user_messages(r)) == 1 for r in requests)  # the whole, as one message
    assert user_messages(requests[-1]) == [answered]


@pytest.mark.parametrize("pipeline", ["cascade", "realtime"])
async def test_resuming_over_an_early_reply_stops_it_and_answers_the_whole(
        request: pytest.FixtureRequest, fresh_llm: LLMServer, pipeline: str) -> None:
    eager_service = on_line(request, pipeline, eager=True)

    def reply(messages: list[dict[str, str]]) -> str:
        """The early reply (to "I want to book a flight.") long, so that the caller's
        resumption lands in it; the answer to the whole short: it only has to finish."""
        said = messages[-1]["content"].lower()
        return SHORT_REPLY if "boston" in said or "friday" in said else LONG_REPLY

    fresh_llm.behaviour.reply = reply
    audio = load_audio(clip("p_flight"), 16000)
    second_part = voiced_bounds(audio, 16000)[-1][0]  # "To Boston on Friday."
    async with VoiceClient(eager_service.url) as client:
        await talk(client, "p_flight")
        resumed_ns = client.sent_time_ns(second_part)
    assert resumed_ns is not None
    interrupted = client.events_of("response.interrupted")
    assert [e["reason"] for e in interrupted] == ["continuation"]
    finals = client.events_of("transcript.final")
    merged = finals[-1]["text"]
    assert word_recall("I want to book a flight to Boston on Friday", merged) >= 0.7, merged
    assert len(client.events_of("response.done")) == 1
    # the early reply's audio stopped at once: nothing of it was sent once the pause at
    # speech onset took effect (speech onset 80 ms, plus a frame, plus one chunk)
    cutoff = resumed_ns + 180_000_000
    merged_at = finals[-1]["_received_ns"]
    late = [c for c in client.record.audio if cutoff < c.arrival_ns < merged_at]
    assert sum(len(c.samples) for c in late) <= 320
    final_request = fresh_llm.requests[-1]
    assert user_messages(final_request) == [merged]
    assert [m["role"] for m in final_request["messages"]] == ["system", "user"]


async def reply_length(url: str, over: str | None) -> tuple[int, VoiceClient]:
    """Samples of the reply to a question, with `over` said into it after ~1 s."""
    async with VoiceClient(url) as client:
        await client.stream(load_audio(clip("q_weather"), 16000))
        await client.wait_for("turn.latency", timeout=15)
        if over is not None:  # past the continuation window: a barge-in, not a continuation
            await client.stream_silence(1.5)
            await client.stream(load_audio(clip(over), 16000))
        while not client.events_of("response.done") and not client.events_of(
                "response.interrupted"):
            await client.stream_silence(0.1)
        await client.stream_silence(0.5)
    return sum(len(c.samples) for c in client.record.audio), client


@pytest.fixture(scope="module")
def played_whole() -> dict[str, int]:
    """Samples of LONG_REPLY played to its end, by service URL: each service's
    uninterrupted reply is measured once, by the first test that needs it."""
    return {}


async def uninterrupted_length(url: str, played_whole: dict[str, int]) -> int:
    if url not in played_whole:
        played_whole[url], _ = await reply_length(url, None)
    return played_whole[url]


@pytest.mark.parametrize("pipeline, backchannel", [
    ("cascade", "b_uhhuh"), ("cascade", "b_mmhmm"), ("cascade", "b_cough"),
    ("realtime", "b_uhhuh"), ("realtime", "b_cough")])
async def test_a_backchannel_leaves_the_reply_playing_to_its_end(
        request: pytest.FixtureRequest, fresh_llm: LLMServer, played_whole: dict[str, int],
        pipeline: str, backchannel: str) -> None:
    service = on_line(request, pipeline)
    fresh_llm.behaviour.reply = LONG_REPLY
    plain = await uninterrupted_length(service.url, played_whole)
    with_backchannel, client = await reply_length(service.url, backchannel)
    assert client.events_of("response.interrupted") == []
    assert [e["text"] for e in client.events_of("response.done")] == [LONG_REPLY]
    # Piper draws its phoneme durations at random (noise_w), so two syntheses of the
    # same 10 s reply differ by up to ~0.4 s; an interruption would cut most of it
    assert abs(with_backchannel - plain) <= 0.08 * plain, (with_backchannel, plain)


@pytest.mark.parametrize("pipeline", ["cascade", "realtime"])
async def test_a_real_interruption_stops_the_reply(
        request: pytest.FixtureRequest, fresh_llm: LLMServer, played_whole: dict[str, int],
        pipeline: str) -> None:
    service = on_line(request, pipeline)
    fresh_llm.behaviour.reply = LONG_REPLY
    plain = await uninterrupted_length(service.url, played_whole)
    interrupted, client = await reply_length(service.url, "i_wrong")
    assert [e["reason"] for e in client.events_of("response.interrupted")] == ["barge_in"]
    assert interrupted < plain * 0.7


async def test_a_discarded_speculation_leaves_no_trace(
        service: RunningService, fresh_llm: LLMServer) -> None:
    fresh_llm.behaviour.reply = SHORT_REPLY
    start = len(fresh_llm.requests)
    async with VoiceClient(service.url) as client:
        await talk(client, "p_table")
        # the call is still open and its reply done: a speculation that was dropped
        # but not cancelled would still be alive, waiting for a release
        assert (await asyncio.to_thread(service.health))["replies_running"] == 0
    latency = client.events_of("turn.latency")[-1]
    assert latency["speculations_discarded"] >= 1  # one started in the pause, then dropped
    transcript_at = client.events_of("transcript.final")[0]["_received_ns"]
    assert [c for c in client.record.audio if c.arrival_ns < transcript_at] == []
    assert len(client.events_of("response.text.delta")) >= 1
    assert all(len(user_messages(r)) == 1 for r in fresh_llm.requests[start:])
