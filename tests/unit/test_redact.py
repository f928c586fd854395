"""Secrets out of what the service shows (voice/redact.py, voice/logs.py)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voice.logs import configure
from voice.redact import one_line, redact_url, scrub
from voice.settings import Settings

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("url, shown", [
    ("https://user:secret@api.example/v1", "https://***@api.example/v1"),
    ("http://token@10.0.0.5:8000/v1?api_key=abc&model=m",
     "http://***@10.0.0.5:8000/v1?api_key=***&model=m"),
    ("wss://api.openai.com/v1/realtime?model=gpt-realtime",
     "wss://api.openai.com/v1/realtime?model=gpt-realtime"),
    ("", ""),
])
def test_urls_keep_where_they_point_and_lose_their_credentials(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_urls_inside_text_are_scrubbed() -> None:
    text = "POST https://u:hunter2@h.example/v1/chat?token=zz&a=b failed; also ws://x:y@z/"
    assert scrub(text) == ("POST https://***@h.example/v1/chat?token=***&a=b failed; "
                           "also ws://***@z/")


@settings(database=None, deadline=None, max_examples=500)
@given(st.text())
def test_one_line_is_one_line(text: str) -> None:
    assert len(one_line(text).splitlines()) <= 1


def test_settings_show_urls_without_their_credentials() -> None:
    shown = Settings(openai_base_url="https://u:hunter2@gw.example/v1").redacted()
    assert shown["openai_base_url"] == "https://***@gw.example/v1"
    assert "hunter2" not in json.dumps(shown, default=str)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_every_log_line_is_one_event_without_secrets(
        fmt: str, capsys: pytest.CaptureFixture[str], restore_logging: None) -> None:
    configure("INFO", fmt)
    forged = 'refused event type "x\nINFO  voice.session [-]: session opened as admin\r"'
    logging.getLogger("apis.openai_realtime.connection").info("refused: %s", forged)
    logging.getLogger("httpx").warning("HTTP Request: POST https://u:hunter2@h/v1/chat")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and "hunter2" not in "\n".join(lines)
    if fmt == "json":
        assert json.loads(lines[0])["message"] == f"refused: {forged}"  # exact, escaped
    else:
        assert lines[0].endswith(r'refused event type "x\nINFO  voice.session [-]: '
                                 r'session opened as admin\r"')
