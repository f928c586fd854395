"""Call records and usage against the real service: a call over the WebSocket leaves a
record (a file, and a signed webhook POST that gets through although the webhook is
down for its first two tries) whose transcript is what was said and heard, whose LLM
usage is exactly what the scripted LLM server reported, and whose cost follows the
price table; the client sees each turn's usage; /metrics counts it by tenant."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
import soundfile
from aiohttp import web

import tests.e2e.conftest as e2e
from clients.ws_client import VoiceClient
from latency_tests.llm_server import LLMServer
from pipelines.providers.stt import WhisperSTT
from service.call_records import signature
from tests.conftest import word_recall
from voice.usage import DEFAULT_PRICES

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

SECRET = "whsec-test-123"


class Webhook:
    """A receiver that is down (503) for its first `down` POSTs."""

    def __init__(self, down: int) -> None:
        self.down = down
        self.tries: list[tuple[int, dict[str, str], bytes]] = []
        self.url = ""

    async def receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = 503 if len(self.tries) < self.down else 200
        self.tries.append((status, dict(request.headers), body))
        return web.Response(status=status)


@pytest_asyncio.fixture(loop_scope="session")
async def webhook() -> AsyncIterator[Webhook]:
    hook = Webhook(down=2)
    app = web.Application()
    app.router.add_post("/records", hook.receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hook.url = f"http://127.0.0.1:{runner.addresses[0][1]}/records"
    yield hook
    await runner.cleanup()


def read_metrics(url: str) -> str:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as answer:
        return str(answer.read().decode())


async def wait_for(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_a_websocket_call_leaves_a_record_with_its_words_usage_and_cost(
        llm: LLMServer, fresh_llm: LLMServer, webhook: Webhook, whisper: WhisperSTT,
        utterances: dict[str, dict[str, str]], tmp_path: Path) -> None:
    records = tmp_path / "records"
    service = e2e.start_service(tmp_path, {
        "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "test-key-123",
        "VOICE_API_KEYS": "key-one", "VOICE_CALL_RECORDS_DIR": str(records),
        "VOICE_CALL_RECORDS_URL": webhook.url, "VOICE_CALL_RECORDS_SECRET": SECRET,
        "VOICE_RECORD_CALLS": "1"}, name="records")
    try:
        requests_before, usage_before = len(fresh_llm.requests), len(fresh_llm.usage_sent)
        fresh_llm.behaviour.reply = "The weather in Paris is sunny. Anything else?"
        client = VoiceClient(service.url)
        client.token = "key-one"
        async with client:
            await e2e.converse(client, utterances["weather"]["path"])
            fresh_llm.behaviour.reply = "Nice to meet you, Alice."
            await e2e.converse(client, utterances["name"]["path"])
        await wait_for(lambda: len(list(records.glob("*/*.json"))) == 1, 10)
        await wait_for(lambda: len(webhook.tries) == 3, 20)  # down twice, then taken
        metrics = await asyncio.to_thread(read_metrics, service.url)
    finally:
        e2e.stop_service(service)
    (path,) = records.glob("*/*.json")
    record = json.loads(path.read_text())
    assert record["session_id"] == client.session["session_id"] and record["transport"] == "ws"
    assert record["tenant"] == "key 1" and record["end_reason"] == "the caller hung up"

    # the transcript: what the client was told it said, and the replies it heard
    said = [e["text"] for e in client.events_of("transcript.final")]
    replies = [e["text"] for e in client.events_of("response.done")]
    assert [t["text"] for t in record["transcript"] if t["speaker"] == "caller"] == said
    assistant = [t for t in record["transcript"] if t["speaker"] == "assistant"]
    assert [t["text"] for t in assistant] == replies and all(t["heard"] for t in assistant)
    assert [t["turn_id"] for t in record["turns"]] == [1, 2]
    assert all("voice_to_voice_ms" in t["latency_ms"] for t in record["turns"])

    # usage: exactly what the LLM server reported, request by request
    sent = fresh_llm.usage_sent[usage_before:]
    usage = record["usage"]
    assert usage["llm_requests"] == len(fresh_llm.requests) - requests_before == len(sent)
    assert usage["llm_prompt_tokens"] == sum(u["prompt_tokens"] for u in sent)
    assert usage["llm_completion_tokens"] == sum(u["completion_tokens"] for u in sent)
    assert usage["llm_estimated"] is False
    assert usage["stt_seconds"] > 2 and usage["tts_seconds"] > 2
    assert usage["tts_characters"] >= sum(len(r) for r in replies) - 2
    turn_usage = client.events_of("turn.usage")
    assert [u["turn_id"] for u in turn_usage] == [1, 2]
    assert sum(u["usage"]["llm_completion_tokens"] for u in turn_usage) <= \
        usage["llm_completion_tokens"]

    # cost: the service's model at its list price (the local STT and TTS are free)
    price = next(p for p in DEFAULT_PRICES if p.model == record["models"]["llm"])
    expected = (usage["llm_prompt_tokens"] * price.input_per_m
                + usage["llm_completion_tokens"] * price.output_per_m) / 1e6
    assert record["cost"]["usd"] == pytest.approx(expected, abs=1e-6)
    assert record["cost"]["prices"] == {price.model: price.dated}

    # the recording: the caller on the left, the assistant on the right, in order
    audio, rate = soundfile.read(record["recording"]["path"], dtype="int16")
    assert rate == 16000 and audio.shape[1] == 2
    assert abs(len(audio) / rate - record["duration_s"]) < 1.5
    caller, assistant = np.ascontiguousarray(audio[:, 0]), np.ascontiguousarray(audio[:, 1])
    heard_caller = e2e.transcribe_back(whisper, caller, 16000)
    assert word_recall(utterances["weather"]["text"] + " " + utterances["name"]["text"],
                       heard_caller) >= 0.7, heard_caller
    heard_assistant = e2e.transcribe_back(whisper, assistant, 16000)
    assert word_recall(" ".join(replies), heard_assistant) >= 0.6, heard_assistant
    first_reply = np.flatnonzero(np.abs(assistant) > 1000)[0] / rate
    asked = np.flatnonzero(np.abs(caller) > 1000)
    assert asked[0] / rate < first_reply  # the question came before its answer

    # the webhook: the same record, signed, after two refusals
    assert [status for status, _, _ in webhook.tries] == [503, 503, 200]
    _, headers, body = webhook.tries[-1]
    assert json.loads(body) == record
    assert headers["X-Voice-Signature"] == signature(SECRET, headers["X-Voice-Timestamp"], body)
    assert f'voice_usage_total{{kind="llm_prompt_tokens",tenant="key 1"}} ' \
           f'{float(usage["llm_prompt_tokens"])}' in metrics
    assert 'voice_cost_usd_total{tenant="key 1"}' in metrics


class OtlpReceiver:
    """An OTLP/HTTP traces endpoint (protobuf, as the SDK's exporter sends): the spans
    it received, as (trace id, span id, parent id, name)."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, str, str]] = []
        self.url = ""

    async def receive(self, request: web.Request) -> web.Response:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        body = ExportTraceServiceRequest.FromString(await request.read())
        for resource in body.resource_spans:
            for scope in resource.scope_spans:
                for span in scope.spans:
                    self.spans.append((span.trace_id.hex(), span.span_id.hex(),
                                       span.parent_span_id.hex(), span.name))
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")


async def test_a_turns_trace_reaches_an_otlp_receiver_with_its_stages_under_it(
        llm: LLMServer, fresh_llm: LLMServer, utterances: dict[str, dict[str, str]],
        tmp_path: Path) -> None:
    receiver = OtlpReceiver()
    app = web.Application()
    app.router.add_post("/v1/traces", receiver.receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    collector = f"http://127.0.0.1:{runner.addresses[0][1]}"
    service = e2e.start_service(tmp_path, {
        "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "test-key-123",
        "VOICE_OTLP_ENDPOINT": collector, "OTEL_BSP_SCHEDULE_DELAY": "200"}, name="traced")
    try:
        fresh_llm.behaviour.reply = "It is sunny in Paris."
        async with VoiceClient(service.url) as client:
            await e2e.converse(client, utterances["weather"]["path"])
        await wait_for(lambda: any(name == "session" for *_, name in receiver.spans), 15)
    finally:
        e2e.stop_service(service)
        await runner.cleanup()
    (latency,) = client.events_of("turn.latency")
    trace_id = latency["trace_id"]
    assert len(trace_id) == 32 and f"session {client.session['session_id']}: trace " \
        f"{trace_id}" in service.log()
    mine = [s for s in receiver.spans if s[0] == trace_id]
    (session,) = [s for s in mine if s[3] == "session"]
    (turn,) = [s for s in mine if s[3] == "turn"]
    assert session[2] == "" and turn[2] == session[1]  # the turn under the session
    stages = {name for _, _, parent, name in mine if parent == turn[1]}
    assert {"endpointing", "stt", "llm", "first_text", "tts", "transport"} <= stages
    assert stages <= {"endpointing", "stt", "tool", "llm", "first_text", "tts", "transport"}
