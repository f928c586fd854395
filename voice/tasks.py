"""Cancelling the service's own tasks (a reply, a speculation, a provider response),
and the bounded queue between a session's audio and its pipeline."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

AUDIO_QUEUE_ITEMS = 500  # a pipeline's unread caller audio: 10 s of 20 ms frames


class LatestQueue(asyncio.Queue[T]):
    """A queue of at most `maxsize` items where the newest wins: when it is full, the
    oldest item is dropped to make room (caller audio that a stalled pipeline has not
    read is stale; memory must not grow with it). `dropped` counts them, and the first
    drop of each overflow is logged."""

    def __init__(self, maxsize: int, what: str) -> None:
        super().__init__(maxsize)
        self.what = what
        self.dropped = 0
        self._overflowing = False

    def put_latest(self, item: T) -> None:
        if self.full():
            self.get_nowait()
            self.dropped += 1
            if not self._overflowing:
                log.warning("%s: %d items unread; dropping the oldest", self.what,
                            self.maxsize)
            self._overflowing = True
        elif self.qsize() < self.maxsize // 2:
            self._overflowing = False
        self.put_nowait(item)


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel the tasks still running and wait until they have ended. Their own
    cancellation is swallowed; a cancellation of the caller itself goes on."""
    running = [task for task in tasks if task is not None and not task.done()]
    for task in running:
        task.cancel()
    for task in running:
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
