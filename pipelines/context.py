"""How much of a conversation the LLM reads: a token budget (`llm_history_tokens`).

A long call must not send an ever longer prompt: past the budget, the oldest turns are
left out. A *turn* is a user message and everything after it up to the next user
message, so an assistant's tool calls always stay with their results (an API refuses
a tool result whose call is gone). The system prompt always stays, and so does the
newest turn, even alone over the budget: the caller's question is never dropped.

Tokens are estimated at four characters each (plus a few per message), which is close
for English with the common tokenizers and needs none of them.
"""

from __future__ import annotations

import json
from typing import Any

Message = dict[str, Any]
CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD = 4  # role and separators


def estimate_tokens(message: Message) -> int:
    size = len(str(message.get("content") or ""))
    if message.get("tool_calls"):
        size += len(json.dumps(message["tool_calls"]))
    return MESSAGE_OVERHEAD + size // CHARS_PER_TOKEN


def turn_starts(messages: list[Message]) -> list[int]:
    """Where each turn begins: the indices of the user messages."""
    return [i for i, m in enumerate(messages) if m.get("role") == "user"]


def keep_from(history: list[Message], budget: int) -> int:
    """The index in `history` (no system prompt) from which the newest whole turns fit
    in `budget` tokens; the newest turn is kept whatever its size."""
    cuts = sorted({0, *turn_starts(history)})  # the start, and where each turn begins
    keep, total = len(history), 0
    for cut in reversed(cuts):
        total += sum(estimate_tokens(m) for m in history[cut:keep])
        if total > budget and keep < len(history):
            break
        keep = cut
    return keep


def fit(messages: list[Message], budget: int) -> list[Message]:
    """`messages` (the system prompts first, then the conversation) within `budget`
    tokens: the system prompts and the newest whole turns."""
    head = 0
    while head < len(messages) and messages[head].get("role") in ("system", "developer"):
        head += 1
    system, history = messages[:head], messages[head:]
    left = budget - sum(estimate_tokens(m) for m in system)
    return [*system, *history[keep_from(history, max(0, left)):]]


def prompt_tokens(messages: list[Message]) -> int:
    return sum(estimate_tokens(m) for m in messages)
