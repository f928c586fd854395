"""The bundled local LLM's server (apis/openai_chat.py) as its own process, with the real
SmolLM2 model on llama.cpp, through the official `openai` client: a streamed answer
that knows a fact, a whole one, OpenAI-shaped refusals of bad requests, a client
that leaves mid-reply does not hold the model, and tool calls (apis/local_tools.py):
streamed as the API streams them, arguments that fit the tool's schema, an answer
made from the tool's result."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator

import openai
import pytest
import pytest_asyncio

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

CLOCK = {"type": "function", "function": {
    "name": "current_time", "description": "The current date and time.",
    "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}}}}
CALCULATE = {"type": "function", "function": {
    "name": "calculate", "description": "Works out an arithmetic expression exactly.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                   "required": ["expression"]}}}
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


async def test_a_question_for_a_tool_is_streamed_as_a_tool_call_and_answered_from_it(
        base_url: str) -> None:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="local", max_retries=0)
    asked = [{"role": "system", "content": "You are a helpful voice assistant."},
             {"role": "user", "content": "What time is it?"}]
    stream = await client.chat.completions.create(
        model="local", messages=asked, tools=[CLOCK, CALCULATE], stream=True)  # type: ignore[arg-type, list-item]
    parts, finish = [], None
    async for chunk in stream:
        parts += chunk.choices[0].delta.tool_calls or []
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    # as the API streams a call: its id and name first, then the arguments in pieces
    call, *more = parts
    assert call.id and call.function and call.function.name == "current_time"
    assert {part.index for part in parts} == {0} and all(not p.id for p in more)
    arguments = "".join(p.function.arguments or "" for p in parts if p.function)
    assert isinstance(json.loads(arguments), dict)
    answered = await client.chat.completions.create(model="local", max_tokens=40, tools=[CLOCK],  # type: ignore[list-item]
                                                    messages=[*asked, {  # type: ignore[list-item]
        "role": "assistant", "content": None, "tool_calls": [{
            "id": call.id, "type": "function",
            "function": {"name": "current_time", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": call.id,
         "content": "It is 15:42 on Friday, 4 December 2026 (UTC)."}])
    # after a tool result the model answers, from the result
    assert answered.choices[0].message.tool_calls is None
    assert "15:42" in (answered.choices[0].message.content or "")


async def test_a_named_tool_choice_gets_arguments_that_fit_the_schema(base_url: str) -> None:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="local", max_retries=0)
    whole = await client.chat.completions.create(
        model="local", tools=[CLOCK, CALCULATE],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "calculate"}},
        messages=[{"role": "user", "content": "What is 17 times 23?"}])
    assert whole.choices[0].finish_reason == "tool_calls"
    (call,) = whole.choices[0].message.tool_calls or []
    assert call.function.name == "calculate"  # type: ignore[union-attr]
    arguments = json.loads(call.function.arguments)  # type: ignore[union-attr]
    assert isinstance(arguments.get("expression"), str), arguments
    none = await client.chat.completions.create(
        model="local", tools=[CLOCK], tool_choice="none", messages=QUESTION, max_tokens=40)  # type: ignore[arg-type, list-item]
    assert none.choices[0].message.tool_calls is None
    assert "Paris" in (none.choices[0].message.content or "")


async def test_bad_tools_get_400s_naming_the_parameter(base_url: str) -> None:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="local", max_retries=0)
    bad: list[tuple[dict[str, object], str]] = [
        ({"tools": [{"type": "function", "function": {"name": "two words"}}]},
         "tools[0].function.name"),
        ({"tools": "current_time"}, "tools"),
        ({"tools": [CLOCK], "tool_choice": {"type": "function",
                                            "function": {"name": "launch"}}}, "tool_choice"),
    ]
    for extra, param in bad:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(model="local", messages=QUESTION,  # type: ignore[arg-type]
                                                 extra_body=extra)
        assert refused.value.body["param"] == param, refused.value.body  # type: ignore[index]
