"""Typed events a session sends to its client (one place, no provider imports).

Each event is a frozen dataclass named in the past tense where it reports a fact;
`to_dict()` gives the JSON object of the wire contract (see docs/protocol.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class Event:
    type: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        data = {"type": self.type}
        data.update(dataclasses.asdict(self))
        return data


@dataclass(frozen=True)
class SessionCreated(Event):
    type: ClassVar[str] = "session.created"
    session_id: str
    sample_rate: int
    pipeline: str = "cascade"


@dataclass(frozen=True)
class SessionUpdated(Event):
    """The session's settings after a client's `session.update` (all of them)."""

    type: ClassVar[str] = "session.updated"
    session: dict[str, Any]


@dataclass(frozen=True)
class SpeechStarted(Event):
    type: ClassVar[str] = "speech.started"
    turn_id: int


@dataclass(frozen=True)
class SpeechStopped(Event):
    type: ClassVar[str] = "speech.stopped"
    turn_id: int


@dataclass(frozen=True)
class TranscriptFinal(Event):
    type: ClassVar[str] = "transcript.final"
    turn_id: int
    text: str
    audio_ms: int = 0  # length of the caller audio this transcript (and reply) covers


@dataclass(frozen=True)
class ResponseTextDelta(Event):
    type: ClassVar[str] = "response.text.delta"
    turn_id: int
    delta: str


@dataclass(frozen=True)
class ResponseDone(Event):
    type: ClassVar[str] = "response.done"
    turn_id: int
    text: str
    reprompt: bool = False  # `text` asked the caller to say it again (not understood)


@dataclass(frozen=True)
class ToolCalled(Event):
    """The assistant called a tool (its `arguments` as the model wrote them)."""

    type: ClassVar[str] = "tool.call"
    turn_id: int
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class ToolAnswered(Event):
    """A tool's answer as the model reads it (`ok` false: the error it reads instead)."""

    type: ClassVar[str] = "tool.result"
    turn_id: int
    call_id: str
    name: str
    ok: bool
    result: str
    ms: float


@dataclass(frozen=True)
class ResponseInterrupted(Event):
    type: ClassVar[str] = "response.interrupted"
    turn_id: int
    played_ms: int
    played_text: str
    reason: str = "barge_in"


@dataclass(frozen=True)
class TurnLatency(Event):
    type: ClassVar[str] = "turn.latency"
    turn_id: int
    stages: dict[str, float]
    stamps_ms: dict[str, float] = field(default_factory=dict)
    speculative: bool = False  # reply prepared before the turn was confirmed
    speculations_discarded: int = 0  # speculations dropped because the caller went on
    provider: str = ""  # the provider that served the turn (LLM endpoint, or realtime)
    fallback: str = ""  # why the preferred provider did not serve it ("" = it did)
    trace_id: str = ""  # the session's trace, when the service exports traces


@dataclass(frozen=True)
class TurnUsage(Event):
    """What one turn's reply used (voice/usage.py `Usage.to_dict()`), and which priced
    models did the work (`llm`, `stt`, `tts`, `realtime`; "" for a local model)."""

    type: ClassVar[str] = "turn.usage"
    turn_id: int
    usage: dict[str, Any]
    models: dict[str, str]


@dataclass(frozen=True)
class SessionUsage(Event):
    """What the whole session used, sent when the service ends it (a hang-up, the time
    limit, a drain): turns, interrupted replies and thrown-away speculations."""

    type: ClassVar[str] = "session.usage"
    usage: dict[str, Any]
    models: dict[str, str]
    seconds: float


@dataclass(frozen=True)
class ErrorOccurred(Event):
    type: ClassVar[str] = "error"
    code: str
    message: str


@dataclass(frozen=True)
class DtmfReceived(Event):
    type: ClassVar[str] = "dtmf.received"
    digit: str


@dataclass(frozen=True)
class Pong(Event):
    type: ClassVar[str] = "pong"
