"""The local chat server's request checks (apis/openai_chat.py): any JSON body gives
the generation arguments or a `BadRequest` naming the parameter, never another error."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apis.openai_chat import MAX_TOKENS, BadRequest, checked_request
from tests.strategies import cases, hostile_json

pytestmark = pytest.mark.unit

KEYS = ("messages", "role", "content", "text", "type", "max_tokens", "max_completion_tokens",
        "temperature", "stream", "model", "tools", "tool_choice", "tool_calls", "function",
        "name", "arguments", "parameters")


def test_a_plain_request_is_passed_on() -> None:
    args = checked_request({"model": "x", "stream": True, "max_tokens": 50, "messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text",
                                                                        "text": "there"}]}]})
    assert args == {"messages": [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "Hi there"}],
                    "max_tokens": 50, "temperature": 0.0, "stream": True,
                    "tools": [], "tool_choice": "none"}
    assert checked_request({"messages": [{"role": "user", "content": "x"}],
                            "max_tokens": 10**9})["max_tokens"] == MAX_TOKENS


@pytest.mark.parametrize("body, param", [
    ({}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [1]}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": True}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": float("nan")},
     "temperature"),
    ({"messages": [{"role": "user", "content": "x" * 200_001}]}, "messages"),
])
def test_bad_requests_name_the_parameter(body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as refused:
        checked_request(body)
    assert refused.value.param == param


@settings(database=None, deadline=None, max_examples=cases(2000))
@given(st.one_of(hostile_json(KEYS), st.fixed_dictionaries(
    {"messages": st.lists(hostile_json(KEYS), max_size=4)},
    optional={"max_tokens": hostile_json(), "temperature": hostile_json(),
              "tools": st.lists(hostile_json(KEYS), max_size=3),
              "tool_choice": hostile_json(KEYS)})))
def test_any_json_body_is_checked_without_surprises(body: Any) -> None:
    try:
        args = checked_request(body)
    except BadRequest:
        return
    assert all(isinstance(m["content"], str) for m in args["messages"])
    assert 1 <= args["max_tokens"] <= MAX_TOKENS and 0 <= args["temperature"] <= 2
    names = {f["name"] for f in args["tools"]}
    assert args["tool_choice"] in ("none", "auto", "required") or args["tool_choice"] in names
