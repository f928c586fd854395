"""Operating the worker: /metrics moves with real turns, /readyz, and the SIGTERM drain,
against the real service process (bundled models, local LLM server)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from clients.ws_client import VoiceClient
from latency_tests.llm_server import LLMServer
from tests.e2e.conftest import RunningService, converse, start_service, stop_service

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

REPLY = "Noted."  # these tests need a turn answered, not a long one to listen to


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def samples(service: RunningService) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = get(f"{service.url}/metrics")
    assert status == 200
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def worker(llm: LLMServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    service = start_service(tmp_path_factory.mktemp("ops"), {
        "OPENAI_BASE_URL": llm.base_url, "VOICE_DRAIN_TIMEOUT_S": "10",
        "VOICE_IDLE_TIMEOUT_S": "30", "VOICE_LOG_FORMAT": "json"}, name="ops")
    yield service
    stop_service(service)


async def test_metrics_move_with_a_real_turn(
        worker: RunningService, fresh_llm: LLMServer,
        utterances: dict[str, dict[str, str]]) -> None:
    fresh_llm.behaviour.reply = REPLY
    before = await asyncio.to_thread(samples, worker)
    async with VoiceClient(worker.url) as client:
        during = await asyncio.to_thread(samples, worker)
        assert value(during, "voice_sessions_active", transport="ws", pipeline="cascade") == 1
        await converse(client, utterances["weather"]["path"])
        await client.send_json({"type": "bogus"})  # an error event, counted by its code
        await client.wait_for("error", timeout=5)
        await client.send_raw(b"\x00\x01\x02")  # odd-length PCM: a dropped frame
        await client.wait_for("error", timeout=5, code="invalid_audio")
    after = await asyncio.to_thread(samples, worker)
    assert value(after, "voice_turns_total", pipeline="cascade") == \
        value(before, "voice_turns_total", pipeline="cascade") + 1
    assert value(after, "voice_sessions_total", transport="ws", pipeline="cascade") == 1
    assert value(after, "voice_errors_total", code="unknown_type") == 1
    assert value(after, "voice_errors_total", code="invalid_audio") == 1
    assert value(after, "voice_audio_frames_total", kind="dropped") == 1
    latency = client.events_of("turn.latency")[0]["stages"]
    for stage in ("voice_to_voice", "stt", "llm", "tts"):
        count = value(after, "voice_turn_stage_seconds_count", pipeline="cascade", stage=stage)
        assert count == 1, stage
        total = value(after, "voice_turn_stage_seconds_sum", pipeline="cascade", stage=stage)
        assert total == pytest.approx(latency[f"{stage}_ms"] / 1000, abs=1e-6)
    assert value(after, "voice_capacity_sessions") == 5
    assert value(after, "voice_draining") == 0
    # every log line is a JSON object; a session's lines carry its id
    lines = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    assert lines and all({"ts", "level", "logger", "session", "message"} <= set(line)
                         for line in lines)
    assert any(line["session"] == client.session["session_id"] and "latency" in
               line["message"] for line in lines)


async def test_credentials_in_urls_are_shown_nowhere(
        llm: LLMServer, fresh_llm: LLMServer, tmp_path_factory: pytest.TempPathFactory,
        utterances: dict[str, dict[str, str]]) -> None:
    """An endpoint URL with credentials in it (https://user:secret@host/v1) used to appear
    in /healthz, metric labels, every turn.latency event and the startup log."""
    secret = "hunter2-in-the-url"
    fresh_llm.behaviour.reply = REPLY
    url = llm.base_url.replace("http://", f"http://gateway:{secret}@")
    service = start_service(tmp_path_factory.mktemp("secret-url"), {
        "OPENAI_BASE_URL": url, "VOICE_STT_URL": url.replace("/v1", "/nowhere/v1"),
        "VOICE_LOG_LEVEL": "DEBUG"}, name="secret-url")
    try:
        async with VoiceClient(service.url) as client:
            await converse(client, utterances["weather"]["path"])
        health = json.dumps(await asyncio.to_thread(service.health))
        _, metrics = await asyncio.to_thread(get, f"{service.url}/metrics")
    finally:
        stop_service(service)
    latency = client.events_of("turn.latency")
    assert latency and "gateway" not in json.dumps(client.record.events)
    assert latency[0]["provider"].startswith("openai-compatible:http://***@127.0.0.1:")
    for shown in (health, metrics.decode(), service.log(), json.dumps(client.record.events)):
        assert secret not in shown
    assert "***@127.0.0.1" in health


async def test_sigterm_drains_active_calls_then_says_goodbye(
        worker: RunningService, fresh_llm: LLMServer,
        utterances: dict[str, dict[str, str]]) -> None:
    fresh_llm.behaviour.reply = REPLY
    status, body = await asyncio.to_thread(get, f"{worker.url}/readyz")
    assert status == 200 and json.loads(body)["ready"] is True
    async with VoiceClient(worker.url) as client:
        await converse(client, utterances["weather"]["path"])
        started = time.monotonic()
        worker.process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        status, body = await asyncio.to_thread(get, f"{worker.url}/readyz")
        assert status == 503 and json.loads(body)["draining"] is True
        status, body = await asyncio.to_thread(get, f"{worker.url}/ws")
        assert status == 503 and b"draining" in body
        # the active call goes on: another full turn while draining
        done = await converse(client, utterances["joke"]["path"])
        assert done["type"] == "response.done"
        # at the drain timeout (10 s) the caller hears the goodbye, then the close
        mark = len(client.record.events)
        while not client.closed and time.monotonic() - started < 30:
            try:
                await client.stream_silence(0.2)
            except websockets.ConnectionClosed:  # the close came while we were sending
                break
        await client.wait_closed()
    goodbye = [e for e in client.record.events[mark:] if e["type"] == "response.done"]
    assert goodbye and goodbye[-1]["text"].endswith("Goodbye.")
    assert (client.close_code, client.close_reason) == (1000, "the service is shutting down")
    assert 10 <= time.monotonic() - started < 30
    assert await asyncio.to_thread(worker.process.wait, 30) == 0
    assert "drained in" in worker.log()
