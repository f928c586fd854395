"""Hanging up a Telnyx call through Call Control (transports/media_streams/call_control.py),
against a local stand-in for the API (tests/telnyx_api.py): the request is the one
Telnyx documents; a 5xx or 429 is tried again with the same command_id; a refusal
(a wrong key, a call already gone) is not, and nothing raises; shutdown waits for
the hang-ups under way."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

import transports.media_streams.call_control as call_control
from tests.telnyx_api import TelnyxApi
from transports.media_streams.call_control import CallControl

pytestmark = pytest.mark.unit
KEY = "KEY0123456789ABCDEF"
CALL = "v3:Tq5Qk2nJ9Q_example-call-control-id"


@pytest_asyncio.fixture
async def api() -> AsyncIterator[TelnyxApi]:
    server = await TelnyxApi(KEY).start()
    yield server
    await server.stop()


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(call_control, "BACKOFF_S", 0.01)


async def test_a_hang_up_is_the_documented_request(api: TelnyxApi) -> None:
    control = CallControl(KEY, api.url + "/")
    assert await control.hang_up(CALL, "sess-1-hangup") is True
    await control.close()
    (request,) = api.requests
    assert request.call_control_id == CALL and request.authorization == f"Bearer {KEY}"
    assert request.body == {"command_id": "sess-1-hangup"}
    assert (control.hung_up, control.failed) == (1, 0)


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_a_passing_failure_is_tried_again_with_the_same_command_id(
        api: TelnyxApi, status: int) -> None:
    api.statuses = [status, status]
    control = CallControl(KEY, api.url)
    assert await control.hang_up(CALL, "sess-2-hangup") is True
    await control.close()
    assert [r.status for r in api.requests] == [status, status, 200]
    assert {r.body["command_id"] for r in api.requests} == {"sess-2-hangup"}


@pytest.mark.parametrize("key, statuses, expect", [
    ("wrong-key", [], [401]),  # a wrong key is not tried again
    (KEY, [422], [422]),  # the call has already ended
    (KEY, [500, 500, 500, 500], [500, 500, 500]),  # down: TRIES tries, then left
])
async def test_a_refusal_is_logged_and_left(api: TelnyxApi, caplog: pytest.LogCaptureFixture,
                                            key: str, statuses: list[int],
                                            expect: list[int]) -> None:
    api.statuses = statuses
    control = CallControl(key, api.url)
    with caplog.at_level(logging.WARNING, "transports.media_streams.call_control"):
        assert await control.hang_up(CALL, "sess-3-hangup") is False
    await control.close()
    assert [r.status for r in api.requests] == expect
    assert (control.hung_up, control.failed) == (0, 1)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert f"HTTP {expect[-1]}" in warning and CALL in warning and key not in warning


async def test_an_unreachable_api_fails_in_bounded_time() -> None:
    with socket.socket() as unused:  # a port nobody listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    control = CallControl(KEY, f"http://127.0.0.1:{port}/v2")
    started = time.monotonic()
    assert await control.hang_up(CALL, "sess-4-hangup") is False
    await control.close()
    assert time.monotonic() - started < call_control.TRIES * call_control.TIMEOUT_S
    assert control.failed == 1


async def test_close_waits_for_the_hang_ups_under_way(api: TelnyxApi) -> None:
    api.statuses = [503]
    control = CallControl(KEY, api.url)
    tasks = [control.hang_up(f"v3:call-{n}", f"sess-{n}-hangup") for n in range(5)]
    await control.close()  # the caller of close() does not await the tasks
    assert all(task.done() for task in tasks)
    assert sorted(r.call_control_id for r in api.hangups()) == [f"v3:call-{n}" for n in range(5)]


async def test_an_id_with_reserved_characters_stays_one_path_segment(api: TelnyxApi) -> None:
    control = CallControl(KEY, api.url)
    assert await control.hang_up("v3:a/b?c#d", "sess-5-hangup") is True
    await control.close()
    assert [r.call_control_id for r in api.requests] == ["v3:a/b?c#d"]
