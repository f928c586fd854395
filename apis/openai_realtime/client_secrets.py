"""`POST /v1/realtime/client_secrets`: a client secret for a browser or a phone's app,
after OpenAI's Realtime convention (voice/auth.py).

A server holding an API key with the `secrets` scope asks, optionally with
`{"expires_after": {"anchor": "created_at", "seconds": N}, "session": {...}}`, and gets
`{"value": "ek_...", "expires_at": UNIX_SECONDS, "session": {...}}`. The secret opens
one session on /ws, /rtc or /v1/realtime before it expires. `session` takes the
Realtime API's session settings (`instructions`, `audio.output.voice`,
`audio.input.turn_detection`, ...: checked as `session.update` checks them) and this
service's `pipeline` (`cascade` or `realtime`, for /ws and /rtc): a session opened with
the secret starts with them and may not change them.

Served by the worker's HTTP API server (`--audio-api-port`, aiohttp): the main port is
a WebSocket server, which takes no request bodies.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from aiohttp import web

from apis.openai_realtime.session_config import SessionConfig, apply_update
from voice.auth import MAX_SECRET_TTL_S, MIN_SECRET_TTL_S, Credentials, Grant
from wire.openai_realtime.client_events import RealtimeApiError

PATH = "/v1/realtime/client_secrets"
MAX_BODY_BYTES = 64 * 1024


def error(status: int, message: str, code: str, param: str | None = None) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return web.json_response({"error": {"message": message, "type": kind, "code": code,
                                        "param": param}}, status=status)


async def mint(request: web.Request, credentials: Credentials, grant: Grant,
               default_ttl_s: float) -> web.Response:
    if request.content_length and request.content_length > MAX_BODY_BYTES:
        return error(413, f"the request body is over {MAX_BODY_BYTES} bytes", "too_large")
    raw = await request.content.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        return error(413, f"the request body is over {MAX_BODY_BYTES} bytes", "too_large")
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, RecursionError):
        return error(400, "the request body is not JSON", "invalid_json")
    if not isinstance(body, dict):
        return error(400, "the request body must be a JSON object", "invalid_type")
    ttl = _ttl(body.get("expires_after"), default_ttl_s)
    if isinstance(ttl, web.Response):
        return ttl
    session = body.get("session") or {}
    if not isinstance(session, dict):
        return error(400, "'session' must be an object", "invalid_type", "session")
    pipeline = session.get("pipeline")
    if pipeline not in (None, "cascade", "realtime"):
        return error(400, "'session.pipeline' must be cascade or realtime", "invalid_value",
                     "session.pipeline")
    if pipeline == "realtime" and not grant.allows("realtime"):
        return error(403, "this key may not use the realtime pipeline", "forbidden")
    realtime = {k: v for k, v in session.items() if k != "pipeline"}
    try:  # checked now, as session.update would check it: no surprises at connect
        apply_update(SessionConfig("sess_check", "check", "", None), realtime)
    except RealtimeApiError as exc:
        return error(400, exc.message, exc.code, exc.param)
    try:
        value, expires_at = credentials.mint(grant, session, ttl)
    except OverflowError as exc:
        return error(429, str(exc), "too_many_secrets")
    return web.json_response({"value": value, "expires_at": expires_at,
                              "session": {"type": "realtime", **session},
                              "id": "cs_" + secrets.token_hex(8)})


def _ttl(expires_after: Any, default_ttl_s: float) -> float | web.Response:
    if expires_after is None:
        return default_ttl_s
    seconds = expires_after.get("seconds") if isinstance(expires_after, dict) else None
    if (not isinstance(seconds, int) or isinstance(seconds, bool)
            or not MIN_SECRET_TTL_S <= seconds <= MAX_SECRET_TTL_S
            or expires_after.get("anchor", "created_at") != "created_at"):
        return error(400, f"'expires_after' must be {{\"anchor\": \"created_at\", "
                     f"\"seconds\": {MIN_SECRET_TTL_S:.0f}-{MAX_SECRET_TTL_S:.0f}}}",
                     "invalid_value", "expires_after")
    return float(seconds)
