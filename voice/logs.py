"""Logging: plain text or one JSON object per line (`--log-format json`), with the
session id on every line logged from a session's tasks.

`SESSION_ID` is set when a session starts running (`voice.session.Session.run`); tasks
it creates inherit it, so the pipeline's, the reply's and the transport's lines all
name their session without passing it around. Secrets never reach the logs: settings
are logged redacted (`Settings.redacted`), provider clients keep keys in headers, whose
loggers stay above DEBUG, and every line, third-party ones included, has the
credentials of any URL in it masked (`voice.redact.scrub`). In the text format each
event is one line: control characters in a message (a caller's CR or LF) are escaped;
the JSON format escapes them as JSON does.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import Any

from voice.redact import one_line, scrub

SESSION_ID: ContextVar[str] = ContextVar("session_id", default="-")
NOISY = ("websockets", "httpx", "openai", "faster_whisper", "aioice", "aiortc")


class _SessionFilter(logging.Filter):
    """Names the session, and masks URL credentials in the message, whoever logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.session = SESSION_ID.get()
        message = record.getMessage()
        scrubbed = scrub(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        return True


class TextFormatter(logging.Formatter):
    """One event, one line: the message's control characters escaped."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s [%(session)s]: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return scrub(super().formatException(ei))


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
            entry["exception"] = scrub(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_SessionFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
