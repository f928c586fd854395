"""The door of the session routes (/ws, /rtc, /v1/realtime): the browser's origin, then
the credential and its scope, checked at the HTTP handshake (voice/auth.py says what
is allowed; docs/security.md how to set it up).

- a page from an origin that is not allowed: 403;
- no credential, or one that is unknown, expired or already used: 401 with
  `WWW-Authenticate: Bearer`;
- a credential without the scope (a key that may not choose the realtime pipeline), or
  a client secret minted for other session settings: 403.

The grant that let a connection in stays with it (`grant_of`), so that a session
opened with a client secret runs with the settings the secret was minted with.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Sequence
from http import HTTPStatus

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from voice.auth import (
    SUBPROTOCOL_PREFIX,
    Credentials,
    Denied,
    Grant,
    origin_allowed,
    presented_token,
)
from wire.websocket import parse_query_param

log = logging.getLogger(__name__)

SESSION_PATHS = ("/ws", "/rtc", "/v1/realtime")
REALTIME_API_PATH = "/v1/realtime"


class Door:
    def __init__(self, credentials: Credentials, allowed_origins: str,
                 default_pipeline: str,
                 respond: Callable[[HTTPStatus, bytes, str], Response]) -> None:
        self.credentials = credentials
        self._origins = [o for o in allowed_origins.split(",") if o.strip()]
        self._default_pipeline = default_pipeline
        self._respond = respond
        self._grants: weakref.WeakKeyDictionary[ServerConnection, Grant] = \
            weakref.WeakKeyDictionary()

    def check(self, connection: ServerConnection, request: Request) -> Response | None:
        """None: come in (the grant is kept for the connection); else the refusal."""
        path, _, query = request.path.partition("?")
        origin = request.headers.get("Origin")
        if not origin_allowed(origin, request.headers.get("Host"), self._origins):
            log.warning("refused %s from %s: origin %r is not allowed", path,
                        connection.remote_address[0], origin[:200] if origin else origin)
            return self._refuse(Denied(403, "this page's origin may not connect here "
                                            "(allowed_origins)"))
        if path == REALTIME_API_PATH:
            scope, pipeline = "realtime", None
        else:
            pipeline = parse_query_param(query, "pipeline") or self._default_pipeline
            scope = "realtime" if pipeline == "realtime" else "cascade"
        token = presented_token(request.headers.get("Authorization"),
                                parse_query_param(query, "token"),
                                _offered(request.headers))
        grant = self.credentials.check(token, scope)
        if isinstance(grant, Denied):
            log.warning("refused %s from %s: %s", path, connection.remote_address[0],
                        grant.message)
            return self._refuse(grant)
        locked = grant.session.get("pipeline")
        if pipeline is not None and locked is not None and locked != pipeline:
            self.credentials.give_back(grant)
            return self._refuse(Denied(403, f"this client secret was minted for the "
                                            f"{locked} pipeline"))
        self._grants[connection] = grant
        return None

    def grant_of(self, connection: ServerConnection) -> Grant | None:
        return self._grants.get(connection)

    def turn_away(self, connection: ServerConnection) -> None:
        """The connection was let in but its session refused after all (capacity,
        draining): a client secret it presented is not used up."""
        grant = self._grants.pop(connection, None)
        if grant is not None:
            self.credentials.give_back(grant)

    def _refuse(self, denied: Denied) -> Response:
        status = HTTPStatus(denied.status)
        response = self._respond(status, f"{denied.message}\n".encode(), "text/plain")
        if status is HTTPStatus.UNAUTHORIZED:
            response.headers["WWW-Authenticate"] = 'Bearer realm="voice"'
        return response


def select_subprotocol(connection: ServerConnection,
                       subprotocols: Sequence[Subprotocol]) -> Subprotocol | None:
    """Answer a browser that offered subprotocols with one of them (it fails the
    connection otherwise): the first that is not a credential ("realtime" for OpenAI's
    clients), else the credential itself."""
    plain = [p for p in subprotocols if not p.startswith(SUBPROTOCOL_PREFIX)]
    chosen = plain or list(subprotocols)
    return chosen[0] if chosen else None


def _offered(headers: Headers) -> list[str]:
    return [p.strip() for value in headers.get_all("Sec-WebSocket-Protocol")
            for p in value.split(",") if p.strip()]
