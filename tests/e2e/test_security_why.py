"""Issue #18's "Why", against the real service: the items no other e2e test reproduced
on its own. Each test names the old behaviour it would catch. Here: the routes and the
LLM's broken output; the SIP bridge's items and /rtc's TURN credentials, on the service
as an operator would run it, are in test_security_why_sip.

Reproduced elsewhere: the 1011 closes (test_robustness, test_realtime_e2e), the
credentials on the three routes, scopes and the audio API (test_auth), the hostile SIP
client with its injected RTP and flood (test_sip_hostile), the /rtc capacity race
(test_webrtc_peers), the time limit, idle timeout and per-address cap (test_robustness),
URL credentials (test_operations), forged log lines (test_robustness, test_sip_hostile)
and the LLM's broken output heard as an apology (test_robustness).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

import tests.e2e.conftest as e2e
from clients.ws_client import VoiceClient
from latency_tests.llm_server import Garbage, LLMServer
from pipelines.providers.stt import WhisperSTT

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]


def ws_url(service: e2e.RunningService, path: str) -> str:
    return service.url.replace("http://", "ws://") + path


def get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), dict(json.load(response))
    except urllib.error.HTTPError as exc:
        return exc.code, dict(json.load(exc))


def error_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if " ERROR " in line or "Traceback" in line]




async def test_a_page_from_a_foreign_origin_is_refused_on_every_route_by_default(
        service: e2e.RunningService) -> None:
    """`/ws` opened from `Origin: http://evil.example` on the quick-start service (no
    keys): any web page a user visited could talk through their microphone."""
    for path in ("/ws?sample_rate=16000", "/rtc", "/v1/realtime"):
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(ws_url(service, path), open_timeout=5,
                                          origin="http://evil.example"):  # type: ignore[arg-type]
                pass
        assert refused.value.response.status_code == 403, path
    async with websockets.connect(ws_url(service, "/ws?sample_rate=16000"), open_timeout=5,
                                  origin=service.url) as ws:  # type: ignore[arg-type]
        assert json.loads(await ws.recv())["type"] == "session.created"


async def test_a_public_address_without_keys_refuses_to_start(tmp_path: Path) -> None:
    """Any address could be bound with no key, so every endpoint was open to the network
    (and the audio API's key was optional and empty)."""
    port = e2e.free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.cli", "serve", "--host", "0.0.0.0", "--port", str(port),
        "--audio-api-port", str(e2e.free_port()), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **e2e.SERVICE_ENV, "VOICE_API_KEYS": "",
             "VOICE_API_KEYS_FILE": "", "VOICE_AUDIO_API_KEY": ""})
    try:
        output, _ = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = output.decode(errors="replace")
    assert process.returncode not in (0, None), text
    assert "refusing to serve 0.0.0.0 with no API keys" in text and "--api-keys" in text, text


REALTIME_CONTENT = [  # items whose content is not a list of content parts
    {"type": "message", "role": "user", "content": "hi"},
    {"type": "message", "role": "user", "content": {"type": "input_text", "text": "hi"}},
    {"type": "message", "role": "user", "content": [["input_text", "hi"]]},
    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": ["hi"]}]},
    {"type": "message", "role": "user", "content": [{"type": ["input_text"], "text": "hi"}]},
]


async def test_realtime_items_with_content_of_the_wrong_shape_get_error_events(
        service: e2e.RunningService) -> None:
    """A /v1/realtime item whose content was a list where a string goes closed the
    connection with 1011 and a traceback; a text that was a list passed as silence."""
    mark = len(service.log())
    async with websockets.connect(ws_url(service, "/v1/realtime"), open_timeout=5) as client:
        for item in REALTIME_CONTENT:
            await client.send(json.dumps({"type": "conversation.item.create", "item": item}))
            async with asyncio.timeout(5):
                while (event := json.loads(await client.recv()))["type"] != "error":
                    pass
            error = event["error"]
            assert error["type"] == "invalid_request_error", (item, event)
            assert error["param"].startswith("item.content"), (item, event)
        await client.send(json.dumps({"type": "session.update",
                                      "session": {"type": "realtime", "instructions": "Hi"}}))
        async with asyncio.timeout(5):
            while (event := json.loads(await client.recv()))["type"] != "session.updated":
                assert event["type"] != "error", event
    assert client.close_code is None or client.close_code == 1000
    assert error_lines(service.log()[mark:]) == []


# --- the LLM's broken output ---------------------------------------------------------

@pytest.fixture(scope="module")
def picky(llm: LLMServer, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[e2e.RunningService]:
    """A breaker that opens at the first failure and half-opens 0.1 s later, so that
    each failing turn shows in its `opened` count; a 3 s deadline for a whole reply."""
    running = e2e.start_service(tmp_path_factory.mktemp("why-picky"), {
        "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "test-key-123",
        "VOICE_BREAKER_MIN_FAILURES": "1", "VOICE_BREAKER_OPEN_S": "0.1",
        "VOICE_LLM_REPLY_TIMEOUT_S": "3"}, name="why-picky")
    yield running
    e2e.stop_service(running)


def opened(service: e2e.RunningService, llm: LLMServer) -> int:
    breakers: dict[str, dict[str, Any]] = service.health()["breakers"]
    return int(next(v for k, v in breakers.items() if llm.base_url in k)["opened"])


@pytest.mark.parametrize("failure", ["garbage stream", "null deltas", "html page",
                                     "a token a second past the reply deadline"])
async def test_broken_llm_output_is_an_apology_an_error_and_a_breaker_failure(
        picky: e2e.RunningService, fresh_llm: LLMServer, whisper: WhisperSTT,
        utterances: dict[str, dict[str, str]], failure: str) -> None:
    """A garbage stream or `delta: null` ended the turn in silence with internal_error
    and the breaker did not count it; a 200 with an HTML body was an empty reply
    counted as success; a slow token every few seconds was accepted for ever."""
    if failure.startswith("a token"):  # each within llm_timeout_s (1.5 s); 20 s in all
        fresh_llm.behaviour.token_interval = 1.0
        fresh_llm.behaviour.reply = " ".join(["Once"] + ["upon a time"] * 6) + "."
    else:
        fresh_llm.behaviour.always_fail = {"garbage stream": Garbage("json"),
                                           "null deltas": Garbage("null_delta"),
                                           "html page": Garbage("html")}[failure]
    before = await asyncio.to_thread(opened, picky, fresh_llm)
    async with VoiceClient(picky.url) as client:
        await e2e.converse(client, utterances["joke"]["path"])
    codes = [e["code"] for e in client.events_of("error")]
    assert codes == ["llm_timeout" if failure.startswith("a token") else "llm_bad_output"]
    heard = e2e.transcribe_back(whisper, client.reply_audio(), 16000)
    assert "sorry" in heard.lower(), heard
    assert await asyncio.to_thread(opened, picky, fresh_llm) > before
    if failure.startswith("a token"):
        assert "LLM reply took longer than 3 s" in picky.log()
