"""The one clock: monotonic nanoseconds, injectable for tests."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now_ns(self) -> int: ...


class MonotonicClock:
    """Production clock: `time.monotonic_ns()`."""

    def now_ns(self) -> int:
        return time.monotonic_ns()


MONOTONIC = MonotonicClock()


def ns_to_ms(ns: int) -> float:
    return ns / 1_000_000
