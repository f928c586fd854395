"""The quick start's assistant: with no LLM endpoint configured, the service runs the
bundled SmolLM2 model (service/local_llm.py, apis/openai_chat.py) and a spoken question
gets a spoken answer from it; if the model's server dies, it is started again and the
calls go on."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import tests.e2e.conftest as e2e
from clients.ws_client import VoiceClient
from pipelines.providers.stt import WhisperSTT
from tests.conftest import word_recall

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[e2e.RunningService]:
    running = e2e.start_service(tmp_path_factory.mktemp("local-llm"), {
        "OPENAI_BASE_URL": "", "OPENAI_API_KEY": ""}, name="local-llm")  # nothing configured
    yield running
    e2e.stop_service(running)


def model_server_pid(service: e2e.RunningService) -> int:
    """The service's child that serves the local model."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == service.process.pid and b"apis.openai_chat" in cmdline:
            return int(stat.parent.name)
    raise AssertionError("the service has no local LLM child process")


async def test_a_spoken_question_gets_a_spoken_answer_from_the_bundled_model(
        local: e2e.RunningService, whisper: WhisperSTT,
        utterances: dict[str, dict[str, str]]) -> None:
    async with VoiceClient(local.url) as client:
        done = await e2e.converse(client, utterances["capital"]["path"], timeout=40)
        (transcript,) = client.events_of("transcript.final")
        assert word_recall(utterances["capital"]["text"], transcript["text"]) >= 0.8
        assert "Paris" in str(done["text"]), done
        # the caller hears that answer (Whisper tiny may hear Piper's "Paris" as "pairs")
        heard = e2e.transcribe_back(whisper, client.reply_audio(), 16000)
        assert word_recall(str(done["text"]), heard) >= 0.6, (done, heard)
        (latency,) = client.events_of("turn.latency")
        assert "SmolLM2" in str(latency["provider"]), latency
    assert "local LLM SmolLM2-135M-Instruct.Q4_1.gguf serving at" in local.log()


async def test_a_model_server_that_dies_is_started_again(
        local: e2e.RunningService, utterances: dict[str, dict[str, str]]) -> None:
    os.kill(model_server_pid(local), signal.SIGKILL)
    deadline = time.monotonic() + 60
    while "local LLM server started again" not in local.log():
        assert time.monotonic() < deadline, local.log()[-2000:]
        await asyncio.sleep(0.2)
    async with VoiceClient(local.url) as client:
        done = await e2e.converse(client, utterances["capital"]["path"], timeout=40)
        assert client.events_of("error") == [] and "Paris" in str(done["text"]), done
    assert "the local LLM server exited (-9)" in local.log()


async def test_the_walk_through_what_time_is_it_is_answered_from_the_clock_tool(
        tmp_path_factory: pytest.TempPathFactory, whisper: WhisperSTT,
        utterances: dict[str, dict[str, str]]) -> None:
    """The README's walk-through, offline: the bundled model with examples/tools.py
    calls `current_time` and the caller hears the tool's answer."""
    service = e2e.start_service(tmp_path_factory.mktemp("local-tools"), {
        "OPENAI_BASE_URL": "", "OPENAI_API_KEY": "", "VOICE_TOOLS": "examples.tools"},
        name="local-tools")
    try:
        async with VoiceClient(service.url) as client:
            done = await e2e.converse(client, utterances["clock"]["path"], timeout=40)
        log = service.log()
    finally:
        e2e.stop_service(service)
    (call,) = client.events_of("tool.call")
    (result,) = client.events_of("tool.result")
    assert call["name"] == "current_time" and result["ok"], (call, result)
    # the tool says "It is 15:42 on Friday, 4 December 2026 (UTC).". The small model
    # passes on the time or the weekday or both; either is the tool's answer.
    told = str(result["result"])
    clock, weekday = told.split(" ")[2], told.split(" on ", 1)[1].split(",")[0]
    said = str(done["text"])
    assert clock in said or weekday in said, (result, done)
    heard = e2e.transcribe_back(whisper, client.reply_audio(), 16000)
    assert word_recall(said, heard) >= 0.6, (done, heard)
    if weekday in said:  # a word both Piper and Whisper get right
        assert weekday.lower() in heard.lower(), (done, heard)
    assert "tools are offered to the bundled SmolLM2-135M model" in log
