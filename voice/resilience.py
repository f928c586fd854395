"""Circuit breakers: one per provider, so a provider that keeps failing is skipped at once
instead of making every caller wait for it to fail again.

Theory of operation. A breaker counts the outcomes of calls within a sliding window
(`window_s`). It *opens* when at least `min_failures` calls failed and they are more
than `failure_ratio` of the window's calls, or at once when the provider said when to
come back (HTTP 429 `Retry-After`). While open, `allow()` is False and the caller goes
straight to its fallback. When the open time is over, the breaker is *half-open*:
exactly one call (the probe) is let through; success closes the breaker, failure
opens it again for longer (exponential backoff with full jitter, capped). The state
is kept per provider for the whole service, so one session's failures spare the next
session the wait.

This is a deadline schedule, not a retry loop: on a live call nothing ever sleeps and
retries the same provider (the turn moves on to the next provider at once). That is
why the backoff is computed here rather than with a retry library such as tenacity,
whose waits are sleeps between attempts.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

log = logging.getLogger(__name__)


def retry_after_s(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header in its delta-seconds form, or None.

    An HTTP-date is rare from model APIs and gives None (the breaker's own timing
    applies); so does anything that is not a plain finite number of seconds."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerPolicy:
    failure_ratio: float = 0.1  # open when more than this share of the window's calls fail
    min_failures: int = 2  # ... and at least this many did
    window_s: float = 60.0
    open_s: float = 30.0  # first time open; doubles (with jitter) after a failed probe
    max_open_s: float = 300.0


@dataclass
class CircuitBreaker:
    name: str
    policy: BreakerPolicy = field(default_factory=BreakerPolicy)
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    state: BreakerState = BreakerState.CLOSED
    opened_count: int = 0  # times it opened (for /healthz and metrics)
    skipped: int = 0  # calls it turned away while open
    diverted: int = 0  # calls a fallback served instead of this provider
    _outcomes: deque[tuple[float, bool]] = field(default_factory=deque)  # (time, ok)
    _reopen_at: float = 0.0
    _probe_failures: int = 0  # consecutive failed probes: the backoff exponent
    _probing: bool = False

    def allow(self) -> bool:
        """May a call go to this provider now? In half-open, only one probe at a time."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and self.clock() >= self._reopen_at:
            self.state = BreakerState.HALF_OPEN
            log.info("breaker %s: half-open, probing", self.name)
        if self.state is BreakerState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        self.skipped += 1
        return False

    def retry_in_s(self) -> float:
        """Seconds until the next probe (0 when closed)."""
        if self.state is BreakerState.CLOSED:
            return 0.0
        return max(0.0, self._reopen_at - self.clock())

    def record_success(self) -> None:
        now = self.clock()
        if self.state is not BreakerState.CLOSED:
            log.info("breaker %s: closed again (probe succeeded)", self.name)
        self.state = BreakerState.CLOSED
        self._probing = False
        self._probe_failures = 0
        self._add(now, ok=True)

    def record_failure(self, reason: str, retry_after_s: float | None = None) -> None:
        now = self.clock()
        self._add(now, ok=False)
        if self.state is BreakerState.HALF_OPEN:
            self._probing = False
            self._probe_failures += 1
            self._open(now, reason, retry_after_s)
        elif self.state is BreakerState.CLOSED and ((retry_after_s or 0) > 0
                                                    or self._tripped()):
            self._open(now, reason, retry_after_s)

    def _tripped(self) -> bool:
        failures = sum(1 for _, ok in self._outcomes if not ok)
        return (failures >= self.policy.min_failures
                and failures > self.policy.failure_ratio * len(self._outcomes))

    def _open(self, now: float, reason: str, retry_after_s: float | None) -> None:
        p = self.policy
        ceiling = min(p.max_open_s, p.open_s * 2 ** self._probe_failures)
        wait = (ceiling if self._probe_failures == 0
                else self.rng.uniform(p.open_s, ceiling))  # jitter spreads the probes
        if retry_after_s is not None:  # honoured, up to max_open_s
            wait = min(p.max_open_s, max(wait, retry_after_s) if self._tripped()
                       else retry_after_s)
        self.state = BreakerState.OPEN
        self._reopen_at = now + wait
        self.opened_count += 1
        log.warning("breaker %s: open for %.1f s (%s)", self.name, wait, reason)

    def _add(self, now: float, ok: bool) -> None:
        self._outcomes.append((now, ok))
        while self._outcomes and self._outcomes[0][0] < now - self.policy.window_s:
            self._outcomes.popleft()

    def snapshot(self) -> dict[str, object]:
        return {"state": self.state.value, "opened": self.opened_count,
                "skipped": self.skipped,
                "fallbacks": self.diverted, "retry_in_s": round(self.retry_in_s(), 1)}
