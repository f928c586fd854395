"""Who may open a session: API keys, short-lived client secrets, browser origins.

- **API keys** are for servers: `--api-keys` (comma-separated) and `--api-keys-file`
  (one key per line, optionally followed by its scopes: `KEY cascade,realtime`), several
  at once so that keys can be rotated. A key is presented as `Authorization: Bearer
  KEY`, as `?token=KEY`, or as the WebSocket subprotocol `openai-insecure-api-key.KEY`
  (browsers cannot set headers on a WebSocket; OpenAI's browser clients do the same).
- **Client secrets** are for browsers and phones' apps, after OpenAI's Realtime
  convention: a server holding a key with the `secrets` scope mints one
  (`POST /v1/realtime/client_secrets`), gets `{"value": "ek_...", "expires_at": ...}`
  and hands it to its page. A secret opens one session, before it expires, with the
  scopes of the key that minted it and the session settings it was minted with
  (which the session may not change).
- **Scopes**: `cascade` (a session on /ws or /rtc with the cascade pipeline),
  `realtime` (choosing the realtime pipeline, or /v1/realtime: it spends the
  operator's realtime provider), `audio` (the OpenAI audio API), `secrets` (minting
  client secrets). A key without a scope list has them all.
- **Origins**: a browser's `Origin` must be in `--allowed-origins`; with none set, the
  page must come from the host it connects to (same origin) or from a loopback
  address. Clients that send no `Origin` (servers, phones' apps) are not browsers and
  are not checked here.

With no keys configured, nothing is required (the quick start on 127.0.0.1);
`Settings.validate` refuses to bind another address that way unless told
`--insecure-no-auth`.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from voice.errors import ConfigError

SCOPES = frozenset({"cascade", "realtime", "audio", "secrets"})
SECRET_PREFIX = "ek_"
SUBPROTOCOL_PREFIX = "openai-insecure-api-key."
MIN_SECRET_TTL_S = 10.0
MAX_SECRET_TTL_S = 7200.0
MAX_LIVE_SECRETS = 10_000  # minted and not yet used or expired; more: minting refused
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


@dataclass(frozen=True)
class Grant:
    """What a presented credential allows."""

    label: str  # for logs: which key ("key 2") or secret ("secret ek_4f3a..."), never it
    scopes: frozenset[str]
    session: Mapping[str, Any] = field(default_factory=dict)  # locked session settings
    # a client secret's value and expiry, so that it can be given back when the
    # session it was redeemed for is refused after all (never shown)
    secret: str = field(default="", repr=False)
    expires_at: float = field(default=0.0, repr=False)

    def allows(self, scope: str) -> bool:
        return scope in self.scopes


@dataclass(frozen=True)
class Denied:
    status: int  # 401: no valid credential; 403: valid but not for this
    message: str


@dataclass
class _Secret:
    grant: Grant
    expires_at: float


class Credentials:
    """The worker's API keys and the client secrets minted from them."""

    def __init__(self, keys: Mapping[str, frozenset[str]] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._keys = dict(keys or {})
        self._clock = clock
        self._secrets: dict[str, _Secret] = {}
        self._lock = threading.Lock()  # the audio API and the WebSocket server share it

    @classmethod
    def load(cls, keys: str, keys_file: str) -> Credentials:
        """From `--api-keys` (comma-separated, all scopes) and `--api-keys-file`."""
        parsed: dict[str, frozenset[str]] = {k.strip(): SCOPES for k in keys.split(",")
                                             if k.strip()}
        if keys_file:
            try:
                text = Path(keys_file).read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"cannot read api_keys_file {keys_file}: {exc}") from exc
            for number, line in enumerate(text.splitlines(), 1):
                words = line.split("#", 1)[0].split()
                if not words:
                    continue
                if len(words) > 2:
                    raise ConfigError(f"{keys_file}:{number}: expected KEY [SCOPE,SCOPE...]")
                parsed[words[0]] = _scopes(words[1] if len(words) == 2 else "",
                                           f"{keys_file}:{number}")
            if not parsed:  # an empty file must not mean "no keys needed" on a public bind
                raise ConfigError(f"api_keys_file {keys_file} holds no keys")
        return cls(parsed)

    @property
    def required(self) -> bool:
        return bool(self._keys)

    def check(self, token: str | None, scope: str) -> Grant | Denied:
        """Whether `token` may do `scope` (a client secret is used up by this)."""
        if not self.required:
            return Grant("no keys configured", SCOPES)
        if not token:
            return Denied(401, "missing credential: send Authorization: Bearer KEY, "
                               "?token=KEY or a client secret")
        grant = self._redeem(token) if token.startswith(SECRET_PREFIX) else self._key(token)
        if grant is None:
            return Denied(401, "invalid, expired or already used credential")
        if not grant.allows(scope):
            self.give_back(grant)
            return Denied(403, f"this credential is not allowed to use {scope}")
        return grant

    def give_back(self, grant: Grant) -> None:
        """A client secret redeemed for a session that was then refused (no capacity,
        draining, another pipeline) may still be used, until it expires."""
        if grant.secret and grant.expires_at > self._clock():
            with self._lock:
                self._secrets[grant.secret] = _Secret(grant, grant.expires_at)

    def mint(self, grant: Grant, session: Mapping[str, Any], ttl_s: float) -> tuple[str, int]:
        """A client secret for one session with `grant`'s scopes and `session` locked;
        its value and when it expires (Unix seconds)."""
        ttl_s = min(max(ttl_s, MIN_SECRET_TTL_S), MAX_SECRET_TTL_S)
        value = SECRET_PREFIX + secrets.token_urlsafe(24)
        expires_at = self._clock() + ttl_s
        with self._lock:
            self._prune()
            if len(self._secrets) >= MAX_LIVE_SECRETS:
                raise OverflowError(f"{MAX_LIVE_SECRETS} client secrets are outstanding")
            label = f"secret {value[:8]}... of {grant.label}"
            scopes = grant.scopes - {"secrets"}  # a secret cannot mint more secrets
            self._secrets[value] = _Secret(Grant(label, scopes, dict(session), value,
                                                 expires_at), expires_at)
        return value, int(expires_at)

    def _key(self, token: str) -> Grant | None:
        for number, (key, scopes) in enumerate(self._keys.items(), 1):
            if hmac.compare_digest(key.encode(), token.encode()):
                return Grant(f"key {number}", scopes)
        return None

    def _redeem(self, token: str) -> Grant | None:
        with self._lock:
            self._prune()
            secret = self._secrets.pop(token, None)
        return None if secret is None else secret.grant

    def _prune(self) -> None:
        now = self._clock()
        for value in [v for v, s in self._secrets.items() if s.expires_at <= now]:
            del self._secrets[value]


def _scopes(text: str, where: str) -> frozenset[str]:
    if not text:
        return SCOPES
    scopes = frozenset(s.strip() for s in text.split(",") if s.strip())
    unknown = scopes - SCOPES
    if unknown:
        raise ConfigError(f"{where}: unknown scope(s) {', '.join(sorted(unknown))}; "
                          f"scopes are {', '.join(sorted(SCOPES))}")
    return scopes


def presented_token(authorization: str | None, query_token: str | None,
                    subprotocols: Iterable[str]) -> str | None:
    """The credential a client presented: a bearer header, `?token=`, or a subprotocol."""
    if authorization:
        kind, _, value = authorization.strip().partition(" ")
        if kind.lower() == "bearer" and value.strip():
            return value.strip()
    if query_token:
        return query_token
    for protocol in subprotocols:
        if protocol.startswith(SUBPROTOCOL_PREFIX) and len(protocol) > len(SUBPROTOCOL_PREFIX):
            return protocol[len(SUBPROTOCOL_PREFIX):]
    return None


def origin_allowed(origin: str | None, host: str | None, allowed: Iterable[str]) -> bool:
    """Whether a browser page from `origin` may connect to `host` (the Host header)."""
    if origin is None:
        return True  # not a browser
    allowed = [a.strip().rstrip("/") for a in allowed if a.strip()]
    if allowed:
        return "*" in allowed or origin.rstrip("/") in allowed
    try:
        page = urlsplit(origin)
        page_host = page.hostname or ""
    except ValueError:
        return False
    if page_host in LOOPBACK_HOSTS or page_host.startswith("127."):
        return True
    return bool(host) and page.netloc.lower() == (host or "").lower()


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS or host.startswith("127.")
