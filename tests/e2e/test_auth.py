"""Who gets in, against the real service (voice/auth.py, service/access.py): every
session route needs a credential once keys are configured; keys come as a bearer
header, `?token=` or a subprotocol; scopes hold; a foreign page is refused; the
official `openai` SDK mints a client secret and opens one session with it, with the
settings it was minted with; `voice call --token` holds a turn."""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
from openai import AsyncOpenAI

import tests.e2e.conftest as e2e
from clients.audiofile import load_audio
from clients.ws_client import VoiceClient
from latency_tests.llm_server import LLMServer
from pipelines.providers.stt import WhisperSTT

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

FULL_KEY = "full-key-0123456789"
CASCADE_KEY = "phone-app-key-42"
DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def locked(llm: LLMServer, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[e2e.RunningService, int]]:
    """A service with keys, and its HTTP API port (client secrets, audio API)."""
    folder = tmp_path_factory.mktemp("auth")
    keys = folder / "keys"
    keys.write_text(f"{CASCADE_KEY} cascade  # the phone app: no realtime\n")
    api_port = e2e.free_port()
    running = e2e.start_service(folder, {
        "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "test-key-123",
        "VOICE_API_KEYS": FULL_KEY, "VOICE_API_KEYS_FILE": str(keys),
        "VOICE_AUDIO_API_PORT": str(api_port)})
    yield running, api_port
    e2e.stop_service(running)


def ws_url(service: e2e.RunningService, path: str) -> str:
    return service.url.replace("http://", "ws://") + path


async def refused(url: str, **options: object) -> websockets.InvalidStatus:
    with pytest.raises(websockets.InvalidStatus) as caught:
        async with websockets.connect(url, open_timeout=5, **options):  # type: ignore[arg-type]
            pass
    return caught.value


async def test_every_session_route_needs_a_valid_credential(
        locked: tuple[e2e.RunningService, int]) -> None:
    service, _ = locked
    for path in ("/ws?sample_rate=16000", "/rtc", "/v1/realtime?model=gpt-realtime"):
        for headers in ({}, {"Authorization": "Bearer wrong-key"}):
            response = (await refused(ws_url(service, path), additional_headers=headers)).response
            assert response.status_code == 401, (path, headers)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "refused /ws from 127.0.0.1: missing credential" in service.log()
    assert FULL_KEY not in service.log()


async def test_a_key_opens_a_session_as_header_query_or_subprotocol(
        locked: tuple[e2e.RunningService, int]) -> None:
    service, _ = locked
    client = VoiceClient(service.url)
    client.token = FULL_KEY
    await client.connect()
    assert client.session["type"] == "session.created"
    await client.close()
    async with websockets.connect(ws_url(service, f"/ws?sample_rate=16000&token={FULL_KEY}"),
                                  open_timeout=5) as ws:
        assert '"session.created"' in str(await ws.recv())
    offered = ["voice", f"openai-insecure-api-key.{FULL_KEY}"]  # as a browser does it
    async with websockets.connect(ws_url(service, "/ws?sample_rate=16000"), open_timeout=5,
                                  subprotocols=offered) as ws:  # type: ignore[arg-type]
        assert ws.subprotocol == "voice"
        assert '"session.created"' in str(await ws.recv())


async def test_a_page_from_a_foreign_origin_is_refused(
        locked: tuple[e2e.RunningService, int]) -> None:
    service, _ = locked
    url = ws_url(service, f"/ws?sample_rate=16000&token={FULL_KEY}")
    response = (await refused(url, origin="http://evil.example")).response
    assert response.status_code == 403 and b"origin" in response.body
    async with websockets.connect(url, origin=service.url, open_timeout=5) as ws:  # type: ignore[arg-type]
        assert '"session.created"' in str(await ws.recv())


async def test_a_scoped_key_may_not_spend_the_realtime_provider(
        locked: tuple[e2e.RunningService, int]) -> None:
    service, _ = locked
    headers = {"Authorization": f"Bearer {CASCADE_KEY}"}
    for path in ("/ws?sample_rate=16000&pipeline=realtime", "/v1/realtime"):
        response = (await refused(ws_url(service, path), additional_headers=headers)).response
        assert response.status_code == 403 and b"realtime" in response.body, path
    async with websockets.connect(ws_url(service, "/ws?sample_rate=16000"), open_timeout=5,
                                  additional_headers=headers) as ws:
        assert '"session.created"' in str(await ws.recv())


async def test_the_openai_sdk_mints_a_secret_and_opens_one_locked_session_with_it(
        locked: tuple[e2e.RunningService, int], fresh_llm: LLMServer) -> None:
    service, api_port = locked
    base = f"http://127.0.0.1:{api_port}/v1"
    websocket_base = ws_url(service, "/v1")
    server = AsyncOpenAI(api_key=FULL_KEY, base_url=base, websocket_base_url=websocket_base)
    secret = await server.realtime.client_secrets.create(
        expires_after={"anchor": "created_at", "seconds": 600},
        session={"type": "realtime", "instructions": "Answer like a ship's captain."})
    assert secret.value.startswith("ek_") and secret.expires_at > 0
    browser = AsyncOpenAI(api_key=secret.value, base_url=base,
                          websocket_base_url=websocket_base)
    async with browser.realtime.connect(model="gpt-realtime") as connection:
        created = await connection.recv()
        assert created.type == "session.created"
        assert created.session.instructions == "Answer like a ship's captain."  # type: ignore[union-attr]
        await connection.session.update(session={"type": "realtime", "instructions": "Be rude."})
        error = await connection.recv()
        while error.type != "error":  # conversation.created came first
            error = await connection.recv()
        assert error.error.code == "session_locked"  # type: ignore[union-attr]
        await connection.conversation.item.create(item={
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "hello there"}]})
        await connection.response.create(response={"output_modalities": ["text"]})
        async for event in connection:
            if event.type == "response.done":
                break
    assert fresh_llm.requests[-1]["messages"][0]["content"] == "Answer like a ship's captain."
    with pytest.raises(websockets.InvalidStatus) as again:  # a secret opens one session
        async with browser.realtime.connect(model="gpt-realtime") as connection:
            await connection.recv()
    assert again.value.response.status_code == 401
    phone = AsyncOpenAI(api_key=CASCADE_KEY, base_url=base)
    with pytest.raises(Exception, match="403|not allowed"):  # no `secrets` scope
        await phone.realtime.client_secrets.create()


def mint(api_port: int) -> str:
    request = urllib.request.Request(
        f"http://127.0.0.1:{api_port}/v1/realtime/client_secrets", data=b"{}", method="POST",
        headers={"Authorization": f"Bearer {FULL_KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        value: str = json.load(response)["value"]
    return value


async def test_a_secret_turned_away_by_a_full_worker_is_not_used_up(
        locked: tuple[e2e.RunningService, int]) -> None:
    service, api_port = locked
    secret = mint(api_port)
    with_secret = ws_url(service, f"/ws?sample_rate=16000&token={secret}")
    cap = int(e2e.SERVICE_ENV["VOICE_MAX_SESSIONS"])
    holders = [VoiceClient(service.url) for _ in range(cap)]
    try:
        for holder in holders:
            holder.token = FULL_KEY
            await holder.connect()
        assert (await refused(with_secret)).response.status_code == 503
    finally:
        for holder in holders:
            await holder.close()
    async with websockets.connect(with_secret, open_timeout=5):  # still good for one
        pass
    assert (await refused(with_secret)).response.status_code == 401  # and only one


async def test_the_audio_api_takes_keys_not_secrets(
        locked: tuple[e2e.RunningService, int]) -> None:
    _, api_port = locked

    def status(token: str | None) -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{api_port}/v1/models")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    assert [status(None), status("nope"), status(FULL_KEY), status(CASCADE_KEY),
            status("ek_not_a_key")] == [401, 401, 200, 403, 401]


async def test_voice_call_with_a_token_holds_a_turn(
        locked: tuple[e2e.RunningService, int], whisper: WhisperSTT, tmp_path: Path) -> None:
    service, _ = locked
    out = tmp_path / "reply.wav"
    command = [sys.executable, "-m", "service.cli", "call", str(DATA / "weather.wav"),
               "--url", service.url, "--out", str(out)]

    async def run(*extra: str) -> tuple[int, str]:
        # in this event loop's own time: the LLM server answers from it
        process = await asyncio.create_subprocess_exec(
            *command, *extra, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        output, _ = await asyncio.wait_for(process.communicate(), 90)
        return int(process.returncode or 0), output.decode()

    code, text = await run()
    assert code == 1 and "refused the call: HTTP 401" in text and "--token" in text, text
    code, text = await run("--token", FULL_KEY)
    assert code == 0, text
    heard = e2e.transcribe_back(whisper, load_audio(out, 16000), 16000).lower()
    assert "you said" in heard and "weather" in heard, heard
