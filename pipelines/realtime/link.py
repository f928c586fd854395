"""The realtime pipeline's link to its provider: one configured connection at a time.

`run()` connects, sends `session.update`, waits for `session.updated` (re-telling the
conversation so far after a reconnect), then hands every server event to the
pipeline until the connection fails: a refusal, a drop, an `error` answering the
session, or the watchdog (a provider silent while we wait for it). Each failure is
reported to the pipeline; the link then reconnects once after a short backoff
(again once more only if a reply completed on the last connection) and otherwise
returns, and the pipeline gives up (or falls back). The provider's circuit breaker,
shared by every session, hears of each success and failure; while it is open, the
link does not try at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from pipelines.realtime.provider import ProviderConnection, RealtimeProvider
from pipelines.realtime.provider_reply import InputClock, Watchdog
from voice.errors import ProviderError, ProviderRateLimited, ProviderTimeout
from voice.resilience import CircuitBreaker
from wire.openai_realtime import client_events as ce
from wire.openai_realtime import server_events as rt

log = logging.getLogger(__name__)

RECONNECTS = 1
History = list[tuple[Literal["user", "assistant"], str]]


def _first(group: BaseExceptionGroup[ProviderError]) -> ProviderError:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    assert isinstance(exc, ProviderError)
    return exc


class ProviderLink:
    def __init__(self, provider: RealtimeProvider, session_update: dict[str, Any],
                 timeout_s: float, backoff_s: float,
                 on_event: Callable[[rt.ServerEvent], Awaitable[None]],
                 on_failure: Callable[[ProviderError], None],
                 history: Callable[[], History], breaker: CircuitBreaker | None = None
                 ) -> None:
        self._provider = provider
        self._session_update = session_update
        self._timeout_s = timeout_s
        self._backoff_s = backoff_s
        self._on_event = on_event
        self._on_failure = on_failure
        self._history = history
        self._breaker = breaker
        self._conn: ProviderConnection | None = None
        self.watchdog = Watchdog(timeout_s, provider.name)
        self.input_clock = InputClock()
        self.healthy = False  # set by the pipeline when a reply completes
        self._best_effort: set[str] = set()

    @property
    def connected(self) -> bool:
        return self._conn is not None

    async def run(self) -> str:
        """Stay connected; return why, when the provider is given up on."""
        reconnects = RECONNECTS
        while True:
            breaker = self._breaker
            if breaker is not None and not breaker.allow():
                log.warning("realtime provider %s skipped: its breaker is open (next probe "
                            "in %.0f s)", self._provider.name, breaker.retry_in_s())
                return "breaker open"
            failure = await self._connection()
            log.warning("realtime provider %s: %s", self._provider.name, failure)
            if breaker is not None:
                breaker.record_failure(failure.code, failure.retry_after_s if isinstance(
                    failure, ProviderRateLimited) else None)
            self._on_failure(failure)
            if self.healthy:
                reconnects = RECONNECTS
            if reconnects == 0:
                return failure.code
            reconnects -= 1
            await asyncio.sleep(self._backoff_s)

    async def _connection(self) -> ProviderError:
        failure: ProviderError | None = None
        self.healthy = False
        try:
            async with self._provider.connect() as conn:
                await self._configure(conn)
                if self._breaker is not None:
                    self._breaker.record_success()
                self._conn = conn
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self.watchdog.run(), name="realtime-watchdog")
                    while True:
                        await self._on_event(await conn.recv())
        except* ProviderError as group:
            failure = _first(group)
        finally:
            self._conn = None
            self.watchdog.disarm()
        assert failure is not None  # the receiver only ends by a ProviderError
        return failure

    async def _configure(self, conn: ProviderConnection) -> None:
        await conn.send(self._session_update)
        try:
            async with asyncio.timeout(self._timeout_s):
                while not isinstance(event := await conn.recv(), rt.SessionConfigured) \
                        or event.type != "session.updated":
                    if isinstance(event, rt.ServerError):
                        raise ProviderError(
                            f"the realtime provider refused the session: {event.error.message}",
                            provider=self._provider.name, code="realtime_error")
        except TimeoutError as exc:
            raise ProviderTimeout(f"the realtime provider did not confirm the session within "
                                  f"{self._timeout_s:g} s", provider=self._provider.name,
                                  code="realtime_timeout") from exc
        self.input_clock.reset()
        for role, text in self._history():  # after a reconnect: the story so far
            await conn.send(ce.text_item_create(role, text))

    def diverted(self) -> None:
        """A fallback serves this session instead of the provider."""
        if self._breaker is not None:
            self._breaker.diverted += 1

    async def send(self, event: dict[str, Any]) -> bool:
        """Send if connected; a failure here surfaces in the receiver."""
        conn = self._conn
        if conn is None:
            return False
        try:
            await conn.send(event)
        except ProviderError:
            return False
        return True

    def best_effort_id(self) -> str:
        """An event id for a cancel or truncate whose refusal is no news (a race)."""
        event_id = ce.new_event_id()
        self._best_effort.add(event_id)
        return event_id

    def is_best_effort(self, event_id: str | None) -> bool:
        return event_id is not None and event_id in self._best_effort
