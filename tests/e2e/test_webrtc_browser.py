"""The browser widget in real headless Chromium (Debian's, driven by playwright-core from
npm: tests/browser/drive_widget.mjs) against the real service and models.

Chromium's fake microphone plays a test WAV; the assertions are what a person would see
and hear on the demo page: the transcript of both sides, the latency panel, the error
messages, and the level of the reply audio measured inside the page. Screenshots are
kept in out/browser/ (set VOICE_DOCS_SCREENSHOT=1 to refresh docs/widget.png).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from clients.audiofile import load_audio, save_wav
from latency_tests.llm_server import LLMServer
from tests.conftest import word_recall
from tests.e2e.conftest import SERVICE_ENV, RunningService, free_port, start_service, stop_service

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "tests" / "browser" / "drive_widget.mjs"
ARTIFACTS = ROOT / "out" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
SOUND_DEVICES = Path("/dev/snd").exists()
STAGES = ["endpointing_ms", "stt_ms", "llm_ms", "first_text_ms", "tts_ms", "transport_ms",
          "voice_to_voice_ms"]


def _browser_missing() -> str | None:
    if not CHROMIUM.exists():
        return "Debian chromium is not installed (scripts/setup.sh --test, as root)"
    if not (ROOT / "tests" / "browser" / "node_modules" / "playwright-core").is_dir():
        return "playwright-core is not installed (npm ci in tests/browser)"
    if shutil.which("node") is None:
        return "node is not installed"
    return None


@pytest.fixture(scope="module", autouse=True)
def browser_available() -> None:
    missing = _browser_missing()
    if missing and os.environ.get("CI") == "true":
        pytest.fail(missing)  # CI installs them: never skip there
    if missing:
        pytest.skip(missing)


@pytest.fixture(scope="module")
def web_service(llm: LLMServer, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[RunningService]:
    running = start_service(tmp_path_factory.mktemp("web"), {
        "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "test-key-123",
        "VOICE_RTC_ALLOW_LOOPBACK": "1", "VOICE_IDLE_TIMEOUT_S": "60"}, name="web")
    yield running
    stop_service(running)


def fake_microphone(utterance: str, tmp_path: Path) -> Path:
    """The utterance after 3 s of silence (the call connects meanwhile), then silence:
    Chromium loops the file, and the test is over long before it comes round again."""
    rate = 48000
    speech = load_audio(utterance, rate)
    silence = np.zeros(3 * rate, np.int16)
    path = tmp_path / "microphone.wav"
    save_wav(path, np.concatenate([silence, speech, np.zeros(40 * rate, np.int16)]), rate)
    return path


class DriverFailed(AssertionError):
    pass


async def drive(config: dict[str, Any], on_step: Any = None) -> list[dict[str, Any]]:
    """Run the driver; return one snapshot per step. `on_step(index)` may act between steps
    (it runs while the driver goes on with the next one)."""
    process = await asyncio.create_subprocess_exec(
        "node", str(DRIVER), json.dumps(config), cwd=DRIVER.parent,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    snapshots: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(240):
            async for raw in process.stdout:
                line = json.loads(raw)
                if line.get("done"):
                    break
                if not line["ok"]:
                    raise DriverFailed(json.dumps(line, indent=1))
                snapshots.append(line["snapshot"])
                if on_step is not None:
                    await on_step(line["step"])
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if process.returncode != 0:
        raise DriverFailed((await process.stderr.read()).decode())
    return snapshots


def keep_artifact(path: Path, docs_name: str | None = None) -> None:
    if docs_name and os.environ.get("VOICE_DOCS_SCREENSHOT") == "1":
        shutil.copy(path, ROOT / "docs" / docs_name)


@pytest.mark.parametrize("path", ["webrtc", "websocket fallback"])
async def test_a_person_talks_to_the_widget_and_hears_the_reply(
        web_service: RunningService, fresh_llm: LLMServer, tmp_path: Path,
        utterances: dict[str, dict[str, str]], path: str) -> None:
    reply = "It is sunny and warm in Paris today, with a light breeze."
    fresh_llm.behaviour.reply = reply
    utterance = utterances["weather"]
    name = path.split()[0]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    speaking, final = ARTIFACTS / f"widget-{name}-speaking.png", ARTIFACTS / f"widget-{name}.png"
    config = {
        "url": f"{web_service.url}/",
        "audioFile": str(fake_microphone(utterance["path"], tmp_path)),
        "noWebRTC": path == "websocket fallback",  # a browser without WebRTC falls back
        "failureScreenshot": str(ARTIFACTS / f"widget-{name}-failure.png"),
        "steps": [
            {"do": "click"},
            {"do": "wait", "until": "speaking", "timeoutMs": 60000},
            {"do": "screenshot", "path": str(speaking)},
            {"do": "wait", "until": "reply", "timeoutMs": 60000},
            {"do": "screenshot", "path": str(final)},
        ],
    }
    *_, page = await drive(config)
    keep_artifact(speaking, "widget.png" if name == "webrtc" else None)

    assert page["transport"] == name
    assert ("WebRTC" if name == "webrtc" else "WebSocket") in page["stateText"]
    you, assistant = page["transcript"][:2]
    assert you.startswith("You: ") and word_recall(utterance["text"], you) >= 0.8, you
    assert assistant == f"Assistant: {reply}"
    assert you in page["text"] and assistant in page["text"]  # shown, not just stored
    # the reply was audible in the page, measured on what the page plays
    assert page["replyPeakDb"] > -30, page
    assert page["replyAudibleMs"] >= 1500, page
    assert list(page["latency"]) == STAGES
    assert all(re.fullmatch(r"\d+ ms", value) for value in page["latency"].values())
    assert "Voice to voice" in page["text"] and page["error"] == ""
    assert speaking.stat().st_size > 10_000 and final.stat().st_size > 10_000


@pytest.mark.parametrize("microphone, message", [
    ("deny", "Microphone access was denied. Allow the microphone for this site"),
    ("none", "No microphone was found. Connect a microphone"),
])
async def test_microphone_problems_are_explained(web_service: RunningService, microphone: str,
                                                 message: str) -> None:
    if microphone == "none" and SOUND_DEVICES:
        pytest.skip("this machine has sound devices: Chromium would find a microphone")
    *_, page = await drive({
        "url": f"{web_service.url}/", "microphone": microphone,
        "steps": [{"do": "click"}, {"do": "wait", "until": "error", "timeoutMs": 20000}]})
    assert message in page["error"]
    assert page["error"] in page["text"] and page["stateText"] == "Not connected"


async def test_an_unreachable_service_is_explained(web_service: RunningService) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    *_, page = await drive({
        "url": f"{web_service.url}/?server={dead}",
        "steps": [{"do": "click"}, {"do": "wait", "until": "error", "timeoutMs": 20000}]})
    assert f"Cannot reach the voice service at {dead}" in page["error"]
    assert page["error"] in page["text"]


def spawn_service(tmp: Path, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = (tmp / f"service-{time.monotonic_ns()}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **SERVICE_ENV, **env})


def wait_healthy(port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("the restarted service did not become healthy")


async def test_a_lost_connection_is_reported_and_restored(
        llm: LLMServer, tmp_path: Path, utterances: dict[str, dict[str, str]]) -> None:
    port = free_port()
    env = {"OPENAI_BASE_URL": llm.base_url, "VOICE_RTC_ALLOW_LOOPBACK": "1"}
    services = [spawn_service(tmp_path, port, env)]
    await asyncio.to_thread(wait_healthy, port)

    async def restart_after_connecting(step: int) -> None:
        if step == 1:  # connected: the service goes away, then comes back
            services[0].send_signal(signal.SIGINT)  # gone at once (SIGTERM would drain)
            await asyncio.to_thread(services[0].wait, 20)
        if step == 2:  # the widget has noticed
            services.append(spawn_service(tmp_path, port, env))

    try:
        snapshots = await drive({
            "url": f"http://127.0.0.1:{port}/",
            "audioFile": str(fake_microphone(utterances["name"]["path"], tmp_path)),
            "steps": [{"do": "click"},
                      {"do": "wait", "until": "state", "state": "connected"},
                      {"do": "wait", "until": "state", "state": "reconnecting"},
                      {"do": "wait", "until": "state", "state": "connected", "timeoutMs": 90000}],
        }, on_step=restart_after_connecting)
    finally:
        for process in services:
            process.send_signal(signal.SIGINT)
            await asyncio.to_thread(process.wait, 20)
    lost, restored = snapshots[2], snapshots[3]
    assert "Reconnecting" in lost["stateText"]
    assert "connection to the voice service was lost" in lost["error"]
    assert restored["stateText"].startswith("Connected over WebRTC")
    assert restored["error"] == "" and restored["reconnects"] >= 1


SERVER_KEY = "page-server-key-0123456789"
INSTRUCTIONS = "You are the help line of Acme Bank. Be brief."


@pytest.fixture(scope="module")
def keyed_service(llm: LLMServer, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[tuple[RunningService, int]]:
    """A service that needs a credential, and its HTTP API port (client secrets)."""
    api_port = free_port()
    running = start_service(tmp_path_factory.mktemp("keyed-web"), {
        "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "test-key-123",
        "VOICE_RTC_ALLOW_LOOPBACK": "1", "VOICE_IDLE_TIMEOUT_S": "60",
        "VOICE_API_KEYS": SERVER_KEY, "VOICE_AUDIO_API_PORT": str(api_port)}, name="keyed-web")
    yield running, api_port
    stop_service(running)


class PageServer:
    """The operator's own web site: a page with the widget on it, and `/token`, which
    mints a client secret with the site's server-side key for each connection (the
    key itself never reaches the browser)."""

    def __init__(self, service_url: str, api_port: int, token_url: bool) -> None:
        self.service_url, self.api_port, self.token_url = service_url, api_port, token_url
        self.minted: list[str] = []
        self.url = ""

    def page(self) -> str:
        credential = 'token-url="/token"' if self.token_url else ""
        return (f'<!doctype html><html><body><script type="module" '
                f'src="/widget/voice-widget.js"></script><voice-widget '
                f'server="{self.service_url}" {credential} instructions="{INSTRUCTIONS}" '
                f'turn-preset="patient"></voice-widget></body></html>')

    def mint(self) -> bytes:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.api_port}/v1/realtime/client_secrets", data=b"{}",
            method="POST", headers={"Authorization": f"Bearer {SERVER_KEY}",
                                    "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            body: bytes = response.read()
        self.minted.append(json.loads(body)["value"])
        return body

    async def __aenter__(self) -> PageServer:
        async def page(_: web.Request) -> web.Response:
            return web.Response(text=self.page(), content_type="text/html")

        async def widget(request: web.Request) -> web.StreamResponse:
            name = request.match_info["name"]
            path = ROOT / "clients" / "web" / name
            if "/" in name or not path.is_file():
                raise web.HTTPNotFound()
            return web.Response(body=path.read_bytes(), content_type="text/javascript")

        async def token(_: web.Request) -> web.Response:
            return web.Response(body=await asyncio.to_thread(self.mint),
                                content_type="application/json")

        app = web.Application()
        app.add_routes([web.get("/", page), web.get("/widget/{name}", widget),
                        web.post("/token", token)])
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._runner.cleanup()


async def test_a_widget_on_the_operators_page_connects_with_a_minted_client_secret(
        keyed_service: tuple[RunningService, int], fresh_llm: LLMServer, tmp_path: Path,
        utterances: dict[str, dict[str, str]]) -> None:
    """Without a credential the widget is refused and says so; with `token-url` it gets
    a one-use client secret from the page's server and holds a conversation, with the
    instructions and turn-taking preset given on its tag."""
    service, api_port = keyed_service
    reply = "Your account is in good order."
    fresh_llm.behaviour.reply = reply
    async with PageServer(service.url, api_port, token_url=False) as site:
        *_, page = await drive({
            "url": site.url, "steps": [{"do": "click"},
                                       {"do": "wait", "until": "error", "timeoutMs": 20000}]})
    assert "the service refused the connection" in page["error"], page
    async with PageServer(service.url, api_port, token_url=True) as site:
        *_, page = await drive({
            "url": site.url,
            "audioFile": str(fake_microphone(utterances["weather"]["path"], tmp_path)),
            "failureScreenshot": str(ARTIFACTS / "widget-token-failure.png"),
            "steps": [{"do": "click"}, {"do": "wait", "until": "reply", "timeoutMs": 60000}]})
    assert page["transport"] == "webrtc" and page["error"] == "", page
    you, assistant = page["transcript"][:2]
    assert word_recall(utterances["weather"]["text"], you) >= 0.8, you
    assert assistant == f"Assistant: {reply}"
    assert page["replyPeakDb"] > -30, page
    assert len(site.minted) == 1  # one connection, one secret
    # the page's session settings reached the service (session.update on connect)
    assert fresh_llm.requests[-1]["messages"][0]["content"] == INSTRUCTIONS
    log = service.log()
    assert "refused /rtc from 127.0.0.1: missing credential" in log
    assert site.minted[0] not in log and SERVER_KEY not in log
