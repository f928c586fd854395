"""Traces (service/tracing.py) with the SDK's in-memory exporter: a session span, a turn
span under it lasting the server's voice-to-voice, and a span per stage under the turn,
laid end to end with the measured durations; the session stamps its trace id into its
turn.latency events."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service.tracing import Tracing, endpoint_from
from voice.clock import MONOTONIC
from voice.events import TurnLatency
from voice.session import Session

pytestmark = pytest.mark.unit

STAGES = {"endpointing_ms": 200.0, "stt_ms": 30.0, "tool_ms": 60.0, "llm_ms": 40.0,
          "first_text_ms": 5.0, "tts_ms": 80.0, "transport_ms": 2.0,
          "voice_to_voice_ms": 417.0}


def test_a_turn_span_holds_its_stages_under_the_session_span() -> None:
    exported = InMemorySpanExporter()
    tracing = Tracing.with_processor(SimpleSpanProcessor(exported))
    session = tracing.session("sess_1", "ws", "cascade")
    sent_ns = 1_800_000_000_000_000_000
    session.turn(TurnLatency(turn_id=1, stages=STAGES, provider="llm-x"), sent_ns)
    session.end("the caller hung up")
    spans = {span.name: span for span in exported.get_finished_spans()}
    assert set(spans) == {"session", "turn", "endpointing", "stt", "tool", "llm",
                          "first_text", "tts", "transport"}
    root, turn = spans["session"], spans["turn"]
    assert root.parent is None and turn.parent.span_id == root.context.span_id  # type: ignore[union-attr]
    assert f"{root.context.trace_id:032x}" == session.trace_id
    assert turn.end_time == sent_ns and turn.start_time == sent_ns - 417_000_000
    at = turn.start_time
    for name in ("endpointing", "stt", "tool", "llm", "first_text", "tts", "transport"):
        span = spans[name]
        assert span.parent.span_id == turn.context.span_id  # type: ignore[union-attr]
        assert span.start_time == at
        assert span.end_time - span.start_time == int(STAGES[f"{name}_ms"] * 1e6)  # type: ignore[operator]
        at = span.end_time
    assert turn.attributes["voice.turn_id"] == 1  # type: ignore[index]
    assert root.attributes["voice.end_reason"] == "the caller hung up"  # type: ignore[index]


async def test_a_session_stamps_its_trace_id_into_turn_latency() -> None:
    sent: list[object] = []

    async def send(event: object) -> None:
        sent.append(event)

    session = Session(16000, send, None, MONOTONIC, 200)  # type: ignore[arg-type]
    session.trace_id = "ab" * 16
    session.emit(TurnLatency(turn_id=1, stages={}))
    await session.flush_events()
    assert sent[0].trace_id == "ab" * 16  # type: ignore[attr-defined]


def test_the_endpoint_comes_from_the_setting_or_the_standard_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert endpoint_from("") == ""
    assert endpoint_from("http://c:4318") == "http://c:4318/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318/")
    assert endpoint_from("") == "http://env:4318/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:4318/x")
    assert endpoint_from("") == "http://t:4318/x"
