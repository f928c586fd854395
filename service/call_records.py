"""Call records: at the end of every session (every transport), what happened in it.

A `CallRecorder` watches one session's events (`Session.observers`) and, when the
session ends, makes its record: the transcript of both sides with times from the start
(an interrupted reply keeps its whole text and marks what the caller heard of it), the
tool calls, each turn's latency by stage and usage, the session's usage and cost
(voice/usage.py), the errors, and why the call ended. `CallRecords` delivers records
without ever holding up a call:

- to a directory (`--call-records-dir`): `<dir>/<YYYY-MM-DD>/<session id>.json`, written
  whole (a temporary file, then a rename); files older than `--call-records-days` are
  deleted at start and every hour;
- to a webhook (`--call-records-url`): a JSON POST signed with HMAC-SHA256 over
  `<timestamp>.<body>` with `--call-records-secret` (headers `X-Voice-Timestamp` and
  `X-Voice-Signature: sha256=<hex>`), retried with backoff (1, 2, 4, ... 32 s: 7 tries in
  about a minute) on a network error or a 5xx/429, given up on with one ERROR line.

With `--record-calls` (off by default) the call's audio is recorded too
(service/recording.py), beside its record, which then names the file.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from voice.events import (
    ErrorOccurred,
    Event,
    ResponseDone,
    ResponseInterrupted,
    ResponseTextDelta,
    SessionUsage,
    ToolAnswered,
    ToolCalled,
    TranscriptFinal,
    TurnLatency,
    TurnUsage,
)
from voice.usage import Models, Prices

log = logging.getLogger(__name__)

WEBHOOK_TRIES = 7
WEBHOOK_TIMEOUT_S = 10.0
RETENTION_SWEEP_S = 3600.0
SCHEMA = "voice.call_record/1"


@dataclass
class CallRecorder:
    """One session's record, built from its events as they happen."""

    session_id: str
    transport: str
    pipeline: str
    tenant: str
    started_at: float = field(default_factory=time.time)  # wall clock, for the record
    _started: float = field(default_factory=time.monotonic)
    transcript: list[dict[str, Any]] = field(default_factory=list)
    turns: dict[int, dict[str, Any]] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    _replies: dict[int, str] = field(default_factory=dict)  # text so far, per turn

    def observe(self, event: Event) -> None:
        at = round(time.monotonic() - self._started, 3)
        if isinstance(event, TranscriptFinal):
            self.transcript.append({"at_s": at, "turn_id": event.turn_id, "speaker": "caller",
                                    "text": event.text})
        elif isinstance(event, ResponseTextDelta):
            self._replies[event.turn_id] = self._replies.get(event.turn_id, "") + event.delta
        elif isinstance(event, ResponseDone):
            self._replies.pop(event.turn_id, None)
            self.transcript.append({"at_s": at, "turn_id": event.turn_id,
                                    "speaker": "assistant", "text": event.text, "heard": True})
        elif isinstance(event, ResponseInterrupted):
            said = self._replies.pop(event.turn_id, event.played_text)
            self.transcript.append({
                "at_s": at, "turn_id": event.turn_id, "speaker": "assistant", "text": said,
                "heard": False, "heard_text": event.played_text, "heard_ms": event.played_ms,
                "interrupted_by": event.reason})
        elif isinstance(event, ToolCalled | ToolAnswered):
            self.transcript.append({"at_s": at, "speaker": "tool", **event.to_dict()})
        elif isinstance(event, TurnLatency):
            self._turn(event.turn_id)["latency_ms"] = event.stages
        elif isinstance(event, TurnUsage):
            self._turn(event.turn_id)["usage"] = event.usage
        elif isinstance(event, ErrorOccurred):
            self.errors.append({"at_s": at, "code": event.code, "message": event.message})

    def _turn(self, turn_id: int) -> dict[str, Any]:
        return self.turns.setdefault(turn_id, {"turn_id": turn_id})

    def record(self, end_reason: str, usage: SessionUsage | None,
               prices: Prices) -> dict[str, Any]:
        models = usage.models if usage is not None else {}
        cost = None
        if usage is not None:
            from voice.usage import Usage

            counted = Usage(**usage.usage)
            cost = prices.cost(counted, Models(**models))
            minutes = usage.seconds / 60
            cost["usd_per_minute"] = round(cost["usd"] / minutes, 6) if minutes > 0 else 0.0
        return {
            "schema": SCHEMA, "session_id": self.session_id, "transport": self.transport,
            "pipeline": self.pipeline, "tenant": self.tenant,
            "started_at": datetime.fromtimestamp(self.started_at, UTC).isoformat(),
            "duration_s": round(time.monotonic() - self._started, 3),
            "end_reason": end_reason, "transcript": self.transcript,
            "turns": [self.turns[k] for k in sorted(self.turns)],
            "usage": usage.usage if usage is not None else None, "models": models,
            "cost": cost, "errors": self.errors, "recording": None,
        }


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256(secret, "<timestamp>.<body>")."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


class CallRecords:
    """Where records go: a directory, a webhook, both or neither."""

    def __init__(self, directory: str, url: str, secret: str, days: float,
                 prices: Prices) -> None:
        self.directory = Path(directory).expanduser() if directory else None
        self.url = url
        self.secret = secret
        self.days = days
        self.prices = prices
        self._pending: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self.delivered = 0  # webhook deliveries that succeeded
        self.failed = 0  # that were given up

    @property
    def enabled(self) -> bool:
        return self.directory is not None or bool(self.url)

    def start(self) -> None:
        if self.directory is not None and self.days > 0:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="call-records-sweep")

    def deliver(self, record: dict[str, Any]) -> None:
        """Write and send `record` in the background; returns at once."""
        task = asyncio.create_task(self._deliver(record),
                                   name=f"call-record-{record['session_id']}")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _deliver(self, record: dict[str, Any]) -> None:
        body = json.dumps(record, ensure_ascii=False).encode()
        if self.directory is not None:
            try:
                await asyncio.to_thread(self._write, record, body)
            except OSError as exc:
                log.error("call record %s not written to %s: %s", record["session_id"],
                          self.directory, exc)
        if self.url:
            await self._post(record["session_id"], body)

    def _write(self, record: dict[str, Any], body: bytes) -> None:
        assert self.directory is not None
        folder = self.directory / record["started_at"][:10]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{record['session_id']}.json"
        partial = path.with_suffix(".json.part")
        partial.write_bytes(body)
        os.replace(partial, path)

    async def _post(self, session_id: str, body: bytes) -> None:
        pause = 1.0
        timeout = aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as client:
            for attempt in range(1, WEBHOOK_TRIES + 1):
                stamp = str(int(time.time()))
                headers = {"Content-Type": "application/json", "X-Voice-Timestamp": stamp,
                           "User-Agent": "voice-call-records/1"}
                if self.secret:
                    headers["X-Voice-Signature"] = signature(self.secret, stamp, body)
                why = ""
                try:
                    async with client.post(self.url, data=body, headers=headers) as answer:
                        if answer.status < 300:
                            self.delivered += 1
                            log.info("call record %s delivered (try %d)", session_id, attempt)
                            return
                        why = f"HTTP {answer.status}"
                        if answer.status < 500 and answer.status != 429:
                            break  # the receiver refuses it: trying again will not help
                except (aiohttp.ClientError, TimeoutError) as exc:
                    why = type(exc).__name__
                if attempt < WEBHOOK_TRIES:
                    log.warning("call record %s: webhook try %d failed (%s); again in %g s",
                                session_id, attempt, why, pause)
                    await asyncio.sleep(pause)
                    pause *= 2
        self.failed += 1
        log.error("call record %s: webhook gave up (%s)", session_id, why)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.to_thread(self.sweep)
            await asyncio.sleep(RETENTION_SWEEP_S)

    def sweep(self) -> int:
        """Delete records (and recordings) older than the retention; how many went."""
        if self.directory is None or not self.directory.is_dir():
            return 0
        cutoff = time.time() - self.days * 86400
        gone = 0
        for path in self.directory.glob("*/*"):
            if path.suffix not in (".json", ".wav"):
                continue
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    gone += 1
            except OSError:
                continue
        for folder in self.directory.iterdir():
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        if gone:
            log.info("call records: %d older than %g days deleted", gone, self.days)
        return gone

    async def close(self, timeout: float = 5.0) -> None:
        """Give deliveries in flight a moment, then stop."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout)
        for task in list(self._pending):
            task.cancel()
