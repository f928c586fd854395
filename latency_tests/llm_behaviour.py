"""How the stand-in LLM server (latency_tests/llm_server.py) answers: the scripted
reply or responder, tool calls, pacing, and the failures tests inject."""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

Message = dict[str, Any]


@dataclass(frozen=True)
class CallTools:
    """A reply that asks for tool calls: `calls` are (name, arguments as JSON text),
    streamed in pieces as real endpoints do; `text` is said before them."""

    calls: tuple[tuple[str, str], ...]
    text: str = ""


Responder = Callable[[list[Message]], "str | CallTools"]
Chunker = Callable[[str], Sequence[str]]

MODEL_ID = "fake-llm"
_WORD = re.compile(r"^\s+|\S+\s*")


def split_words(text: str) -> list[str]:
    """One delta per word plus its following whitespace; the deltas join back to `text`."""
    return _WORD.findall(text)


def default_reply(messages: list[Message]) -> str:
    """'You said: <last user message>.'"""
    user_turns = [message for message in messages if message.get("role") == "user"]
    return f"You said: {text_of(user_turns[-1]) if user_turns else ''}."


@dataclass(frozen=True)
class ErrorStatus:
    """Answer with an OpenAI-shaped JSON error; 429 carries a Retry-After header."""

    status: int
    message: str = "Simulated failure from the fake LLM server."
    retry_after: int = 1


@dataclass(frozen=True)
class Hang:
    """Read the request, then never answer until the client or the server goes away."""


@dataclass(frozen=True)
class Drop:
    """Close the connection after `after_deltas` content deltas (mid-body if not streamed)."""

    after_deltas: int = 2


@dataclass(frozen=True)
class Garbage:
    """A 200 that is no chat completion stream: `json` (an event that is not JSON after
    one good delta), `null_delta` (chunks whose delta is null), `html` (an HTML page)."""

    kind: str = "json"


Failure = ErrorStatus | Hang | Drop | Garbage


@dataclass
class Behaviour:
    """How the server answers; tests may change any field between requests."""

    reply: str | Responder | None = None  # None: `default_reply`
    chunker: Chunker = split_words
    first_token_delay: float = 0.0  # seconds before the response head and first delta
    token_interval: float = 0.0  # seconds between content deltas
    failures: deque[Failure] = field(default_factory=deque)  # taken one per request
    always_fail: Failure | None = None  # used when `failures` is empty

    def fail_next(self, failure: Failure, count: int = 1) -> None:
        self.failures.extend([failure] * count)

    def take_failure(self) -> Failure | None:
        return self.failures.popleft() if self.failures else self.always_fail

    def deltas_for(self, messages: list[Message]) -> tuple[list[str], CallTools | None]:
        """The text deltas of the reply, and the tool calls it asks for."""
        if self.reply is None:
            reply: str | CallTools = default_reply(messages)
        else:
            reply = self.reply if isinstance(self.reply, str) else self.reply(messages)
        tools = reply if isinstance(reply, CallTools) else None
        text = reply.text if isinstance(reply, CallTools) else reply
        return [delta for delta in self.chunker(text) if delta], tools


def text_of(message: Message) -> str:
    content = message.get("content")
    if isinstance(content, list):  # content parts: keep the text ones
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""
