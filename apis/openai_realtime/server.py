"""The /v1/realtime route: each WebSocket there is one `RealtimeApiConnection`.

Clients written for the OpenAI Realtime API connect here (the official `openai`
library with `base_url="http://HOST:PORT/v1"`); the `model` query parameter is
echoed in the session and otherwise ignored. The credential is checked at the
handshake (service/access.py: an API key with the `realtime` scope, or a client
secret, whose session settings are then applied and locked). At most `max_sessions`
connections, counted apart from the caller-facing transports' sessions: the realtime
pipeline may use this very endpoint as its provider, one connection per caller.
docs/realtime.md.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from apis.openai_realtime.connection import RealtimeApiConnection
from pipelines.providers.models import CascadeModels
from voice.settings import Settings
from wire.websocket import CLOSE_TRY_AGAIN, parse_query_param

log = logging.getLogger(__name__)

PATH = "/v1/realtime"
DEFAULT_MODEL = "gpt-realtime"


class RealtimeApiEndpoint:
    def __init__(self, settings: Settings, models: CascadeModels) -> None:
        self._settings = settings
        self._models = models
        self.connections: dict[str, ServerConnection] = {}

    def at_capacity(self) -> bool:
        return len(self.connections) >= self._settings.max_sessions

    async def handle(self, ws: ServerConnection, locked: Mapping[str, Any]) -> None:
        """One connection; `locked`: session settings of the client secret it was
        opened with, applied and not to be changed (empty: none)."""
        if self.at_capacity():  # raced past the HTTP check with others: checked and taken
            await ws.close(CLOSE_TRY_AGAIN, "at capacity")  # here, with no await between
            return
        query = ws.request.path.partition("?")[2] if ws.request else ""
        model = parse_query_param(query, "model") or DEFAULT_MODEL
        connection = RealtimeApiConnection(ws, self._models, self._settings, model[:100],
                                           locked)
        self.connections[connection.id] = ws
        log.info("realtime api session %s opened from %s (model %r)", connection.id,
                 ws.remote_address, model[:100])
        try:
            await connection.run()
        except* ConnectionClosed:
            pass
        finally:
            del self.connections[connection.id]
            log.info("realtime api session %s closed (%s)", connection.id, ws.close_code)
