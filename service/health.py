"""What a worker says about itself: the sessions it serves now (for metrics, readiness
and the drain), its providers' circuit breakers, `/healthz` and `/readyz`.

`/readyz` is what a balancer acts on: ready means the models are loaded (always, once
listening), the worker is not draining, it is below capacity and has headroom for
another session (`voice.admission`, `voice.scheduler.Headroom`) and its SIP bridge, if
any, works; the body carries the load, so a balancer can prefer
the least-loaded worker.
"""

from __future__ import annotations

import asyncio
import re

from pipelines.providers.llm import LLMChain
from pipelines.providers.models import CascadeModels
from pipelines.providers.remote import RemoteSTT, RemoteTTS
from transports.sip.bridge import SipBridge
from voice.admission import Admission
from voice.metrics import LiveSession, WorkerLoad
from voice.resilience import CircuitBreaker
from voice.session import Session

REPLY_TASK = re.compile(r"turn-\d+-reply")


class LiveSessions:
    """The sessions open now, with what the ended ones lost or made up of caller audio."""

    def __init__(self) -> None:
        self._open: dict[str, tuple[Session, LiveSession]] = {}
        self._frames_ended = {"dropped": 0, "concealed": 0}

    def add(self, session: Session, live: LiveSession) -> None:
        self._open[session.id] = (session, live)

    def sessions(self) -> list[Session]:
        self.live()
        return [session for session, _ in self._open.values()]

    def live(self) -> list[LiveSession]:
        """The sessions open now (ended ones are let go here)."""
        for sid, (session, _) in list(self._open.items()):
            if session.ended.is_set():
                del self._open[sid]
                self._frames_ended["dropped"] += session.frames_dropped
                self._frames_ended["concealed"] += session.frames_concealed
        return [live for _, live in self._open.values()]

    def audio_frames(self) -> dict[str, int]:
        open_sessions = self.sessions()
        return {"dropped": self._frames_ended["dropped"]
                + sum(s.frames_dropped for s in open_sessions),
                "concealed": self._frames_ended["concealed"]
                + sum(s.frames_concealed for s in open_sessions)}


def replies_running() -> int:
    """Reply tasks alive now (the cascade's, running or speculative): a leak shows here."""
    return sum(1 for task in asyncio.all_tasks()
               if REPLY_TASK.fullmatch(task.get_name()) and not task.done())


def breakers(models: CascadeModels, *others: CircuitBreaker) -> dict[str, dict[str, object]]:
    """Every provider's circuit breaker, for /healthz and /metrics."""
    found = list(others)
    if isinstance(models.llm, LLMChain):
        found += [endpoint.breaker for endpoint in models.llm.endpoints]
    for model in (models.stt, models.tts):
        if isinstance(model, RemoteSTT | RemoteTTS):
            found.append(model.breaker)
    return {breaker.name: breaker.snapshot() for breaker in found}


def readiness(load: WorkerLoad, admission: Admission,
              sip: SipBridge | None) -> tuple[bool, dict[str, object]]:
    refused = admission.refusal("")
    failure = None if sip is None else sip.failure
    ready = not load.draining and refused is None and failure is None
    return ready, {"ready": ready, "draining": load.draining, "sessions": load.sessions,
                   "capacity": load.capacity,
                   "load": round(load.sessions / max(1, load.capacity), 3),
                   "headroom": round(load.headroom, 3),
                   "sip_calls": None if sip is None else len(sip.calls),
                   "reason": "draining" if load.draining else failure
                   or (refused.message if refused else "")}
