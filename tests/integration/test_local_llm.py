"""The bundled local LLM's server (apis/openai_chat.py) as its own process, with the real
SmolLM2 model on llama.cpp, through the official `openai` client: a streamed answer
that knows a fact, a whole one, OpenAI-shaped refusals of bad requests, and a client
that leaves mid-reply does not hold the model."""

from __future__ import annotations

import asyncio
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator

import openai
import pytest
import pytest_asyncio

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

QUESTION = [{"role": "system", "content": "You are a helpful assistant. Answer in one "
             "short sentence."},
            {"role": "user", "content": "What is the capital of France?"}]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def base_url() -> AsyncIterator[str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "apis.openai_chat", "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert process.stdout is not None
    lines = []
    async with asyncio.timeout(60):
        while line := (await process.stdout.readline()).decode():
            lines.append(line)
            if line.startswith("listening on "):
                break
    assert lines and lines[-1].startswith("listening on "), "".join(lines)
    try:
        yield lines[-1].split()[-1]
    finally:
        process.terminate()
        await process.wait()


async def test_a_streamed_answer_knows_the_capital_of_france(base_url: str) -> None:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="local", max_retries=0)
    started = time.monotonic()
    stream = await client.chat.completions.create(model="local", messages=QUESTION,  # type: ignore[arg-type]
                                                  stream=True, max_tokens=40)
    pieces, first = [], None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.monotonic() - started
            pieces.append(chunk.choices[0].delta.content)
    print(f"first token after {first * 1000:.0f} ms, {len(pieces)} pieces")  # type: ignore[operator]
    assert len(pieces) > 2 and "Paris" in "".join(pieces), pieces
    whole = await client.chat.completions.create(model="local", messages=QUESTION,  # type: ignore[arg-type]
                                                 max_tokens=40)
    assert "Paris" in (whole.choices[0].message.content or "")
    assert whole.choices[0].finish_reason in ("stop", "length")
    models = await client.models.list()
    assert [m.id for m in models.data] == ["SmolLM2-135M-Instruct.Q4_1"]


async def test_bad_requests_get_openai_shaped_400s(base_url: str) -> None:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="local", max_retries=0)
    for messages in ([], [{"role": "robot", "content": "hi"}]):
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(model="local", messages=messages)  # type: ignore[arg-type]
        assert "messages" in str(refused.value)
    request = urllib.request.Request(f"{base_url}/chat/completions", data=b"{not json",
                                     method="POST")
    with pytest.raises(urllib.error.HTTPError) as raw:
        await asyncio.to_thread(urllib.request.urlopen, request, None, 5)
    assert raw.value.code == 400


async def test_a_client_that_leaves_mid_reply_does_not_hold_the_model(base_url: str) -> None:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="local", max_retries=0)
    long = [{"role": "user", "content": "Write a long story about a dragon."}]
    stream = await client.chat.completions.create(model="local", messages=long,  # type: ignore[arg-type]
                                                  stream=True, max_tokens=1000)
    async for _ in stream:
        break
    await stream.close()  # gone after the first token of a 1000-token reply
    started = time.monotonic()
    whole = await client.chat.completions.create(model="local", messages=QUESTION,  # type: ignore[arg-type]
                                                 max_tokens=20)
    assert whole.choices[0].message.content
    assert time.monotonic() - started < 5  # not behind the abandoned story
