"""Tool requests to the local model (apis/local_tools.py): checked like the API checks
them, earlier calls shown to the model as its own words, grammars that allow only a
listed tool."""

from __future__ import annotations

from typing import Any

import pytest

from apis import local_tools
from apis.local_tools import ToolRequestError, checked_tools
from apis.openai_chat import BadRequest, checked_request

CLOCK = {"type": "function", "function": {"name": "current_time", "description": "Time.",
                                          "parameters": {"type": "object", "properties": {}}}}
NOTE = {"type": "function", "function": {"name": "add_note", "parameters": {
    "type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}}


def test_tools_and_tool_choice_are_read_as_the_api_sends_them() -> None:
    assert checked_tools({}) == ([], "none")
    functions, choice = checked_tools({"tools": [CLOCK, NOTE]})
    assert [f["name"] for f in functions] == ["current_time", "add_note"] and choice == "auto"
    assert functions[1]["description"] == ""
    named = {"type": "function", "function": {"name": "add_note"}}
    assert checked_tools({"tools": [CLOCK, NOTE], "tool_choice": named})[1] == "add_note"
    assert checked_tools({"tools": [CLOCK], "tool_choice": "required"})[1] == "required"


@pytest.mark.parametrize(("body", "param"), [
    ({"tools": {"name": "x"}}, "tools"),
    ({"tools": [CLOCK] * 129}, "tools"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0]"),
    ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "x" * 65}}]},
     "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "x", "parameters": []}}]},
     "tools[0].function.parameters"),
    ({"tools": [CLOCK], "tool_choice": "always"}, "tool_choice"),
    ({"tools": [CLOCK], "tool_choice": {"type": "function", "function": {"name": "rm"}}},
     "tool_choice"),
])
def test_bad_tools_name_the_parameter(body: dict[str, Any], param: str) -> None:
    with pytest.raises(ToolRequestError) as refused:
        checked_tools(body)
    assert refused.value.param == param
    with pytest.raises(BadRequest) as as_request:
        checked_request({"messages": [{"role": "user", "content": "hi"}], **body})
    assert as_request.value.param == param


def test_an_earlier_tool_round_reads_as_the_models_own_words() -> None:
    request = checked_request({"messages": [
        {"role": "user", "content": "Note milk and tell me the time."},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "add_note", "arguments": '{"text": "milk"}'}},
            {"id": "c2", "type": "function", "function": {"name": "current_time"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "Noted."}]})
    assert request["messages"][1] == {"role": "assistant", "content":
                                      'functions.add_note: {"text": "milk"}\n'
                                      "functions.current_time: {}"}
    assert request["messages"][2] == {"role": "tool", "content": "Noted."}
    with pytest.raises(BadRequest) as refused:
        checked_request({"messages": [{"role": "assistant", "tool_calls": [{"id": "c"}]}]})
    assert refused.value.param == "messages[0].tool_calls[0]"
    plain = local_tools.plain_history(request["messages"])
    assert plain[2] == {"role": "user", "content": "(a tool answered: Noted.)"}


def test_the_choice_grammar_allows_only_the_listed_tools() -> None:
    functions, _ = checked_tools({"tools": [CLOCK, NOTE]})
    assert local_tools.choice_grammar(functions, required=False) == \
        'root ::= "message:" | "functions." ("current_time" | "add_note") ":"'
    assert local_tools.choice_grammar(functions, required=True) == \
        'root ::= "functions." ("current_time" | "add_note") ":"'
    assert local_tools.chosen_function("functions.add_note:") == "add_note"
    assert local_tools.chosen_function("message:") is None
    listed = local_tools.with_listing([{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "hi"}], functions)
    assert listed[0]["content"].startswith("Be brief.\n\nYou can call these functions:")
    assert "functions.current_time: Time." in listed[0]["content"] and len(listed) == 2


def test_a_call_is_streamed_as_the_api_streams_one() -> None:
    chunks = local_tools.CallChunks("m")
    first, *pieces, last = (chunks.start("add_note"), chunks.arguments('{"text": '),
                            chunks.arguments('"milk"}'), chunks.finish())
    (call,) = first["choices"][0]["delta"]["tool_calls"]
    assert call["function"] == {"name": "add_note", "arguments": ""}
    assert call["id"].startswith("call_") and call["index"] == 0
    assert "".join(p["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                   for p in pieces) == '{"text": "milk"}'
    assert last["choices"][0] == {"index": 0, "finish_reason": "tool_calls", "delta": {}}
    assert len({c["id"] for c in (first, *pieces, last)}) == 1
