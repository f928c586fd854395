"""Cancelling the service's own tasks (a reply, a speculation, a provider response),
and the bounded queues between a session's parts: caller audio for its pipeline
(`LatestQueue`: the newest wins) and events, messages and keypad digits
(`CappedQueue`: what is queued keeps its order, the excess is dropped)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

AUDIO_QUEUE_ITEMS = 500  # a pipeline's unread caller audio: 10 s of 20 ms frames
EVENT_QUEUE_ITEMS = 1000  # events a client has not read yet (WebSocket, WebRTC)
REALTIME_EVENT_QUEUE_ITEMS = 4000  # /v1/realtime: its reply audio travels as events too
MESSAGE_QUEUE_ITEMS = 256  # client messages (WebRTC data channel) not handled yet
DIGIT_QUEUE_ITEMS = 64  # keypad digits not handled yet


class _Bounded(asyncio.Queue[T]):
    """A queue of at most `maxsize` items that never blocks its producer; `dropped`
    counts what an overflow cost, and the first drop of each overflow is logged."""

    def __init__(self, maxsize: int, what: str) -> None:
        super().__init__(maxsize)
        self.what = what
        self.dropped = 0
        self._overflowing = False

    def _overflow(self, policy: str) -> None:
        self.dropped += 1
        if not self._overflowing:
            log.warning("%s: %d items %s", self.what, self.maxsize, policy)
        self._overflowing = True

    def _put(self, item: T) -> None:  # asyncio.Queue's own hook, under put_nowait
        if self.qsize() < self.maxsize // 2:
            self._overflowing = False
        super()._put(item)


class LatestQueue(_Bounded[T]):
    """The newest wins: when the queue is full, the oldest item is dropped to make
    room (caller audio that a stalled pipeline has not read is stale; memory must not
    grow with it)."""

    def put_latest(self, item: T) -> None:
        if self.full():
            self.get_nowait()
            self._overflow("unread; dropping the oldest")
        self.put_nowait(item)


class CappedQueue(_Bounded[T]):
    """What is queued keeps its order, and `offer` drops an item that does not fit
    (the consumer is not keeping up: a client that reads nothing, a flood of
    messages)."""

    def offer(self, item: T) -> bool:
        """Queue `item` if there is room; False if it was dropped."""
        if self.full():
            self._overflow("waiting; dropping new ones")
            return False
        self.put_nowait(item)
        return True


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
