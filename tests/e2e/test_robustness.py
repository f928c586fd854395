"""Bad input, LLM failures and shutdown: errors are clear, other sessions carry on."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal

import pytest
import websockets

from clients.ws_client import VoiceClient
from latency_tests.llm_server import ErrorStatus, Garbage, Hang, LLMServer
from pipelines.providers.stt import WhisperSTT
from pipelines.reply_engine import APOLOGY
from tests.conftest import word_recall
from tests.e2e.conftest import (
    SERVICE_ENV,
    RunningService,
    assert_one_event_per_line,
    converse,
    start_service,
    stop_service,
    transcribe_back,
)

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]


async def expect_error(client: VoiceClient, code: str) -> dict[str, object]:
    return await client.wait_for("error", timeout=5, code=code)


async def still_alive(client: VoiceClient) -> None:
    start = len(client.record.events)
    await client.send_json({"type": "ping"})
    await client.wait_for("pong", after=start, timeout=5)


async def abuse(url: str) -> dict[str, tuple[int | None, str]]:
    """Every kind of bad input; returns the close code and reason each session saw."""
    closes: dict[str, tuple[int | None, str]] = {}
    async with VoiceClient(url) as client:
        await client.send_raw(b"\x01\x02\x03")
        await expect_error(client, "invalid_audio")
        await client.send_raw("this is not json")
        await expect_error(client, "invalid_json")
        await client.send_raw("[1, 2, 3]")
        await expect_error(client, "invalid_message")
        await client.send_json({"type": "no.such.thing"})
        await expect_error(client, "unknown_type")
        await client.send_json({"type": "dtmf", "digit": [1]})  # once a 1011 close
        await expect_error(client, "invalid_message")
        await client.send_raw('{"type": "dtmf", "digit": NaN}')
        await expect_error(client, "invalid_message")
        for _ in range(30):  # a minute of audio at once: uploaded, not spoken
            await client.send_raw(b"\x10\x00" * 30000)
        await expect_error(client, "audio_too_fast")
        await still_alive(client)
        await client.send_raw(b"\x00" * (int(SERVICE_ENV["VOICE_MAX_MESSAGE_BYTES"]) + 2))
        await expect_error(client, "message_too_large")
        await client.wait_closed()
        closes["too_large"] = (client.close_code, client.close_reason)
    async with VoiceClient(url) as client:
        await expect_error(client, "idle_timeout")
        await client.wait_closed()
        closes["idle"] = (client.close_code, client.close_reason)
    bad_rate = VoiceClient(url, sample_rate=44100)
    with pytest.raises(ConnectionError):
        await bad_rate.connect()
    assert bad_rate.record.events[0]["code"] == "invalid_sample_rate"
    closes["sample_rate"] = (bad_rate.close_code, bad_rate.close_reason)
    return closes


async def test_bad_input_gets_clear_errors_while_another_session_goes_on(
        service: RunningService, fresh_llm: LLMServer,
        utterances: dict[str, dict[str, str]]) -> None:
    fresh_llm.behaviour.reply = "Fine."
    async with VoiceClient(service.url) as good:
        conversation = asyncio.create_task(converse(good, utterances["train"]["path"]))
        closes = await abuse(service.url)
        done = await conversation
        transcript = good.events_of("transcript.final")
        assert len(transcript) == 1
        assert word_recall(utterances["train"]["text"], transcript[0]["text"]) >= 0.8
        assert done["text"] == "Fine."
        assert good.events_of("error") == []
    assert closes["too_large"][0] == 1009
    assert closes["idle"][0] == 4008
    assert closes["sample_rate"][0] == 1008


async def test_sessions_over_the_cap_are_refused_with_a_reason(service: RunningService) -> None:
    cap = int(SERVICE_ENV["VOICE_MAX_SESSIONS"])
    clients = [VoiceClient(service.url) for _ in range(cap)]
    try:
        for client in clients:
            await client.connect()
        with pytest.raises(websockets.InvalidStatus) as refused:
            await VoiceClient(service.url).connect()
        assert refused.value.response.status_code == 503
        assert b"capacity" in refused.value.response.body
    finally:
        for client in clients:
            await client.close()


@pytest.mark.parametrize("failure", ["http 500", "http 429", "hang", "html page",
                                     "null deltas", "garbage stream", "a token every 4 s"])
async def test_llm_failure_gives_spoken_apology_and_next_turn_works(
        service: RunningService, fresh_llm: LLMServer, whisper: WhisperSTT,
        utterances: dict[str, dict[str, str]], failure: str) -> None:
    if failure == "a token every 4 s":  # once accepted for ever; VOICE_LLM_TIMEOUT_S is 1.5
        fresh_llm.behaviour.token_interval = 4.0
        fresh_llm.behaviour.reply = "Why did the chicken cross the road"
    else:
        fresh_llm.behaviour.always_fail = {
            "http 500": ErrorStatus(500), "http 429": ErrorStatus(429), "hang": Hang(),
            "html page": Garbage("html"), "null deltas": Garbage("null_delta"),
            "garbage stream": Garbage("json")}[failure]
    code = {"http 500": "llm_error", "http 429": "llm_rate_limited", "hang": "llm_timeout",
            "html page": "llm_bad_output", "null deltas": "llm_bad_output",
            "garbage stream": "llm_bad_output", "a token every 4 s": "llm_timeout"}
    async with VoiceClient(service.url) as client:
        await converse(client, utterances["joke"]["path"])
        error = client.events_of("error")
        assert [e["code"] for e in error] == [code[failure]]
        heard = transcribe_back(whisper, client.reply_audio(), 16000)
        assert "sorry" in heard.lower(), heard

        fresh_llm.behaviour.always_fail = None
        fresh_llm.behaviour.token_interval = 0.0
        fresh_llm.behaviour.reply = "Here is one about computers."
        mark = len(client.record.audio)
        done = await converse(client, utterances["name"]["path"])
        assert done["text"] == "Here is one about computers."
        assert len(client.events_of("error")) == 1
        later = [c.samples for c in client.record.audio[mark:]]
        assert later, "no reply audio on the turn after the failure"
        # the failed turn is in the history as the caller heard it: the words that came
        # before the failure, else the apology (never two user messages in a row)
        history = fresh_llm.requests[-1]["messages"]
        assert [m["role"] for m in history] == ["system", "user", "assistant", "user"]
        if failure in ("garbage stream", "a token every 4 s"):  # a word came, then the failure
            assert history[2]["content"].split()[0] in ("Sure.", "Why")
        else:
            assert history[2]["content"] == APOLOGY


async def test_sigint_closes_open_sessions_with_1001_at_once(
        llm: LLMServer, tmp_path_factory: pytest.TempPathFactory) -> None:
    service = start_service(tmp_path_factory.mktemp("shutdown"),
                            {"OPENAI_BASE_URL": llm.base_url}, name="shutdown")
    try:
        async with VoiceClient(service.url) as first, VoiceClient(service.url) as second:
            await first.stream_silence(0.2)
            service.process.send_signal(signal.SIGINT)  # SIGTERM drains: test_operations
            await first.wait_closed()
            await second.wait_closed()
            assert (first.close_code, second.close_code) == (1001, 1001)
        code = await asyncio.to_thread(service.process.wait, 20)
        assert code == 0
        assert "shutting down: closing 2 open session(s)" in service.log()
    finally:
        if service.process.poll() is None:
            service.process.kill()


async def test_a_session_at_its_time_limit_hears_goodbye_and_ends(
        llm: LLMServer, whisper: WhisperSTT, tmp_path_factory: pytest.TempPathFactory) -> None:
    """And a /v1/realtime client that sends nothing is closed (4008) after its idle time."""
    service = start_service(tmp_path_factory.mktemp("time-limit"), {
        "OPENAI_BASE_URL": llm.base_url, "VOICE_MAX_SESSION_S": "2",
        "VOICE_REALTIME_API_IDLE_TIMEOUT_S": "1"}, name="time-limit")
    try:
        realtime = service.url.replace("http://", "ws://") + "/v1/realtime"
        async with websockets.connect(realtime) as idle:
            async with asyncio.timeout(10):
                with contextlib.suppress(websockets.ConnectionClosed):
                    while True:
                        await idle.recv()  # session.created, conversation.created
        assert idle.close_code == 4008
        async with VoiceClient(service.url) as client:
            async with asyncio.timeout(20):
                with contextlib.suppress(websockets.ConnectionClosed):
                    while not client.closed:  # a caller who says nothing, for ever
                        await client.stream_silence(0.1)
                await client.wait_closed()
    finally:
        stop_service(service)
    assert client.close_code == 1000
    (done,) = client.events_of("response.done")
    assert done["text"] == "We have reached the time limit for this call. Goodbye."
    heard = transcribe_back(whisper, client.reply_audio(), 16000)
    assert word_recall("we have reached the time limit for this call goodbye", heard) >= 0.6


FORGED = "2026-01-01 00:00:00,000 ERROR   forged.by.the.caller [-]: a fake line"


async def test_caller_text_cannot_forge_a_log_line(service: RunningService) -> None:
    """A refused event type with line breaks in it is logged as one escaped line."""
    realtime = service.url.replace("http://", "ws://") + "/v1/realtime"
    for brk in ("\n", "\r", "\u2028"):
        async with websockets.connect(realtime) as client:
            await client.send(json.dumps({"type": f"nope{brk}{FORGED}"}))
            async with asyncio.timeout(5):
                while (event := json.loads(await client.recv()))["type"] != "error":
                    pass
            assert event["error"]["type"] == "invalid_request_error"
    await asyncio.sleep(0.2)
    assert_one_event_per_line(service.log(), FORGED)


async def test_one_address_holds_at_most_its_share_of_sessions(
        llm: LLMServer, tmp_path_factory: pytest.TempPathFactory) -> None:
    """`max_sessions_per_address` counts /ws and /v1/realtime sessions together."""
    service = start_service(tmp_path_factory.mktemp("per-address"), {
        "OPENAI_BASE_URL": llm.base_url, "VOICE_MAX_SESSIONS_PER_ADDRESS": "2"},
        name="per-address")
    try:
        realtime = service.url.replace("http://", "ws://") + "/v1/realtime"
        async with VoiceClient(service.url), websockets.connect(realtime):
            for refused_url in (service.url.replace("http://", "ws://") + "/ws", realtime):
                with pytest.raises(websockets.InvalidStatus) as refused:
                    async with websockets.connect(refused_url):
                        pass
                assert refused.value.response.status_code == 503
                assert b"2 sessions from one address" in refused.value.response.body
        async with VoiceClient(service.url) as again:  # the share frees as sessions end
            await still_alive(again)
    finally:
        stop_service(service)
