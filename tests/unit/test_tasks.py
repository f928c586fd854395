"""The bounded queue between a session's audio and its pipeline (voice/tasks.py)."""

from __future__ import annotations

import pytest

from voice.tasks import LatestQueue

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
