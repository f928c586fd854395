"""How many sessions a worker holds, across every transport (WebSocket, WebRTC, the
/v1/realtime endpoint, SIP calls), counted in one place.

`take()` checks and reserves a place in one step, with no await in between, so that
connections arriving together cannot all pass a check made before any of them is
counted (six WebRTC offers at once against a cap of three once made six sessions).
A place is held by its `Ticket` until `release()`. Limits: `max_sessions` in all, at
most `per_address` from one source address (0: no such limit), and none while the
worker has no headroom (`pressure` says why: `voice.scheduler.Headroom`).
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Refused:
    code: str  # "capacity", "busy" (no headroom) or "address_limit"
    message: str


class Ticket:
    def __init__(self, admission: Admission, number: int, address: str) -> None:
        self._admission, self.number, self.address = admission, number, address

    def release(self) -> None:
        self._admission._release(self)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Admission:
    def __init__(self, max_sessions: int, per_address: int = 0,
                 pressure: Callable[[], str | None] | None = None) -> None:
        self.max_sessions = max_sessions
        self.per_address = per_address
        self.pressure = pressure
        self._held: dict[int, str] = {}
        self._by_address: collections.Counter[str] = collections.Counter()
        self._numbers = itertools.count(1)

    @property
    def open(self) -> int:
        return len(self._held)

    def refusal(self, address: str) -> Refused | None:
        """Why a new session from `address` would be refused now, or None."""
        if len(self._held) >= self.max_sessions:
            return Refused("capacity", f"at capacity: {self.max_sessions} sessions open; "
                                       "try again later")
        if self.per_address and self._by_address[address] >= self.per_address:
            return Refused("address_limit", f"{self.per_address} sessions from one address "
                                            "at most")
        why = self.pressure() if self.pressure is not None else None
        if why:
            return Refused("busy", f"no headroom: {why}; try again later")
        return None

    def take(self, address: str) -> Ticket | Refused:
        refused = self.refusal(address)
        if refused is not None:
            return refused
        ticket = Ticket(self, next(self._numbers), address)
        self._held[ticket.number] = address
        self._by_address[address] += 1
        return ticket

    def _release(self, ticket: Ticket) -> None:
        if self._held.pop(ticket.number, None) is not None:
            self._by_address[ticket.address] -= 1
            if not self._by_address[ticket.address]:
                del self._by_address[ticket.address]
