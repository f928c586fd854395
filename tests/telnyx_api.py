"""A stand-in for Telnyx's Call Control API, as far as the service uses it: `POST
/v2/calls/{call_control_id}/actions/hangup` with a Bearer key, answered as Telnyx
documents (`{"data": {"result": "ok"}}`; errors as `{"errors": [...]}`). It records
every request, and can answer the first few with a scripted status."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Request:
    call_control_id: str
    authorization: str
    body: dict[str, Any]
    status: int


@dataclass
class TelnyxApi:
    key: str
    statuses: list[int] = field(default_factory=list)  # the first answers, then 200
    requests: list[Request] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> TelnyxApi:
        app = web.Application()
        app.router.add_post("/v2/calls/{call_control_id}/actions/hangup", self._hangup)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/v2"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for_requests(self, count: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.requests) < count:
                self._arrived.clear()
                await self._arrived.wait()

    def hangups(self, ok: bool = True) -> list[Request]:
        return [r for r in self.requests if (r.status == 200) == ok]

    async def _hangup(self, request: web.Request) -> web.Response:
        authorization = request.headers.get("Authorization", "")
        try:
            body = json.loads(await request.read() or b"{}")
        except ValueError:
            body = {"unreadable": True}
        if authorization != f"Bearer {self.key}":
            status = 401
        elif self.statuses:
            status = self.statuses.pop(0)
        else:
            status = 200
        self.requests.append(Request(request.match_info["call_control_id"], authorization,
                                     body, status))
        self._arrived.set()
        if status == 200:
            return web.json_response({"data": {"result": "ok"}})
        title = {401: "Authentication failed", 422: "Call has already ended"}.get(
            status, "Service unavailable")
        return web.json_response({"errors": [{"code": str(status * 10), "title": title}]},
                                 status=status)
