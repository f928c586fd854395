"""One inference queue per model for the whole worker, most urgent job first.

Every session's speech-to-text and text-to-speech calls wait in their model's
`InferenceQueue` and run one at a time on the model's own thread (the model's native
thread pool does the arithmetic). The thread always takes the most urgent job:

- `NOW`: what a caller is waiting for: the transcript that ends a turn, the first
  sentence of a reply, an announcement;
- `SOON`: a reply's later sentences, needed only once the audio before them has
  played: each carries the time it is due (`Demand.due`), and once due it counts as
  `NOW` (its listener hears nothing until it is made, like one waiting for a first
  sentence), so a long queue of first sentences cannot starve a reply into a long gap
  mid-reply. Urgent jobs run in the order they were needed;
- `SPECULATIVE`: work for a turn that is not confirmed yet (a speculative transcript, a
  speculation's first sentence), most of which is thrown away unheard.

Jobs of equal urgency run in the order they came. A job's urgency is read each time
the thread picks its next job, so a speculation that is confirmed meanwhile moves up
at once. A job whose caller stops waiting (its task is cancelled: the caller spoke
again, the session ended) leaves the queue unrun. A session's work therefore never
piles up: a newer speculation cancels the older one, and at most one transcription per
session waits here.

Jobs may be *batched* (`run_batched`): when the thread takes one, it takes up to
`MAX_BATCH` waiting jobs of the same urgency and batch key with it and runs them as one
call (Whisper decodes four short turns in about 110 ms where one takes 47 ms).

Who asks, and how urgently, travels with the asking task in `DEMAND` (a context
variable, so the models' interfaces stay as they are): the reply engine sets it for
its reply; anything that does not is `NOW`.

The queue measures itself (`stats()`): how busy its thread was over the last
`WINDOW_S` seconds, how long `NOW` jobs waited, how many jobs wait, and how many
sessions asked for work. `Headroom` reads those to tell whether the worker can take
another session without its admitted sessions' latency suffering.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

WINDOW_S = 10.0  # the queue's statistics cover this much recent time
RECENT_S = 3.0  # ... and its busy share this much too: load that rises fast (callers
# arriving together) shows here seconds before it moves the 10 s figure
MAX_BATCH = 4  # jobs run together in one batched call at most
SESSIONS_WINDOW_S = 30.0  # a session that asked for work this recently is a talking one


class Urgency(IntEnum):
    NOW = 0
    SOON = 1
    SPECULATIVE = 2


@dataclass(frozen=True)
class Demand:
    """Who asks for inference and how urgently."""

    owner: str = ""  # the session
    # None: wanted now; otherwise speculative until the event is set (the turn is
    # confirmed). Read from the queue's thread: an Event's flag is a plain attribute.
    wanted: asyncio.Event | None = None
    later: bool = False  # a reply's later sentence: its first one has been made
    due: float | None = None  # (time.monotonic) when a later sentence's audio is needed

    def urgency(self, now: float | None = None) -> Urgency:
        """How urgent the work is at `now` (a later sentence becomes `NOW` when due)."""
        if self.wanted is not None and not self.wanted.is_set():
            return Urgency.SPECULATIVE
        if not self.later:
            return Urgency.NOW
        if self.due is not None and now is not None and now >= self.due:
            return Urgency.NOW
        return Urgency.SOON

    def needed_at(self, submitted: float) -> float:
        """When the work is needed: at once (when it was asked for), or for a later
        sentence when it is due (which may be before it was asked for)."""
        if self.later and self.due is not None:
            return self.due
        return submitted

    def with_(self, **changes: Any) -> Demand:
        return replace(self, **changes)


DEMAND: ContextVar[Demand | None] = ContextVar("inference_demand", default=None)
_NOW = Demand()


def current_demand() -> Demand:
    return DEMAND.get() or _NOW


@dataclass(eq=False)  # a job is itself: its arguments (audio arrays) are not compared
class _Job:
    fn: Callable[..., Any]  # batched: called with the list of the batch's items
    args: tuple[Any, ...]  # batched: (item,)
    batch_key: Hashable | None  # None: not batched
    demand: Demand
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    submitted: float
    seq: int

    def rank(self, now: float) -> tuple[Urgency, float, int]:
        """Most urgent first; among equals, the earliest needed (then the first come)."""
        urgency = self.demand.urgency(now)
        needed = self.submitted if urgency is Urgency.SPECULATIVE else \
            self.demand.needed_at(self.submitted)
        return urgency, needed, self.seq


@dataclass(frozen=True)
class QueueStats:
    name: str
    busy: float  # share of the last WINDOW_S the thread spent running jobs
    waiting: dict[str, int]  # jobs waiting, by urgency name
    now_wait_p90_s: float  # 90th percentile of how long urgent jobs waited once urgent
    # (a later sentence: from shortly before its due time), over the window (0: none)
    sessions: int  # distinct sessions that asked for work in SESSIONS_WINDOW_S
    jobs: int  # jobs run since the start
    speculative: int  # of which were run for a turn not confirmed yet
    dropped: int  # jobs whose caller stopped waiting before they ran
    busy_recent: float | None = None  # the busy share over the last RECENT_S only


@dataclass
class _Window:
    """Recent busy spans and waits, pruned to the window on every read."""

    busy: collections.deque[tuple[float, float]] = field(default_factory=collections.deque)
    waits: collections.deque[tuple[float, float]] = field(default_factory=collections.deque)
    owners: dict[str, float] = field(default_factory=dict)

    def prune(self, now: float) -> None:
        while self.busy and self.busy[0][1] < now - WINDOW_S:
            self.busy.popleft()
        while self.waits and self.waits[0][0] < now - WINDOW_S:
            self.waits.popleft()
        for owner, seen in list(self.owners.items()):
            if seen < now - SESSIONS_WINDOW_S:
                del self.owners[owner]


class InferenceQueue:
    """Jobs for one model, run on one thread of its own, most urgent first."""

    def __init__(self, name: str, thread_name: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._thread_name = thread_name or name
        self._clock = clock
        self._lock = threading.Condition()
        self._jobs: list[_Job] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._running_since: float | None = None
        self._window = _Window()
        self._done = 0
        self._dropped = 0
        self._speculative = 0
        self._first_job: float | None = None  # a fresh queue's window starts here

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the queue's thread, when its turn comes."""
        result: T = await self._submit(fn, args, None)
        return result

    async def run_batched(self, fn: Callable[[list[Any]], list[T]], item: Any,
                          key: Hashable) -> T:
        """`fn([item, ...])[i]`: `item` run in one call with other waiting items of
        the same `key` (and urgency), if any; `fn` returns a result per item."""
        result: T = await self._submit(fn, (item,), key)
        return result

    async def _submit(self, fn: Callable[..., Any], args: tuple[Any, ...],
                      key: Hashable | None) -> Any:
        loop = asyncio.get_running_loop()
        demand = current_demand()
        future: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.name}: the inference queue is closed")
            job = _Job(fn, args, key, demand, loop, future, self._clock(), next(self._seq))
            self._jobs.append(job)
            if self._first_job is None:
                self._first_job = job.submitted
            if demand.owner:
                self._window.owners[demand.owner] = job.submitted
            self._start_thread()
            self._lock.notify()
        try:
            return await future
        except asyncio.CancelledError:
            with self._lock:
                if job in self._jobs:
                    self._jobs.remove(job)
                    self._dropped += 1
            raise

    def stats(self) -> QueueStats:
        with self._lock:
            now = self._clock()
            window = self._window
            window.prune(now)
            busy = self._busy_share(WINDOW_S, now)
            waits = sorted(wait for _, wait in window.waits)
            waiting = collections.Counter(job.demand.urgency(now).name for job in self._jobs)
            return QueueStats(
                name=self.name, busy=busy,
                waiting={u.name: waiting.get(u.name, 0) for u in Urgency},
                now_wait_p90_s=waits[int(0.9 * (len(waits) - 1))] if waits else 0.0,
                sessions=len(window.owners), jobs=self._done,
                speculative=self._speculative, dropped=self._dropped,
                busy_recent=self._busy_share(RECENT_S, now))

    def _busy_share(self, longest: float, now: float) -> float:
        """The share of the last `longest` seconds (less for a young queue) the thread
        spent running jobs. (Called under the lock.)"""
        span = min(longest, max(1.0, now - (self._first_job or now)))
        start = now - span
        busy = sum(min(end, now) - max(begin, start) for begin, end in self._window.busy
                   if end > start)
        if self._running_since is not None:
            busy += now - max(self._running_since, start)
        return min(1.0, busy / span)

    def close(self) -> None:
        """Stop the thread once the jobs already queued have run."""
        with self._lock:
            self._closed = True
            self._lock.notify()

    # -- the queue's thread ----------------------------------------------------------
    def _start_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=self._thread_name,
                                            daemon=True)
            self._thread.start()

    def _serve(self) -> None:
        while True:
            with self._lock:
                while not self._jobs and not self._closed:
                    self._lock.wait()
                if not self._jobs:
                    return
                started = self._running_since = self._clock()
                batch = self._take(started)
                for job in batch:
                    if job.demand.urgency(started) is Urgency.NOW:  # how late it started
                        urgent = max(job.submitted, job.demand.needed_at(job.submitted))
                        self._window.waits.append((started, started - urgent))
            outcomes = _call(batch)
            with self._lock:
                ended = self._clock()
                self._window.busy.append((started, ended))
                self._running_since = None
                self._done += len(batch)
                self._speculative += sum(
                    1 for job in batch if job.demand.urgency(started) is Urgency.SPECULATIVE)
            for job, outcome in zip(batch, outcomes, strict=True):
                try:
                    job.loop.call_soon_threadsafe(_settle, job.future, outcome)
                except RuntimeError:  # the event loop is closed: nobody is waiting
                    pass

    def _take(self, now: float) -> list[_Job]:
        """The most urgent job, and the jobs that can run in one batch with it."""
        first = min(self._jobs, key=lambda j: j.rank(now))
        batch = [first]
        if first.batch_key is not None:
            urgency = first.demand.urgency(now)
            batch += [j for j in self._jobs if j is not first and j.batch_key == first.batch_key
                      and j.demand.urgency(now) == urgency][: MAX_BATCH - 1]
        for job in batch:
            self._jobs.remove(job)
        return batch


def _call(batch: list[_Job]) -> list[tuple[bool, Any]]:
    """Run a job or a batch; each job's result or exception, for its awaiting task."""
    first = batch[0]
    try:
        if first.batch_key is None:
            return [(True, first.fn(*first.args))]
        results = first.fn([job.args[0] for job in batch])
        if len(results) != len(batch):
            raise RuntimeError(f"a batch of {len(batch)} gave {len(results)} results")
        return [(True, result) for result in results]
    except BaseException as exc:  # handed to the awaiting tasks, which decide
        return [(False, exc)] * len(batch)


def _settle(future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if future.done():  # cancelled meanwhile
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


class Headroom:
    """Whether the worker can take one more session and still answer its sessions in
    time. It says no (with the reason) when:

    - a model's urgent jobs waited more than `max_wait_s` (90th percentile over the
      last `WINDOW_S`): the worker is already late; or
    - a model's thread is busier than `max_busy`, or would be with one more session:
      its busy share (over `WINDOW_S`, or over the last `RECENT_S` if that is higher:
      callers arriving together load it faster than a 10 s average shows) divided
      among the sessions that asked for work lately, times the
      sessions open plus one (a session that is quiet now is counted as one that will
      talk). The projection starts once a thread is at least `PROJECT_FROM` busy, so a
      few quiet sessions never keep others out.

    It depends on how fast this machine runs the models and on what the sessions do,
    not on a fixed count; `max_sessions` stays the hard limit beside it. A limit of 0
    turns its check off.
    """

    PROJECT_FROM = 0.25

    def __init__(self, queues: Iterable[InferenceQueue], sessions: Callable[[], int],
                 max_busy: float = 0.85, max_wait_s: float = 0.3) -> None:
        self._queues = list(queues)
        self._sessions = sessions
        self.max_busy = max_busy
        self.max_wait_s = max_wait_s

    def stats(self) -> list[QueueStats]:
        return [queue.stats() for queue in self._queues]

    def refusal(self) -> str | None:
        """Why a new session would overload the worker now, or None."""
        open_sessions = self._sessions()
        for s in self.stats():
            if self.max_wait_s > 0 and s.now_wait_p90_s > self.max_wait_s:
                return (f"{s.name} is running late: urgent jobs waited "
                        f"{s.now_wait_p90_s * 1000:.0f} ms (p90)")
            projected = self.projected_busy(s, open_sessions)
            if self.max_busy > 0 and projected > self.max_busy:
                return (f"{s.name} would be {projected:.0%} busy with one more session "
                        f"(limit {self.max_busy:.0%})")
        return None

    def projected_busy(self, s: QueueStats, open_sessions: int) -> float:
        busy = max(s.busy, s.busy_recent or 0.0)
        if busy < self.PROJECT_FROM or not s.sessions:
            return busy
        return busy * max(1.0, (open_sessions + 1) / s.sessions)

    def headroom(self) -> float:
        """1 - the highest projected busy share over `max_busy` (0: no room left)."""
        if self.max_busy <= 0:
            return 1.0
        open_sessions = self._sessions()
        worst = max((self.projected_busy(s, open_sessions) for s in self.stats()),
                    default=0.0)
        return max(0.0, 1.0 - worst / self.max_busy)
