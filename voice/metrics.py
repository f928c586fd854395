"""The worker's Prometheus metrics (`GET /metrics`), fed by the sessions' own events.

Every session's events pass `ServiceMetrics.observe` (`Session.observers`), so the
counters mean exactly what a client sees: a `turn.latency` is a turn with reply audio
(its stages fill the histograms), an `error` counts by its code, a
`response.interrupted` by its reason. Gauges (open sessions by transport and pipeline,
capacity, load, draining, breaker states) are read from the service when scraped.
The registry is per service, so tests can run several in one process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from voice.events import ErrorOccurred, Event, ResponseInterrupted, TurnLatency

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# voice-to-voice budgets live around 0.2-1 s; stages are shorter
BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0,
             1.5, 2.0, 3.0, 5.0, 10.0)
BREAKER_STATES = ("closed", "half_open", "open")


@dataclass(frozen=True)
class LiveSession:
    transport: str  # ws, webrtc, sip
    pipeline: str  # cascade, realtime


@dataclass(frozen=True)
class ModelQueue:
    """One local model's inference queue, as `voice.scheduler.QueueStats` reports it."""

    name: str
    busy: float
    waiting: int
    now_wait_p90_s: float
    jobs: int = 0
    dropped: int = 0
    speculative: int = 0  # jobs run for a turn not confirmed yet


@dataclass(frozen=True)
class WorkerLoad:
    sessions: int
    capacity: int
    draining: bool
    headroom: float = 1.0  # voice.scheduler.Headroom.headroom(): 0 when no room is left
    queues: tuple[ModelQueue, ...] = ()


class ServiceMetrics:
    def __init__(self, live: Callable[[], Iterable[LiveSession]],
                 load: Callable[[], WorkerLoad],
                 breakers: Callable[[], dict[str, dict[str, object]]],
                 frames: Callable[[], dict[str, int]]) -> None:
        self.registry = CollectorRegistry()
        self.turns = Counter("voice_turns", "Turns answered with audio (turn.latency sent).",
                             ["pipeline"], registry=self.registry)
        self.stages = Histogram("voice_turn_stage_seconds",
                                "Per-stage latency of each turn, as in turn.latency.",
                                ["pipeline", "stage"], buckets=BUCKETS_S, registry=self.registry)
        self.fallbacks = Counter("voice_turn_fallbacks",
                                 "Turns served by a fallback provider.", ["pipeline"],
                                 registry=self.registry)
        self.errors = Counter("voice_errors", "Error events sent to clients, by code.",
                              ["code"], registry=self.registry)
        self.interruptions = Counter("voice_interruptions",
                                     "Replies stopped early, by reason (barge_in, "
                                     "continuation, client, announcement).", ["reason"],
                                     registry=self.registry)
        self.sessions = Counter("voice_sessions", "Sessions started.",
                                ["transport", "pipeline"], registry=self.registry)
        self.usage = Counter("voice_usage", "What ended sessions used, by kind (LLM tokens, "
                             "STT/TTS seconds, TTS characters, tool calls, realtime tokens) "
                             "and tenant (the credential that opened the session).",
                             ["kind", "tenant"], registry=self.registry)
        self.cost = Counter("voice_cost_usd", "What ended sessions cost by the price table, "
                            "in US dollars, by tenant.", ["tenant"], registry=self.registry)
        self.registry.register(_Gauges(live, load, breakers, frames))

    def session_used(self, tenant: str, usage: dict[str, Any], usd: float) -> None:
        for kind, value in usage.items():
            if not isinstance(value, bool) and value:
                self.usage.labels(kind, tenant).inc(value)
        self.cost.labels(tenant).inc(usd)

    def session_started(self, session: LiveSession) -> None:
        self.sessions.labels(session.transport, session.pipeline).inc()

    def observe(self, pipeline: str, event: Event) -> None:
        if isinstance(event, TurnLatency):
            self.turns.labels(pipeline).inc()
            for stage, ms in event.stages.items():
                self.stages.labels(pipeline, stage.removesuffix("_ms")).observe(ms / 1000)
            if event.fallback:
                self.fallbacks.labels(pipeline).inc()
        elif isinstance(event, ErrorOccurred):
            self.errors.labels(event.code).inc()
        elif isinstance(event, ResponseInterrupted):
            self.interruptions.labels(event.reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Gauges(Collector):
    """Read at scrape time: what is open now, and the worker's load."""

    def __init__(self, live: Callable[[], Iterable[LiveSession]],
                 load: Callable[[], WorkerLoad],
                 breakers: Callable[[], dict[str, dict[str, object]]],
                 frames: Callable[[], dict[str, int]]) -> None:
        self._live = live
        self._load = load
        self._breakers = breakers
        self._frames = frames

    def collect(self) -> Iterator[Metric]:
        yield self._sessions()
        load = self._load()
        yield from self._worker(load)
        yield from self._inference(load.queues)
        yield from self._breaker_metrics()
        yield self._audio_frames()

    def _sessions(self) -> Metric:
        active = GaugeMetricFamily("voice_sessions_active", "Open sessions.",
                                   labels=["transport", "pipeline"])
        counts: dict[tuple[str, str], int] = {}
        for session in self._live():
            key = (session.transport, session.pipeline)
            counts[key] = counts.get(key, 0) + 1
        for (transport, pipeline), count in sorted(counts.items()):
            active.add_metric([transport, pipeline], count)
        return active

    @staticmethod
    def _worker(load: WorkerLoad) -> Iterator[Metric]:
        yield GaugeMetricFamily("voice_capacity_sessions",
                                "Sessions this worker accepts (max_sessions).",
                                value=load.capacity)
        yield GaugeMetricFamily("voice_load_ratio", "Open sessions / capacity.",
                                value=load.sessions / max(1, load.capacity))
        yield GaugeMetricFamily("voice_draining", "1 while the worker drains (SIGTERM).",
                                value=int(load.draining))
        yield GaugeMetricFamily("voice_headroom_ratio",
                                "Room for more sessions: 1 - the busiest local model's "
                                "projected busy share over shed_busy (0: new sessions "
                                "are refused).", value=load.headroom)

    @staticmethod
    def _inference(queues: Iterable[ModelQueue]) -> Iterator[Metric]:
        """Each local model's inference queue (voice.scheduler)."""
        busy = GaugeMetricFamily("voice_inference_busy_ratio",
                                 "Share of the last 10 s a local model's thread was busy.",
                                 labels=["model"])
        waiting = GaugeMetricFamily("voice_inference_queue_jobs",
                                    "Inference jobs waiting for a local model.",
                                    labels=["model"])
        late = GaugeMetricFamily("voice_inference_wait_p90_seconds",
                                 "How long work a caller waits for (final transcripts, "
                                 "first sentences) waited for its model (p90, last 10 s).",
                                 labels=["model"])
        jobs = CounterMetricFamily("voice_inference_jobs", "Inference jobs a local model ran.",
                                   labels=["model"])
        speculative = CounterMetricFamily(
            "voice_inference_speculative_jobs", "Inference jobs a local model ran for a turn "
            "that was not confirmed yet (speculation).", labels=["model"])
        dropped = CounterMetricFamily("voice_inference_dropped",
                                      "Inference jobs dropped unrun: their caller stopped "
                                      "waiting (a speculation the caller talked over).",
                                      labels=["model"])
        for queue in queues:
            busy.add_metric([queue.name], queue.busy)
            waiting.add_metric([queue.name], queue.waiting)
            late.add_metric([queue.name], queue.now_wait_p90_s)
            jobs.add_metric([queue.name], queue.jobs)
            speculative.add_metric([queue.name], queue.speculative)
            dropped.add_metric([queue.name], queue.dropped)
        yield from (busy, waiting, late, jobs, speculative, dropped)

    def _breaker_metrics(self) -> Iterator[Metric]:
        state = GaugeMetricFamily("voice_breaker_state",
                                  "Circuit breaker state per provider (1 for the current one).",
                                  labels=["provider", "state"])
        diverted = CounterMetricFamily("voice_breaker_fallbacks",
                                     "Calls a fallback served instead of this provider.",
                                     labels=["provider"])
        for name, snapshot in self._breakers().items():
            for value in BREAKER_STATES:
                state.add_metric([name, value], int(snapshot["state"] == value))
            fallbacks = snapshot["fallbacks"]
            diverted.add_metric([name], float(fallbacks) if isinstance(fallbacks, int) else 0.0)
        yield from (state, diverted)

    def _audio_frames(self) -> Metric:
        frames = CounterMetricFamily("voice_audio_frames",
                                   "Caller audio frames dropped or concealed since start.",
                                   labels=["kind"])
        for kind, count in sorted(self._frames().items()):
            frames.add_metric([kind], count)
        return frames
