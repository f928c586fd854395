"""The worker's inference queues (voice/scheduler.py): most urgent job first, a
speculation that is confirmed moves up, a cancelled job never runs, and the queue's
own figures (busy share, waits) feed the headroom that admission reads."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from voice.admission import Admission, Refused
from voice.scheduler import DEMAND, Demand, Headroom, InferenceQueue, QueueStats, Urgency

pytestmark = pytest.mark.unit


class Gate:
    """A first job that holds the queue's thread until opened, so that the jobs
    behind it queue up and their order can be seen."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def hold(self) -> str:
        self.entered.set()
        assert self.opened.wait(5)
        return "gate"


async def submit(queue: InferenceQueue, order: list[str], label: str,
                 demand: Demand) -> str:
    DEMAND.set(demand)  # this task's own context

    def job(audio: np.ndarray) -> str:
        order.append(label)
        return label

    # audio arguments as the models get them: jobs of different lengths are never
    # compared element by element (a cancelled job is found by identity)
    return await queue.run(job, np.zeros(1600 * (len(order) + len(label)), np.int16))


async def blocked_queue() -> tuple[InferenceQueue, Gate, asyncio.Task[str]]:
    queue, gate = InferenceQueue("test"), Gate()
    first = asyncio.create_task(queue.run(gate.hold))
    await asyncio.to_thread(gate.entered.wait, 5)
    return queue, gate, first


async def test_urgent_work_runs_first_and_equal_urgency_in_order() -> None:
    queue, gate, first = await blocked_queue()
    order: list[str] = []
    speculation = asyncio.Event()
    jobs = [asyncio.create_task(submit(queue, order, label, demand)) for label, demand in [
        ("speculative", Demand("a", wanted=speculation)),
        ("later sentence", Demand("b", later=True)),
        ("final transcript", Demand("c")),
        ("first sentence", Demand("d")),
    ]]
    await asyncio.sleep(0.05)
    assert queue.stats().waiting == {"NOW": 2, "SOON": 1, "SPECULATIVE": 1}
    gate.opened.set()
    assert await asyncio.gather(first, *jobs) == [
        "gate", "speculative", "later sentence", "final transcript", "first sentence"]
    assert order == ["final transcript", "first sentence", "later sentence", "speculative"]
    queue.close()


async def test_a_later_sentence_due_goes_before_first_sentences() -> None:
    """A reply whose audio has run out is not starved by other sessions' first
    sentences: once due, its next sentence is urgent, and urgent work runs in the
    order it was needed."""
    queue, gate, first = await blocked_queue()
    order: list[str] = []
    now = time.monotonic()
    jobs = [asyncio.create_task(submit(queue, order, label, demand)) for label, demand in [
        ("due in a minute", Demand("a", later=True, due=now + 60)),
        ("first sentence", Demand("b")),
        ("due now", Demand("c", later=True, due=now - 0.1)),
        ("another first sentence", Demand("d")),
    ]]
    await asyncio.sleep(0.05)
    assert queue.stats().waiting == {"NOW": 3, "SOON": 1, "SPECULATIVE": 0}
    gate.opened.set()
    await asyncio.gather(first, *jobs)
    assert order == ["due now", "first sentence", "another first sentence",
                     "due in a minute"]
    queue.close()


async def test_a_speculation_confirmed_while_it_waits_moves_up() -> None:
    queue, gate, first = await blocked_queue()
    order: list[str] = []
    confirmed = asyncio.Event()
    jobs = [asyncio.create_task(submit(queue, order, "later", Demand("a", later=True))),
            asyncio.create_task(submit(queue, order, "speculation",
                                       Demand("b", wanted=confirmed)))]
    await asyncio.sleep(0.05)
    confirmed.set()  # the turn ended as the speculation guessed
    gate.opened.set()
    await asyncio.gather(first, *jobs)
    assert order == ["speculation", "later"]
    queue.close()


async def test_a_cancelled_job_leaves_the_queue_unrun() -> None:
    queue, gate, first = await blocked_queue()
    order: list[str] = []
    stale = asyncio.create_task(submit(queue, order, "stale", Demand("a")))
    fresh = asyncio.create_task(submit(queue, order, "fresh", Demand("a")))
    await asyncio.sleep(0.05)
    stale.cancel()  # the caller spoke again: that speculation is thrown away
    await asyncio.sleep(0.05)
    assert sum(queue.stats().waiting.values()) == 1
    gate.opened.set()
    await asyncio.gather(first, fresh)
    assert order == ["fresh"] and queue.stats().dropped == 1
    with pytest.raises(asyncio.CancelledError):
        await stale
    queue.close()


async def test_a_failing_job_raises_in_its_caller_and_the_queue_goes_on() -> None:
    queue = InferenceQueue("test")

    def broken() -> None:
        raise ValueError("model exploded")

    with pytest.raises(ValueError, match="model exploded"):
        await queue.run(broken)
    assert await queue.run(lambda: 42) == 42
    queue.close()


def test_demand_urgency() -> None:
    waiting = asyncio.Event()
    assert Demand().urgency() is Urgency.NOW
    assert Demand(later=True).urgency() is Urgency.SOON
    assert Demand(wanted=waiting, later=True).urgency() is Urgency.SPECULATIVE
    waiting.set()
    assert Demand(wanted=waiting).urgency() is Urgency.NOW
    assert Demand(later=True, due=100.0).urgency(now=90.0) is Urgency.SOON
    assert Demand(later=True, due=100.0).urgency(now=100.0) is Urgency.NOW


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_busy_share_and_waits_are_measured_over_the_window() -> None:
    clock = FakeTime()
    queue = InferenceQueue("stt", clock=clock)

    def work(seconds: float) -> None:
        clock.now += seconds

    for owner in ("s1", "s2"):
        DEMAND.set(Demand(owner))
        await queue.run(work, 2.0)  # 4 s of work in 4 s: busy all along
    stats = queue.stats()
    assert stats.busy == pytest.approx(1.0) and stats.sessions == 2 and stats.jobs == 2
    clock.now += 4.0  # then idle: 4 of the last 8 s busy
    assert queue.stats().busy == pytest.approx(0.5)
    clock.now += 20.0  # the window has moved past it all
    assert queue.stats().busy == 0.0
    queue.close()


def stats(busy: float, sessions: int, wait_s: float = 0.0) -> QueueStats:
    return QueueStats("tts", busy, {}, wait_s, sessions, 0, 0, 0)


class FixedQueue(InferenceQueue):
    def __init__(self, figures: QueueStats) -> None:
        super().__init__(figures.name)
        self.figures = figures

    def stats(self) -> QueueStats:
        return self.figures


def test_headroom_projects_the_busy_share_to_one_more_session() -> None:
    queue = FixedQueue(stats(busy=0.6, sessions=10))
    headroom = Headroom([queue], sessions=lambda: 10, max_busy=0.85)
    assert headroom.refusal() is None  # 0.6 * 11 / 10 = 0.66
    assert headroom.headroom() == pytest.approx(1 - 0.66 / 0.85)
    headroom = Headroom([queue], sessions=lambda: 14, max_busy=0.85)
    why = headroom.refusal()  # 0.6 * 15 / 10 = 0.9: four sessions have not talked yet
    assert why is not None and "90% busy" in why and headroom.headroom() == 0.0
    quiet = Headroom([FixedQueue(stats(busy=0.1, sessions=1))], sessions=lambda: 50)
    assert quiet.refusal() is None  # a few talkers among many quiet sessions: room


def test_headroom_refuses_when_urgent_work_is_already_late() -> None:
    late = FixedQueue(stats(busy=0.3, sessions=10, wait_s=0.45))
    why = Headroom([late], sessions=lambda: 10, max_wait_s=0.3).refusal()
    assert why is not None and "450 ms" in why
    assert Headroom([late], sessions=lambda: 10, max_wait_s=0).refusal() is None  # off


def test_admission_refuses_with_busy_when_there_is_no_headroom() -> None:
    pressure: list[str | None] = [None]
    admission = Admission(max_sessions=100, pressure=lambda: pressure[0])
    ticket = admission.take("10.0.0.1")
    assert not isinstance(ticket, Refused)
    pressure[0] = "tts would be 90% busy"
    refused = admission.take("10.0.0.2")
    assert isinstance(refused, Refused) and refused.code == "busy"
    assert "tts would be 90% busy" in refused.message and admission.open == 1
    ticket.release()


async def test_waiting_jobs_of_one_batch_key_and_urgency_run_as_one_call() -> None:
    queue, gate, first = await blocked_queue()
    calls: list[list[str]] = []

    def batch(items: list[str]) -> list[str]:
        calls.append(items)
        return [item.upper() for item in items]

    async def ask(item: str, key: int, demand: Demand) -> str:
        DEMAND.set(demand)
        return await queue.run_batched(batch, item, key=key)

    speculation = asyncio.Event()
    jobs = [asyncio.create_task(ask(item, key, demand)) for item, key, demand in [
        ("a", 1, Demand("s1")), ("b", 1, Demand("s2")), ("long", 2, Demand("s3")),
        ("guess", 1, Demand("s4", wanted=speculation)), ("c", 1, Demand("s5")),
        ("d", 1, Demand("s6")), ("e", 1, Demand("s7"))]]
    await asyncio.sleep(0.05)
    gate.opened.set()
    assert await asyncio.gather(*jobs) == ["A", "B", "LONG", "GUESS", "C", "D", "E"]
    await first
    # at most four at once, never across keys, never a speculation with urgent work
    assert calls == [["a", "b", "c", "d"], ["long"], ["e"], ["guess"]]
    assert queue.stats().jobs == 8
    queue.close()


async def test_a_failing_batch_fails_each_of_its_jobs() -> None:
    queue, gate, first = await blocked_queue()

    def batch(items: list[int]) -> list[int]:
        raise RuntimeError("out of memory")

    jobs = [asyncio.create_task(queue.run_batched(batch, n, key=0)) for n in range(3)]
    await asyncio.sleep(0.05)
    gate.opened.set()
    results = await asyncio.gather(*jobs, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) and "out of memory" in str(r) for r in results)
    assert await first == "gate"
    queue.close()


def test_readyz_fails_with_the_reason_when_there_is_no_headroom() -> None:
    from service.health import readiness
    from voice.metrics import WorkerLoad

    pressure: list[str | None] = ["stt is running late: urgent jobs waited 450 ms (p90)"]
    admission = Admission(max_sessions=100, pressure=lambda: pressure[0])
    ready, body = readiness(WorkerLoad(12, 100, False, headroom=0.0), admission, None)
    assert not ready and body["headroom"] == 0.0
    assert "no headroom: stt is running late" in str(body["reason"])
    pressure[0] = None
    ready, body = readiness(WorkerLoad(12, 100, False, headroom=0.4), admission, None)
    assert ready and body["reason"] == "" and body["headroom"] == 0.4



def test_metrics_show_the_headroom_and_each_models_queue() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from voice.metrics import ModelQueue, ServiceMetrics, WorkerLoad

    load = WorkerLoad(7, 100, False, headroom=0.25, queues=(
        ModelQueue("stt", 0.4, 1, 0.02, jobs=120, dropped=3),
        ModelQueue("tts", 0.8, 2, 0.15, jobs=240, dropped=0)))
    metrics = ServiceMetrics(lambda: [], lambda: load, lambda: {}, lambda: {})
    found = {(sample.name, sample.labels.get("model")): sample.value
             for family in text_string_to_metric_families(metrics.render().decode())
             for sample in family.samples}
    assert found[("voice_headroom_ratio", None)] == 0.25
    assert found[("voice_inference_busy_ratio", "tts")] == 0.8
    assert found[("voice_inference_queue_jobs", "tts")] == 2
    assert found[("voice_inference_wait_p90_seconds", "stt")] == 0.02
    assert found[("voice_inference_jobs_total", "stt")] == 120
    assert found[("voice_inference_dropped_total", "stt")] == 3
    assert found[("voice_load_ratio", None)] == 0.07


def test_a_worker_without_headroom_refuses_every_kind_of_session_with_503() -> None:
    """The service's own wiring: a model whose queue is 95% busy (the real Headroom
    and Admission read it) refuses /ws, /rtc and /v1/realtime handshakes with 503 and
    Retry-After, fails /readyz with the reason, and shows 0 headroom in /metrics."""
    from types import SimpleNamespace

    from websockets.datastructures import Headers

    from pipelines.providers.models import CascadeModels
    from service.server import Service
    from voice.settings import Settings

    busy = SimpleNamespace(name="tts", queue=FixedQueue(stats(busy=0.95, sessions=1)))
    idle = SimpleNamespace(name="stt", queue=FixedQueue(QueueStats("stt", 0, {}, 0, 0, 0, 0, 0)))
    service = Service(Settings(), CascadeModels(stt=idle, llm=idle, tts=busy))
    class Caller:  # a connection as the handshake sees it
        remote_address = ("10.0.0.1", 5555)

    caller = Caller()
    for path in ("/ws", "/rtc", "/v1/realtime"):
        request = SimpleNamespace(path=path, headers=Headers())
        response = service.process_request(caller, request)  # type: ignore[arg-type]
        assert response is not None and response.status_code == 503, path
        assert response.headers["Retry-After"] == "5"
        assert b"no headroom: tts would be 95% busy" in response.body
    ready = service.process_request(caller, SimpleNamespace(path="/readyz"))  # type: ignore[arg-type]
    assert ready is not None and ready.status_code == 503 and b"no headroom" in ready.body
    assert b"voice_headroom_ratio 0.0" in service.metrics.render()
    busy.queue.figures = stats(busy=0.1, sessions=1)  # the load passed
    request = SimpleNamespace(path="/ws", headers=Headers())
    assert service.process_request(caller, request) is None  # type: ignore[arg-type]


def test_realtime_api_clients_count_among_the_sessions_that_share_the_models() -> None:
    """Clients of /v1/realtime use the same Whisper and Piper as callers' sessions and
    hold a ticket of the same admission (service.route): a worker whose models are
    loaded by them refuses a caller the same way, and another /v1/realtime client too."""
    from types import SimpleNamespace

    from websockets.datastructures import Headers

    from pipelines.providers.models import CascadeModels
    from service.server import Service
    from voice.admission import Ticket
    from voice.settings import Settings

    tts = SimpleNamespace(name="tts", queue=FixedQueue(stats(busy=0.6, sessions=10)))
    stt = SimpleNamespace(name="stt", queue=FixedQueue(QueueStats("stt", 0, {}, 0, 0, 0, 0, 0)))
    service = Service(Settings(), CascadeModels(stt=stt, llm=stt, tts=tts))

    class Caller:
        remote_address = ("10.0.0.1", 5555)

    def refused(path: str) -> bool:
        request = SimpleNamespace(path=path, headers=Headers())
        return service.process_request(Caller(), request) is not None  # type: ignore[arg-type]

    assert not refused("/ws") and not refused("/v1/realtime")  # 0.6 x 1 / 10: room
    tickets = [service.admission.take(f"10.0.1.{n}") for n in range(14)]  # 14 realtime
    assert all(isinstance(t, Ticket) for t in tickets)  # clients: 0.6 x 15 / 10 = 0.9
    assert refused("/ws") and refused("/v1/realtime")
