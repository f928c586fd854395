"""The fake LLM server, driven by the real `openai` client and by raw sockets over loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai import AsyncOpenAI

from latency_tests.llm_server import Behaviour, Drop, ErrorStatus, Hang, LLMServer, split_words
from latency_tests.llm_server_http import ProtocolError, RequestHead

pytestmark = pytest.mark.integration

USER_TURN: list[Any] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "what time is it"},
]
EXPECTED_ECHO = "You said: what time is it."


@pytest.fixture
async def server() -> AsyncIterator[LLMServer]:
    async with LLMServer() as running:
        yield running


@pytest.fixture
async def client(server: LLMServer) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(
        base_url=server.base_url, api_key="x", max_retries=0, timeout=10.0
    ) as llm:
        yield llm


async def stream_reply(llm: AsyncOpenAI, received: list[str] | None = None) -> str:
    """Stream one completion; each content delta is also appended to `received`."""
    deltas = received if received is not None else []
    stream = await llm.chat.completions.create(model="fake", messages=USER_TURN, stream=True)
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            deltas.append(chunk.choices[0].delta.content)
    return "".join(deltas)


async def raw_exchange(server: LLMServer, data: bytes) -> bytes:
    """Send `data` on a fresh connection and read until the server closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(5):
            return await reader.read()
    finally:
        writer.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """A minimal HTTP/1.1 response reader (Content-Length or chunked bodies)."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status_line, *lines = head[:-4].split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    if headers.get("transfer-encoding") != "chunked":
        return (
            int(status_line.split()[1]),
            headers,
            await reader.readexactly(int(headers["content-length"])),
        )
    body = b""
    while size := int((await reader.readuntil(b"\r\n"))[:-2], 16):
        body += (await reader.readexactly(size + 2))[:-2]
    await reader.readexactly(2)
    return int(status_line.split()[1]), headers, body


async def test_streamed_reply_is_the_default_echo_word_by_word(client: AsyncOpenAI) -> None:
    deltas: list[str] = []
    text = await stream_reply(client, deltas)
    assert text == EXPECTED_ECHO
    assert deltas == ["You ", "said: ", "what ", "time ", "is ", "it."]


async def test_stream_chunks_follow_openai_order(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(model="fake", messages=USER_TURN, stream=True)
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(chunk.choices[0].finish_reason is None for chunk in chunks[:-1])
    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk.id for chunk in chunks}) == 1


async def test_fixed_and_callable_replies(server: LLMServer, client: AsyncOpenAI) -> None:
    server.behaviour.reply = "It is noon."
    assert await stream_reply(client) == "It is noon."
    server.behaviour.reply = lambda messages: (
        f"{len(messages)} messages, last {messages[-1]['role']}"
    )
    assert await stream_reply(client) == "2 messages, last user"


async def test_custom_chunker_and_pacing_keep_the_text(
    server: LLMServer, client: AsyncOpenAI
) -> None:
    server.behaviour = Behaviour(
        reply="abc", chunker=list, first_token_delay=0.01, token_interval=0.01
    )
    deltas: list[str] = []
    assert await stream_reply(client, deltas) == "abc"
    assert deltas == ["a", "b", "c"]


async def test_requests_are_recorded(server: LLMServer, client: AsyncOpenAI) -> None:
    await stream_reply(client)
    await client.chat.completions.create(
        model="other", messages=[{"role": "user", "content": "second"}]
    )
    assert [request["messages"] for request in server.requests] == [
        USER_TURN,
        [{"role": "user", "content": "second"}],
    ]
    assert [request["model"] for request in server.requests] == ["fake", "other"]
    assert server.requests[0]["stream"] is True


async def test_non_streaming_completion_with_usage(client: AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(model="fake", messages=USER_TURN)
    assert completion.object == "chat.completion"
    assert completion.model == "fake"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == EXPECTED_ECHO
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == len(EXPECTED_ECHO.split())
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


async def test_stream_options_include_usage(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="fake", messages=USER_TURN, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(EXPECTED_ECHO.split())


async def test_models_are_listed(client: AsyncOpenAI) -> None:
    models = await client.models.list()
    assert [model.id for model in models.data] == ["fake-llm"]


async def test_status_500_then_recovers(server: LLMServer, client: AsyncOpenAI) -> None:
    server.behaviour.fail_next(ErrorStatus(500, message="boom"))
    with pytest.raises(openai.InternalServerError) as raised:
        await stream_reply(client)
    assert raised.value.status_code == 500
    assert "boom" in raised.value.message
    assert await stream_reply(client) == EXPECTED_ECHO


async def test_status_429_carries_retry_after(server: LLMServer, client: AsyncOpenAI) -> None:
    server.behaviour.fail_next(ErrorStatus(429, retry_after=7), count=2)
    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as raised:
            await client.chat.completions.create(model="fake", messages=USER_TURN)
        assert raised.value.response.headers["retry-after"] == "7"
        assert raised.value.code == "rate_limit_exceeded"
    assert await stream_reply(client) == EXPECTED_ECHO


async def test_always_fail_until_cleared(server: LLMServer, client: AsyncOpenAI) -> None:
    server.behaviour.always_fail = ErrorStatus(503)
    for _ in range(3):
        with pytest.raises(openai.InternalServerError):
            await stream_reply(client)
    server.behaviour.always_fail = None
    assert await stream_reply(client) == EXPECTED_ECHO


async def test_hang_is_cut_by_client_timeout(server: LLMServer, client: AsyncOpenAI) -> None:
    server.behaviour.fail_next(Hang())
    with pytest.raises(openai.APITimeoutError):
        await stream_reply(client.with_options(timeout=0.5))
    assert await stream_reply(client) == EXPECTED_ECHO
    assert len(server.requests) == 2


async def test_hang_does_not_block_other_connections_or_stop(
    server: LLMServer, client: AsyncOpenAI
) -> None:
    server.behaviour.fail_next(Hang())

    async def hanging_request() -> None:
        with pytest.raises(openai.APIConnectionError):  # cut by server.stop() below
            await stream_reply(client)

    async with asyncio.TaskGroup() as group:
        group.create_task(hanging_request(), name="hanging-request")
        async with asyncio.timeout(5):
            await server.wait_for_requests(1)
        async with AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0) as other:
            assert await stream_reply(other) == EXPECTED_ECHO
        async with asyncio.timeout(5):
            await server.stop()


async def test_drop_mid_stream_is_a_client_error(server: LLMServer, client: AsyncOpenAI) -> None:
    server.behaviour.reply = "one two three four five"
    server.behaviour.fail_next(Drop(after_deltas=2))
    received: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        await stream_reply(client, received)
    assert received == ["one ", "two "]
    assert await stream_reply(client) == "one two three four five"


async def test_drop_without_streaming_is_a_client_error(
    server: LLMServer, client: AsyncOpenAI
) -> None:
    server.behaviour.fail_next(Drop())
    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(model="fake", messages=USER_TURN)


async def test_connections_are_kept_alive(server: LLMServer, client: AsyncOpenAI) -> None:
    for _ in range(3):
        assert await stream_reply(client) == EXPECTED_ECHO
    await client.chat.completions.create(model="fake", messages=USER_TURN)
    assert server.connections_accepted == 1


async def test_garbage_gets_400_and_server_keeps_serving(
    server: LLMServer, client: AsyncOpenAI
) -> None:
    answer = await raw_exchange(server, b"hello\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert set(json.loads(body)["error"]) >= {"message", "type", "code"}
    assert await stream_reply(client) == EXPECTED_ECHO


async def test_bad_json_and_unknown_path_keep_the_connection(server: LLMServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    bad_body = b"{not json"
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(bad_body), bad_body)
    )
    writer.write(b"GET /v1/nothing HTTP/1.1\r\nHost: x\r\n\r\n")
    writer.write(b"DELETE /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        async with asyncio.timeout(5):
            statuses = [await read_response(reader) for _ in range(3)]
    finally:
        writer.close()
    assert [status for status, _, _ in statuses] == [400, 404, 405]
    assert json.loads(statuses[1][2])["error"]["code"] == "unknown_url"
    assert statuses[2][1]["allow"] == "GET"
    assert server.requests == []


async def test_http_1_0_stream_is_close_delimited(server: LLMServer) -> None:
    body = json.dumps({"model": "fake", "messages": USER_TURN, "stream": True}).encode()
    answer = await raw_exchange(
        server,
        b"POST /v1/chat/completions HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body),
    )
    head, _, events = answer.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    assert b"transfer-encoding" not in head.lower()
    assert events.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize(
    "raw",
    [
        b"hello\r\n\r\n",
        b"GET /v1/models HTTP/2.0\r\nHost: x\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
        b"POST /v1/models HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /v1/models HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\n",
        b"POST /v1/models HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n",
        b"POST /v1/models HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
    ],
)
def test_malformed_heads_raise_protocol_error(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        RequestHead.parse(raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_request_head_parse_fails_only_with_protocol_error(raw: bytes) -> None:
    try:
        RequestHead.parse(raw + b"\r\n\r\n")
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_split_words_round_trips(text: str) -> None:
    deltas = split_words(text)
    assert "".join(deltas) == text
    assert all(len(delta.split()) <= 1 for delta in deltas)
