"""Hanging up a Telnyx call through Call Control (docs/telephony.md).

Closing a Telnyx media stream stops the stream and leaves the phone call up: the
caller would hear silence until the Call Control application hung up. With a Telnyx
API key (`--telnyx-api-key`), the service hangs the call up itself when it ends it
(`end_call`, the hang-up digit, the session time limit, a drain):

    POST {telnyx_api_url}/calls/{call_control_id}/actions/hangup
    Authorization: Bearer <key>
    {"command_id": "<session id>-hangup"}

`command_id` makes a repeat harmless (Telnyx ignores a command it has had for that
call). A network error, a 429 or a 5xx is tried again, `TRIES` times in all; any
other answer (401 a wrong key, 404 or 422 a call already gone) is logged and left.
Each hang-up is a task of its own, not of the session (whose tasks end as the stream
closes), and `close()` waits for those still running.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import quote

import aiohttp

log = logging.getLogger(__name__)

TRIES = 3
TIMEOUT_S = 5.0  # each try
BACKOFF_S = 0.5  # before the second try; doubled before each next
CLOSE_WAIT_S = 10.0  # at shutdown, for the hang-ups still under way


class CallControl:
    def __init__(self, api_key: str, api_url: str) -> None:
        self._key = api_key
        self._url = api_url.rstrip("/")
        self._http: aiohttp.ClientSession | None = None
        self._pending: set[asyncio.Task[bool]] = set()
        self.hung_up = 0
        self.failed = 0

    def hang_up(self, call_control_id: str, command_id: str) -> asyncio.Task[bool]:
        """Start hanging the call up; the task's result says whether Telnyx took it."""
        task = asyncio.create_task(self._hang_up(call_control_id, command_id),
                                   name=f"telnyx-hangup-{command_id}")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    async def _hang_up(self, call_control_id: str, command_id: str) -> bool:
        call = quote(call_control_id, safe=":")  # one path segment, as the SDKs send it
        url = f"{self._url}/calls/{call}/actions/hangup"
        headers = {"Authorization": f"Bearer {self._key}", "Accept": "application/json"}
        body = {"command_id": command_id}
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))
        why = ""
        for attempt in range(TRIES):
            if attempt:
                await asyncio.sleep(BACKOFF_S * 2 ** (attempt - 1))
            try:
                async with self._http.post(url, json=body, headers=headers) as response:
                    if response.status < 300:
                        self.hung_up += 1
                        log.info("telnyx call %s hung up through Call Control",
                                 call_control_id[:40])
                        return True
                    why = f"HTTP {response.status}: {(await response.text())[:200]}"
                    if response.status != 429 and response.status < 500:
                        break
            except (aiohttp.ClientError, TimeoutError) as exc:
                why = f"{type(exc).__name__}: {exc}"[:200]
        self.failed += 1
        log.warning("telnyx call %s: Call Control hang-up failed (%s); the stream is closed, "
                    "the call is left to the Call Control application",
                    call_control_id[:40], why)
        return False

    async def close(self) -> None:
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=CLOSE_WAIT_S)
        if self._http is not None:
            await self._http.close()
            self._http = None
