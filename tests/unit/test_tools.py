"""Tools (pipelines/tools.py): the schema the LLM sees comes from the function; a call
never raises, whatever the model wrote; webhooks take their secrets from the
environment; and in the reply engine a tool never runs for a speculation, a slow one
gets one filler, and a barge-in cancels the tools and the follow-up."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, Literal

import numpy as np
import pytest
from aiohttp import web
from hypothesis import given, settings

from examples.tools import calculate
from pipelines.providers.models import CascadeModels
from pipelines.reply_engine import Generation, ToolsAnswered, ToolsCalled, Voiced
from pipelines.tools import (
    MAX_RESULT_CHARS,
    ToolBox,
    ToolCall,
    from_function,
    load_webhooks,
    schema_errors,
    tool,
)
from tests.strategies import cases, hostile_json
from voice.errors import ConfigError

pytestmark = pytest.mark.unit


@tool
def book_table(restaurant: str, people: int, time: Literal["lunch", "dinner"] = "dinner",
               notes: list[str] | None = None, vegetarian: bool | None = None) -> dict[str, Any]:
    """Books a table.

    Second paragraph, not part of the description.

    Args:
        restaurant: Where to book.
        people (int): How many people,
            children included.
        time: Which meal.
    """
    return {"booked": restaurant, "people": people, "time": time}


def test_the_schema_comes_from_the_type_hints_and_the_docstring() -> None:
    spec = book_table.voice_tool.spec()["function"]
    assert spec["name"] == "book_table" and spec["description"] == "Books a table."
    assert spec["parameters"] == {
        "type": "object", "additionalProperties": False, "required": ["restaurant", "people"],
        "properties": {
            "restaurant": {"type": "string", "description": "Where to book."},
            "people": {"type": "integer", "description": "How many people, children included."},
            "time": {"type": "string", "enum": ["lunch", "dinner"], "description": "Which meal."},
            "notes": {"type": "array", "items": {"type": "string"}},
            "vegetarian": {"type": "boolean"}}}
    assert book_table("Chez Nous", 2) == {"booked": "Chez Nous", "people": 2, "time": "dinner"}


def test_types_without_a_json_schema_are_refused_at_load() -> None:
    def odd(when: complex) -> str:
        return ""

    with pytest.raises(ConfigError, match="has no JSON schema"):
        from_function(odd)
    with pytest.raises(ConfigError, match="name"):
        from_function(lambda: "", name="no spaces allowed")


async def test_every_bad_call_comes_back_as_an_error_the_model_can_read() -> None:
    @tool(timeout_s=0.05)
    async def slow() -> str:
        """Slow."""
        await asyncio.sleep(5)
        return ""

    @tool
    def huge() -> str:
        """Huge."""
        return "x" * (MAX_RESULT_CHARS * 2)

    box = ToolBox([book_table.voice_tool, slow.voice_tool, huge.voice_tool])
    cases_ = {
        '{"restaurant": "A", "people": 2}': (True, '"booked": "A"'),
        '{"restaurant": "A"}': (False, "arguments.people is required"),
        '{"restaurant": "A", "people": "two"}': (False, "arguments.people must be integer"),
        '{"restaurant": "A", "people": 2, "time": "brunch"}': (False, "must be one of"),
        '{"restaurant": "A", "people": 2, "pets": 1}': (False, "pets is not a parameter"),
        '[1, 2]': (False, "must be a JSON object"),
        '{"restaurant": ': (False, "not valid JSON"),
    }
    for arguments, (ok, text) in cases_.items():
        result = await box.run(ToolCall("c1", "book_table", arguments))
        assert result.ok is ok and text in result.content, (arguments, result)
    assert "did not answer within 0.05 s" in (await box.run(ToolCall("c", "slow", ""))).content
    assert len((await box.run(ToolCall("c", "huge", "{}"))).content) == MAX_RESULT_CHARS
    unknown = await box.run(ToolCall("c", "nope\nforged", "{}"))
    assert not unknown.ok and "book_table, slow, huge" in unknown.content


@settings(database=None, deadline=None, max_examples=cases(2000))
@given(hostile_json(("restaurant", "people", "time", "notes", "vegetarian")))
def test_schema_checks_take_any_json(arguments: Any) -> None:
    errors = schema_errors(arguments, book_table.voice_tool.parameters)
    assert all(isinstance(e, str) for e in errors)
    if not errors:
        assert isinstance(arguments, dict) and isinstance(arguments["restaurant"], str)


@pytest.mark.parametrize("expression, answer", [("17 * 23", "17 * 23 = 391"),
                                                ("(2 + 3) / 4", "(2 + 3) / 4 = 1.25")])
def test_the_example_calculator(expression: str, answer: str) -> None:
    assert calculate(expression) == answer


@pytest.mark.parametrize("expression", ["__import__('os')", "2 ** 10000", "x + 1", "1" * 300])
def test_the_example_calculator_runs_nothing_but_arithmetic(expression: str) -> None:
    with pytest.raises((ValueError, SyntaxError)):
        calculate(expression)


async def test_webhooks_take_their_secrets_from_the_environment(tmp_path: Any) -> None:
    seen: list[tuple[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        seen.append((request.headers["Authorization"], await request.json()))
        if request.path == "/down":
            return web.Response(status=503, text="maintenance")
        return web.json_response({"status": "shipped"})

    app = web.Application()
    app.add_routes([web.post("/order", hook), web.post("/down", hook)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        path = tmp_path / "hooks.json"
        entry = {"description": "Order status.", "headers": {"Authorization": "Bearer $CRM"},
                 "parameters": {"type": "object", "properties": {"id": {"type": "string"}},
                                "required": ["id"]}}
        path.write_text(json.dumps({"tools": [
            {**entry, "name": "order_status", "url": f"http://127.0.0.1:{port}/order"},
            {**entry, "name": "down", "url": f"http://127.0.0.1:{port}/down"}]}))
        with pytest.raises(ConfigError, match=r"needs \$CRM"):
            load_webhooks(str(path), {})
        box = ToolBox(load_webhooks(str(path), {"CRM": "s3cret"}))
        ok = await box.run(ToolCall("1", "order_status", '{"id": "A7"}'))
        assert ok.ok and json.loads(ok.content) == {"status": "shipped"}
        down = await box.run(ToolCall("2", "down", '{"id": "A7"}'))
        assert not down.ok and "HTTP 503" in down.content
        assert seen == [("Bearer s3cret", {"id": "A7"})] * 2
        path.write_text(json.dumps({"tools": [{"name": "x", "url": "file:///etc/passwd"}]}))
        with pytest.raises(ConfigError, match="http"):
            load_webhooks(str(path), {})
    finally:
        await runner.cleanup()


class ToolThenWords:
    """Asks for `lookup` when offered tools, then answers."""

    name = "scripted"

    def __init__(self) -> None:
        self.requests: list[list[dict[str, Any]]] = []

    async def stream(self, messages: Any, tools: Any = None,
                     calls: list[ToolCall] | None = None) -> AsyncIterator[str]:
        self.requests.append(messages)
        if tools and calls is not None and not any(m["role"] == "tool" for m in messages):
            calls.append(ToolCall("call_1", "lookup", "{}"))
            return
        yield "Found it."


class Silent:
    name = "fake"
    sample_rate = 16000

    async def synthesize(self, text: str) -> np.ndarray:
        return np.full(1600, 1000, dtype=np.int16)


def generation_with(lookup: Any, hold: asyncio.Event | None = None) -> tuple[Generation,
                                                                            ToolThenWords]:
    llm = ToolThenWords()
    box = ToolBox([from_function(lookup, name="lookup")])
    models = CascadeModels(stt=None, llm=llm, tts=Silent(), tools=box)  # type: ignore[arg-type]
    return Generation(models, lambda heard: [{"role": "user", "content": "hi"}], None, 16000,
                      0.6, hold=hold, tools=box, tool_filler_s=0.05,
                      tool_filler="One moment."), llm


def outputs(generation: Generation) -> list[Any]:
    found = []
    while not generation.outbox.empty():
        found.append(generation.outbox.get_nowait())
    return found


async def test_a_speculation_runs_no_tool_until_it_is_wanted() -> None:
    ran: list[str] = []

    async def lookup() -> str:
        ran.append("ran")
        return "42"

    wanted = asyncio.Event()
    generation, _ = generation_with(lookup, hold=wanted)
    task = asyncio.create_task(generation.run())
    await asyncio.sleep(0.2)
    assert ran == []  # the model asked; the reply is not wanted yet
    wanted.set()
    await task
    assert ran == ["ran"]


async def test_a_slow_tool_gets_one_filler_and_a_barge_in_cancels_it_and_the_follow_up(
        ) -> None:
    cancelled = asyncio.Event()

    async def lookup() -> str:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    generation, llm = generation_with(lookup)
    task = asyncio.create_task(generation.run())
    await asyncio.sleep(0.4)
    task.cancel()  # the caller spoke over the filler: the reply is cut
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)
    assert cancelled.is_set()
    found = outputs(generation)
    assert [type(o) for o in found] == [ToolsCalled, Voiced]  # the filler, nothing more
    assert found[1].text == ""  # not part of the reply's words
    assert len(llm.requests) == 1  # no follow-up was asked for
    assert not any(isinstance(o, ToolsAnswered) for o in found)
