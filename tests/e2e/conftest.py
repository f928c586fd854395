"""The real service as a subprocess (`voice serve`), with the bundled models and the
local OpenAI-compatible LLM server of `latency_tests.llm_server` as its LLM."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio

from clients.audiofile import load_audio
from clients.ws_client import VoiceClient
from latency_tests.llm_server import Behaviour, LLMServer
from pipelines.providers.stt import WhisperSTT
from voice.audio import Int16Array, resample

SERVICE_ENV = {
    "VOICE_IDLE_TIMEOUT_S": "4",
    "VOICE_LLM_TIMEOUT_S": "1.5",
    "VOICE_MAX_SESSIONS": "5",
    "VOICE_MAX_MESSAGE_BYTES": "65536",
    "VOICE_LOG_LEVEL": "INFO",
}


LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def assert_one_event_per_line(log: str, forged: str) -> None:
    """`forged` (text a caller sent with line breaks in it, made to look like a log line)
    shows up escaped inside a line the service wrote, never as a line of its own."""
    lines = log.splitlines()  # CR, LF, and the Unicode separators all break a line here
    carrying = [line for line in lines if forged[:40] in line]
    assert carrying, "the forged text never reached the log"
    assert all(LOG_LINE.match(line) and not line.startswith(forged[:20])
               for line in carrying), carrying[:3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningService:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/healthz", timeout=5) as response:
            data: dict[str, Any] = json.load(response)
            return data


def start_service(tmp: Path, env: dict[str, str], name: str = "service") -> RunningService:
    port = free_port()
    log_path = tmp / f"{name}.log"
    full_env = {**os.environ, **SERVICE_ENV, **env}
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log_path.open("wb"), stderr=subprocess.STDOUT, env=full_env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"service exited early:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
                if response.status == 200:
                    return RunningService(url, process, log_path)
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"service did not become healthy:\n{log_path.read_text()}")


def start_self_realtime_service(tmp: Path, env: dict[str, str],
                                name: str = "realtime") -> RunningService:
    """A service whose realtime pipeline uses the service's own /v1/realtime endpoint
    (backed by the cascade) as its provider."""
    port = free_port()
    process_env = {**env, "VOICE_REALTIME_URL": f"ws://127.0.0.1:{port}/v1/realtime"}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys.modules[__name__], "free_port", lambda: port)
        return start_service(tmp, process_env, name=name)


def stop_service(service: RunningService) -> int:
    service.process.send_signal(signal.SIGINT)  # stop now (SIGTERM drains: test_operations)
    try:
        return service.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        service.process.kill()
        return -9


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def llm() -> AsyncIterator[LLMServer]:
    async with LLMServer() as server:
        yield server


@pytest.fixture
def fresh_llm(llm: LLMServer) -> Iterator[LLMServer]:
    """The shared LLM server with default behaviour, reset again after the test."""
    llm.behaviour = Behaviour()
    yield llm
    llm.behaviour = Behaviour()


@pytest.fixture(scope="session")
def service(llm: LLMServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    running = start_service(tmp_path_factory.mktemp("service"),
                            {"OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "test-key-123"})
    yield running
    stop_service(running)


@pytest.fixture(scope="session")
def whisper() -> WhisperSTT:
    return WhisperSTT.load("", "cpu", "int8", 2, "en")


def transcribe_back(whisper: WhisperSTT, audio: Int16Array, rate: int) -> str:
    return whisper.transcribe_thorough(resample(audio, rate, 16000)).text


def noise(seconds: float, rate: int, level: float, seed: int = 1) -> Int16Array:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(0, level, int(seconds * rate)), -32768, 32767).astype(np.int16)


async def speak(client: VoiceClient, path: str, trailing_s: float = 0.0) -> Int16Array:
    audio = load_audio(path, client.sample_rate)
    await client.stream(audio)
    if trailing_s:
        await client.stream_silence(trailing_s)
    return audio


async def converse(client: VoiceClient, path: str, timeout: float = 20.0) -> dict[str, object]:
    """Say one utterance, keep sending silence until the reply has played; return it."""
    start = len(client.record.events)
    await speak(client, path)
    async with asyncio.timeout(timeout):
        while True:
            for event in client.record.events[start:]:
                if event["type"] in ("response.done", "response.interrupted"):
                    return event
            await client.stream_silence(0.1)


async def call_record(directory: Path, session_id: str, timeout: float = 15.0
                      ) -> dict[str, Any]:
    """The call record the service wrote for `session_id` (service/call_records.py)."""
    deadline = time.monotonic() + timeout
    while (record := _read_record(directory, session_id)) is None:
        assert time.monotonic() < deadline, f"no call record for {session_id} in {directory}"
        await asyncio.sleep(0.1)
    return record


def _read_record(directory: Path, session_id: str) -> dict[str, Any] | None:
    found = list(directory.glob(f"*/{session_id}.json"))
    return dict(json.loads(found[0].read_text())) if found else None
