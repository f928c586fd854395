"""The realtime provider: any OpenAI-Realtime-compatible WebSocket endpoint.

`RealtimeProvider` is the contract the pipeline needs (open a connection, send client
events, receive parsed server events); `WebSocketProvider` implements it with
`websockets` directly, so timeouts, reconnects and errors stay ours. Vendor errors
are translated here, where they enter: a refused handshake, a rate limit (HTTP 429),
an unreachable host or a dropped connection become `ProviderError`s with stable
codes. The API key goes in the `Authorization` header only; it is never logged and
never part of an error message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol
from urllib.parse import urlsplit

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from voice.errors import ProtocolError, ProviderError, ProviderRateLimited, ProviderTimeout
from voice.redact import redact_url
from wire.openai_realtime import server_events as rt
from wire.openai_realtime.client_events import encode, provider_url
from wire.openai_realtime.server_events import ServerEvent, parse_server_event

log = logging.getLogger(__name__)
# websockets logs every handshake header at DEBUG, the Authorization header among them:
# its logger for our provider connections never goes below INFO
_wire_log = logging.getLogger(f"{__name__}.wire")

MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class ProviderConnection(Protocol):
    async def send(self, event: dict[str, Any]) -> None: ...

    async def recv(self) -> ServerEvent:
        """The next server event; ProviderError once the connection is gone."""
        ...


class RealtimeProvider(Protocol):
    name: str

    def connect(self) -> contextlib.AbstractAsyncContextManager[ProviderConnection]: ...


class _Connection:
    def __init__(self, ws: ClientConnection, name: str) -> None:
        self._ws = ws
        self._name = name

    async def send(self, event: dict[str, Any]) -> None:
        try:
            await self._ws.send(encode(event))
        except ConnectionClosed as exc:
            raise self._closed(exc) from exc

    async def recv(self) -> ServerEvent:
        while True:
            try:
                message = await self._ws.recv()
            except ConnectionClosed as exc:
                raise self._closed(exc) from exc
            try:
                return parse_server_event(message)
            except ProtocolError as exc:
                log.warning("realtime provider sent a malformed event (skipped): %s", exc)

    def _closed(self, exc: ConnectionClosed) -> ProviderError:
        code = exc.rcvd.code if exc.rcvd is not None else 1006
        return ProviderError(f"the realtime provider closed the connection (code {code})",
                             provider=self._name, code="realtime_disconnected")


class WebSocketProvider:
    def __init__(self, url: str, model: str, api_key: str, timeout_s: float) -> None:
        self._url = provider_url(url, model)
        self._api_key = api_key
        self._timeout_s = timeout_s
        parts = urlsplit(redact_url(url))
        self.name = f"realtime:{parts.netloc}{parts.path}:{model}"
        self.model = model

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[ProviderConnection]:
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        _wire_log.setLevel(max(logging.INFO, _wire_log.getEffectiveLevel()))
        try:
            async with asyncio.timeout(self._timeout_s):
                ws = await websockets.connect(
                    self._url, additional_headers=headers, max_size=MAX_MESSAGE_BYTES,
                    compression=None, open_timeout=None, close_timeout=2, ping_interval=20,
                    ping_timeout=20, logger=_wire_log)
        except Exception as exc:
            raise self._refused(exc) from exc
        log.info("connected to the realtime provider %s", self.name)
        try:
            yield _Connection(ws, self.name)
        finally:
            await ws.close()

    def _refused(self, exc: Exception) -> ProviderError:
        if isinstance(exc, TimeoutError):
            return ProviderTimeout(f"the realtime provider did not answer within "
                                   f"{self._timeout_s:g} s", provider=self.name,
                                   code="realtime_timeout")
        if isinstance(exc, InvalidStatus):
            status = exc.response.status_code
            if status == 429:
                return ProviderRateLimited("the realtime provider refused: rate limit (HTTP 429)",
                                           provider=self.name, code="realtime_rate_limited")
            return ProviderError(f"the realtime provider refused the connection (HTTP {status})",
                                 provider=self.name, code="realtime_refused")
        if isinstance(exc, OSError | InvalidHandshake | InvalidURI):
            return ProviderError(f"the realtime provider is unreachable "
                                 f"({type(exc).__name__})", provider=self.name,
                                 code="realtime_unreachable")
        return ProviderError(f"cannot connect to the realtime provider ({type(exc).__name__})",
                             provider=self.name, code="realtime_unreachable")


def provider_error(error: rt.ErrorDetail, provider: str) -> ProviderError:
    """A provider's `error` (or failed response), in our error tree."""
    if error.rate_limited:
        return ProviderRateLimited(f"realtime provider rate limit: {error.message}",
                                   provider=provider, code="realtime_rate_limited")
    return ProviderError(f"realtime provider error: {error.message or error.code}",
                         provider=provider, code="realtime_error")
