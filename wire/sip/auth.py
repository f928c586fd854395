"""HTTP Digest authentication for SIP (RFC 3261 section 22, RFC 2617, RFC 7616,
RFC 8760: MD5 and SHA-256, qop=auth), both sides, sans-I/O.

Client: `DigestChallenge.parse(header)` then `authorization(...)`. Server:
`DigestVerifier` issues stateless nonces (an HMAC of their issue time, so they
expire without a table) and checks `Authorization` headers.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from voice.errors import SipError

ALGORITHMS = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}
PREFERENCE = ("SHA-256", "MD5")
_PARAM = re.compile(r'\s*([A-Za-z0-9\-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*)\s*(?:,|$)')


def parse_digest(header: str) -> dict[str, str]:
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "digest":
        raise SipError(400, f"not a Digest header: {header[:40]!r}", code="sip_auth")
    params: dict[str, str] = {}
    position = 0
    rest = rest.strip()
    while position < len(rest):
        match = _PARAM.match(rest, position)
        if not match or match.end() == position:
            raise SipError(400, f"malformed Digest parameters: {rest[:60]!r}", code="sip_auth")
        value = match.group(2)
        if value.startswith('"'):
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        params[match.group(1).lower()] = value
        position = match.end()
    return params


def _hash(algorithm: str, text: str) -> str:
    return ALGORITHMS[algorithm](text.encode()).hexdigest()


def digest_response(algorithm: str, username: str, realm: str, password: str, method: str,
                    uri: str, nonce: str, qop: str | None, nc: str, cnonce: str) -> str:
    ha1 = _hash(algorithm, f"{username}:{realm}:{password}")
    ha2 = _hash(algorithm, f"{method}:{uri}")
    if qop:
        return _hash(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return _hash(algorithm, f"{ha1}:{nonce}:{ha2}")


@dataclass(frozen=True)
class DigestChallenge:
    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: str | None = None  # "auth" when offered
    opaque: str | None = None
    stale: bool = False

    @classmethod
    def parse(cls, header: str) -> DigestChallenge:
        params = parse_digest(header)
        algorithm = params.get("algorithm", "MD5").upper()
        if algorithm not in ALGORITHMS or "nonce" not in params:
            raise SipError(400, f"unsupported Digest challenge ({algorithm})", code="sip_auth")
        qops = [q.strip() for q in params.get("qop", "").split(",") if q.strip()]
        if qops and "auth" not in qops:
            raise SipError(400, "Digest challenge without qop=auth", code="sip_auth")
        return cls(realm=params.get("realm", ""), nonce=params["nonce"], algorithm=algorithm,
                   qop="auth" if qops else None, opaque=params.get("opaque"),
                   stale=params.get("stale", "").lower() == "true")

    @classmethod
    def best(cls, headers: list[str]) -> DigestChallenge:
        """The strongest challenge we support among several (RFC 8760 section 2.4)."""
        parsed = []
        for header in headers:
            try:
                parsed.append(cls.parse(header))
            except SipError:
                continue
        if not parsed:
            raise SipError(400, "no supported Digest challenge", code="sip_auth")
        return min(parsed, key=lambda c: PREFERENCE.index(c.algorithm))

    def authorization(self, username: str, password: str, method: str, uri: str,
                      nc: int = 1, cnonce: str | None = None) -> str:
        cnonce = cnonce or secrets.token_hex(8)
        count = f"{nc:08x}"
        response = digest_response(self.algorithm, username, self.realm, password, method, uri,
                                   self.nonce, self.qop, count, cnonce)
        parts = [f'username="{username}"', f'realm="{self.realm}"', f'nonce="{self.nonce}"',
                 f'uri="{uri}"', f'response="{response}"', f"algorithm={self.algorithm}"]
        if self.qop:
            parts += [f"qop={self.qop}", f"nc={count}", f'cnonce="{cnonce}"']
        if self.opaque is not None:
            parts.append(f'opaque="{self.opaque}"')
        return "Digest " + ", ".join(parts)


class DigestVerifier:
    """Checks credentials on requests we receive. Nonces are ours (an HMAC of the time
    they were issued), live `nonce_ttl` seconds, and each answer must count up (`nc`,
    RFC 7616 3.4.5): an Authorization header sent again, as recorded, is refused."""

    MAX_NONCES = 4096  # nonces whose counts are remembered; the oldest go first

    def __init__(self, realm: str, username: str, password: str,
                 algorithm: str = "MD5", nonce_ttl: float = 300.0) -> None:
        self.realm, self.username, self.password = realm, username, password
        self.algorithm = algorithm
        self.nonce_ttl = nonce_ttl
        self._secret = secrets.token_bytes(16)
        self._counts: dict[str, int] = {}  # nonce -> the highest nc accepted

    def challenge(self, now: float, stale: bool = False,
                  algorithm: str | None = None) -> str:
        issued = f"{int(now * 1000):x}"
        mac = hmac.new(self._secret, issued.encode(), hashlib.sha256).hexdigest()[:24]
        return (f'Digest realm="{self.realm}", nonce="{issued}.{mac}", '
                f'algorithm={algorithm or self.algorithm}, qop="auth"'
                + (", stale=true" if stale else ""))

    def challenges(self, now: float, stale: bool = False) -> list[str]:
        """One challenge per algorithm (RFC 8760): MD5 first, because phones that know
        only MD5 (SIPp among them) read only the first challenge; a client that knows
        both picks SHA-256 (RFC 7616 section 3.7 lets it choose the strongest)."""
        return [self.challenge(now, stale, algorithm) for algorithm in ("MD5", "SHA-256")]

    def verify(self, header: str | None, method: str, now: float) -> str:
        """"ok", "stale" (a good answer to an expired nonce) or "bad"."""
        if header is None:
            return "bad"
        try:
            params = parse_digest(header)
        except SipError:
            return "bad"
        nonce = params.get("nonce", "")
        issued, _, mac = nonce.partition(".")
        expected = hmac.new(self._secret, issued.encode(), hashlib.sha256).hexdigest()[:24]
        if not hmac.compare_digest(mac.encode(), expected.encode()) \
                or params.get("username") != self.username:
            return "bad"
        algorithm = params.get("algorithm", "MD5").upper()
        if algorithm not in ALGORITHMS or params.get("realm") != self.realm:
            return "bad"
        want = digest_response(algorithm, self.username, self.realm, self.password, method,
                               params.get("uri", ""), nonce, params.get("qop"),
                               params.get("nc", ""), params.get("cnonce", ""))
        if not hmac.compare_digest(want.encode(), params.get("response", "").encode()):
            return "bad"
        if now - int(issued, 16) / 1000 > self.nonce_ttl:
            return "stale"
        return "ok" if self._counts_up(nonce, params) else "bad"

    def _counts_up(self, nonce: str, params: dict[str, str]) -> bool:
        """With qop, `nc` must be higher than any accepted for this nonce; without qop
        (RFC 2069) a nonce serves once."""
        if not params.get("qop"):
            if nonce in self._counts:
                return False
            self._counts[nonce] = 1
        else:
            raw = params.get("nc", "")
            if not (0 < len(raw) <= 8 and raw.isascii()
                    and all(c in "0123456789abcdefABCDEF" for c in raw)):
                return False
            count = int(raw, 16)
            if count <= self._counts.get(nonce, 0):
                return False
            self._counts[nonce] = count
        while len(self._counts) > self.MAX_NONCES:
            del self._counts[next(iter(self._counts))]
        return True
