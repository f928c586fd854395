"""The bounded queues between a session's parts (voice/tasks.py): caller audio for the
pipeline (the newest wins), and events, messages and digits (the excess is dropped)."""

from __future__ import annotations

import pytest

from voice.clock import MONOTONIC
from voice.events import Pong
from voice.session import Session
from voice.tasks import EVENT_QUEUE_ITEMS, CappedQueue, LatestQueue

pytestmark = pytest.mark.unit


async def test_a_pipelines_unread_audio_is_bounded_and_the_newest_wins(
        caplog: pytest.LogCaptureFixture) -> None:
    queue: LatestQueue[int] = LatestQueue(4, "caller audio")
    for frame in range(10):  # the pipeline stalled: nobody reads
        queue.put_latest(frame)
    assert [queue.get_nowait() for _ in range(queue.qsize())] == [6, 7, 8, 9]
    assert queue.dropped == 6
    assert [r.message for r in caplog.records].count(
        "caller audio: 4 items unread; dropping the oldest") == 1  # once per overflow


async def test_a_capped_queue_keeps_its_order_and_drops_what_does_not_fit(
        caplog: pytest.LogCaptureFixture) -> None:
    queue: CappedQueue[int] = CappedQueue(3, "messages")
    assert [queue.offer(n) for n in range(5)] == [True, True, True, False, False]
    assert [queue.get_nowait() for _ in range(3)] == [0, 1, 2] and queue.dropped == 2
    assert [r.message for r in caplog.records].count(
        "messages: 3 items waiting; dropping new ones") == 1


async def test_a_client_that_reads_no_events_does_not_grow_its_session() -> None:
    async def never_sent(event: object) -> None:
        raise AssertionError("the session is not running: nothing is sent")

    session = Session(16000, never_sent, None, MONOTONIC, 200)  # type: ignore[arg-type]
    for _ in range(EVENT_QUEUE_ITEMS + 500):
        session.emit(Pong())
    assert session._events.qsize() == EVENT_QUEUE_ITEMS
    assert session._events.dropped == 500
