"""OpenTelemetry traces of sessions and turns, exported over OTLP/HTTP when configured.

One trace per session: a `session` span from its start to its end, and under it one
`turn` span per answered turn, from the end of the caller's speech to the first reply
audio sent (the server's voice-to-voice), with a child span per stage of the turn's
critical path as `turn.latency` measures it (endpointing, stt, tool, llm, first_text,
tts, transport), laid end to end. The spans are made from the turn's own `turn.latency`
event, at the moment it is sent, so tracing adds no work to the audio path; the stage
spans carry the measured durations exactly, the wall-clock placement is as the event's
send time gives it.

The session's trace id goes into its `turn.latency` events (`trace_id`, which the
session stamps) and into one log line when the session opens, so a slow turn reported
by a client can be followed to the server's spans.

Configured with `--otlp-endpoint` (or the standard `OTEL_EXPORTER_OTLP_ENDPOINT` /
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); spans go out in batches from the SDK's own thread
(`OTEL_BSP_SCHEDULE_DELAY`, default 5 s). Without an endpoint nothing is made.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from voice.events import Event, TurnLatency

log = logging.getLogger(__name__)

SERVICE_NAME = "voice-assistant"
STAGE_ORDER = ("endpointing_ms", "stt_ms", "tool_ms", "llm_ms", "first_text_ms", "tts_ms",
               "transport_ms")


def endpoint_from(settings_endpoint: str) -> str:
    """The OTLP/HTTP traces URL: the setting, else the standard environment."""
    if settings_endpoint:
        base = settings_endpoint
    elif os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
    else:
        base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    if not base:
        return ""
    return base if base.rstrip("/").endswith("/v1/traces") else base.rstrip("/") + "/v1/traces"


class Tracing:
    """The service's tracer; `session()` gives one session's tracer."""

    def __init__(self, provider: Any) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer("voice.service")

    @classmethod
    def to_otlp(cls, endpoint: str) -> Tracing:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        tracing = cls.with_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        log.info("traces: sessions and turns are exported over OTLP/HTTP to %s", endpoint)
        return tracing

    @classmethod
    def with_processor(cls, processor: Any) -> Tracing:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider

        provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
        provider.add_span_processor(processor)
        return cls(provider)

    def session(self, session_id: str, transport: str, pipeline: str) -> SessionTrace:
        return SessionTrace(self._tracer, session_id, transport, pipeline)

    def shutdown(self) -> None:
        self._provider.shutdown()  # flushes what is left


class SessionTrace:
    """One session's spans, made from its events (`observe` is a session observer)."""

    def __init__(self, tracer: Any, session_id: str, transport: str, pipeline: str) -> None:
        from opentelemetry import trace

        self._tracer = tracer
        self._span = tracer.start_span("session", attributes={
            "voice.session_id": session_id, "voice.transport": transport,
            "voice.pipeline": pipeline})
        self._context = trace.set_span_in_context(self._span)
        self.trace_id = f"{self._span.get_span_context().trace_id:032x}"

    def observe(self, event: Event) -> None:
        if isinstance(event, TurnLatency):
            self.turn(event, time.time_ns())

    def turn(self, event: TurnLatency, sent_ns: int) -> None:
        """The turn span and its stage spans, ending at `sent_ns` (wall clock, ns)."""
        from opentelemetry import trace

        stages = event.stages
        total_ns = int(stages.get("voice_to_voice_ms", 0.0) * 1e6)
        start = sent_ns - total_ns
        attributes: dict[str, Any] = {"voice.turn_id": event.turn_id,
                                      "voice.speculative": event.speculative,
                                      "voice.provider": event.provider}
        if event.fallback:
            attributes["voice.fallback"] = event.fallback
        turn = self._tracer.start_span("turn", context=self._context, start_time=start,
                                       attributes=attributes)
        inside = trace.set_span_in_context(turn)
        at = start
        for name in STAGE_ORDER:
            if name not in stages:
                continue
            length = int(stages[name] * 1e6)
            span = self._tracer.start_span(name.removesuffix("_ms"), context=inside,
                                           start_time=at)
            span.end(end_time=at + length)
            at += length
        turn.end(end_time=max(at, sent_ns))

    def end(self, reason: str) -> None:
        self._span.set_attribute("voice.end_reason", reason)
        self._span.end()
