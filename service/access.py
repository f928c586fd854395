"""The door of the session routes (/ws, /rtc, /v1/realtime, and the telephony media
streams /twilio and /telnyx): the browser's origin, then the credential and its scope,
checked at the HTTP handshake (voice/auth.py says what is allowed; docs/security.md
how to set it up; docs/telephony.md for the media streams).

- a page from an origin that is not allowed: 403;
- no credential, or one that is unknown, expired or already used: 401 with
  `WWW-Authenticate: Bearer`;
- a credential without the scope (a key that may not choose the realtime pipeline), or
  a client secret minted for other session settings: 403.

A media stream cannot send a header of our choosing, and Twilio's `<Stream url>` drops
query strings, so: with `twilio_auth_token` set, /twilio needs a valid
`X-Twilio-Signature` (HMAC-SHA1 of the public URL, keyed with the auth token) and
nothing else; otherwise, like /telnyx, it needs an API key as the last path segment
(`/twilio/KEY`), or (Telnyx's `stream_auth_token`) in the
`x-telnyx-streaming-auth-token` header.

The grant that let a connection in stays with it (`grant_of`), so that a session
opened with a client secret runs with the settings the secret was minted with.
"""

from __future__ import annotations

import hmac
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
from wire.media_streams import twilio_signature
from wire.websocket import parse_query_param

log = logging.getLogger(__name__)

SESSION_PATHS = ("/ws", "/rtc", "/v1/realtime")
REALTIME_API_PATH = "/v1/realtime"
MEDIA_STREAM_PATHS = {"/twilio": "twilio", "/telnyx": "telnyx"}  # route -> provider


def session_route(path: str) -> str | None:
    """The session route a request path opens (`/twilio/KEY` is /twilio), or None."""
    if path in SESSION_PATHS:
        return path
    parts = path.split("/")
    route = "/" + parts[1] if len(parts) in (2, 3) else ""
    return route if route in MEDIA_STREAM_PATHS else None


class Door:
    def __init__(self, credentials: Credentials, allowed_origins: str,
                 default_pipeline: str,
                 respond: Callable[[HTTPStatus, bytes, str], Response],
                 twilio_auth_token: str = "", public_url: str = "") -> None:
        self.credentials = credentials
        self._twilio_token = twilio_auth_token
        self._public_url = public_url.rstrip("/")
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
        if session_route(path) in MEDIA_STREAM_PATHS:
            return self._check_stream(connection, request, path)
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

    def _check_stream(self, connection: ServerConnection, request: Request,
                      path: str) -> Response | None:
        """A provider's media stream: Twilio's signature, or a key (path or header)."""
        scope = "realtime" if self._default_pipeline == "realtime" else "cascade"
        if session_route(path) == "/twilio" and self._twilio_token:
            if not self._twilio_signed(request, path):
                log.warning("refused %s from %s: X-Twilio-Signature missing or wrong", path,
                            connection.remote_address[0])
                return self._refuse(Denied(403, "X-Twilio-Signature is missing or does not "
                                                "match this URL and twilio_auth_token"))
            self._grants[connection] = Grant("twilio signature", frozenset({scope}))
            return None
        parts = path.split("/")
        token = (parts[2] if len(parts) == 3 and parts[2] else None) \
            or request.headers.get("x-telnyx-streaming-auth-token") \
            or presented_token(request.headers.get("Authorization"), None, ())
        grant = self.credentials.check(token, scope)
        if isinstance(grant, Denied):
            log.warning("refused %s from %s: %s", session_route(path),
                        connection.remote_address[0], grant.message)
            return self._refuse(grant)
        self._grants[connection] = grant
        return None

    def _twilio_signed(self, request: Request, path: str) -> bool:
        """The URL Twilio signed is the one in the TwiML: `public_url` + path, or wss://
        and the Host header (with and without a default port, as Twilio's validators)."""
        signature = request.headers.get("X-Twilio-Signature") or ""
        base = self._public_url or f"wss://{request.headers.get('Host', '')}"
        urls = {base + path, base.removesuffix(":443") + path}
        return bool(signature) and any(
            hmac.compare_digest(twilio_signature(self._twilio_token, url), signature)
            for url in urls)

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
