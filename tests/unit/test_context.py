"""The token budget of what the LLM reads (pipelines/context.py): the system prompt and
the newest turn always stay, the oldest whole turns go first, and a tool call never
loses its result. A 200-turn cascade conversation's prompt levels off."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.context import estimate_tokens, fit, keep_from, prompt_tokens
from tests.strategies import cases

pytestmark = pytest.mark.unit

SYSTEM = {"role": "system", "content": "You are a helpful voice assistant."}


def turn(n: int, words: int, tool: bool) -> list[dict[str, Any]]:
    said = [{"role": "user", "content": f"question {n} " + "word " * words}]
    if tool:
        said += [{"role": "assistant", "content": None, "tool_calls": [
                     {"id": f"c{n}", "type": "function",
                      "function": {"name": "lookup", "arguments": "{}"}}]},
                 {"role": "tool", "tool_call_id": f"c{n}", "content": "result " * words}]
    return [*said, {"role": "assistant", "content": f"answer {n} " + "word " * words}]


@settings(database=None, deadline=None, max_examples=cases(2000))
@given(st.lists(st.tuples(st.integers(0, 300), st.booleans()), min_size=1, max_size=30),
       st.integers(100, 4000), st.booleans())
def test_a_budget_keeps_whole_newest_turns(shape: list[tuple[int, bool]], budget: int,
                                           greeting: bool) -> None:
    history = [{"role": "assistant", "content": "Hello, how can I help?"}] if greeting else []
    for n, (words, tool) in enumerate(shape):
        history += turn(n, words, tool)
    history.append({"role": "user", "content": "the newest question"})
    kept = fit([SYSTEM, *history], budget)
    assert kept[0] is SYSTEM and kept[-1] == history[-1]
    rest = kept[1:]
    assert rest == history[len(history) - len(rest):]  # a suffix: nothing reordered
    assert rest[0]["role"] == "user" or len(rest) == len(history)  # whole turns only
    called = {c["id"] for m in rest for c in m.get("tool_calls") or []}
    assert all(m["tool_call_id"] in called for m in rest if m["role"] == "tool")
    if len(rest) > 1:  # more than the newest question: then within the budget
        assert prompt_tokens(kept) <= budget
    start = keep_from(history, budget - estimate_tokens(SYSTEM))
    assert history[start:] == rest


def test_a_200_turn_conversation_levels_off() -> None:
    """The cascade's way (pipelines/cascade/reply.py, pipeline.py): each turn reads the
    history within the budget, then the history forgets what is out of it."""
    budget, history, sizes = 3000, [], []
    for n in range(200):
        question = {"role": "user", "content": f"Question number {n}: what about this?"}
        prompt = fit([SYSTEM, *history, question], budget)
        sizes.append(prompt_tokens(prompt))
        history += [question, {"role": "assistant", "content": "An answer of about "
                               "thirty words, " * 5}]
        del history[:keep_from(history, budget)]
    assert max(sizes) <= budget and sizes[-1] == pytest.approx(sizes[100], rel=0.05)
    assert sizes[10] < sizes[-1]  # it did grow, until the budget
    assert len(history) < 200
