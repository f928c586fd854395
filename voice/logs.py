"""Logging: plain text or one JSON object per line (`--log-format json`), with the
session id on every line logged from a session's tasks.

`SESSION_ID` is set when a session starts running (`voice.session.Session.run`); tasks
it creates inherit it, so the pipeline's, the reply's and the transport's lines all
name their session without passing it around. Secrets never reach the logs: settings
are logged redacted (`Settings.redacted`) and provider clients keep keys in headers,
whose loggers stay above DEBUG.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar

SESSION_ID: ContextVar[str] = ContextVar("session_id", default="-")
NOISY = ("websockets", "httpx", "openai", "faster_whisper", "aioice", "aiortc")


class _SessionFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.session = SESSION_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "session": getattr(record, "session", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_SessionFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)-7s %(name)s [%(session)s]: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
