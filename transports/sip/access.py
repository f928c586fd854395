"""Who may use the SIP bridge: the source allow-list (`sip_allow`) and, when an inbound
user is set, digest authentication of new calls (RFC 3261 22; SHA-256 beside MD5,
RFC 8760; nonce counts that refuse a replayed answer, RFC 7616)."""

from __future__ import annotations

import ipaddress

from voice.errors import ConfigError
from voice.settings import Settings
from wire.sip.auth import DigestVerifier
from wire.sip.message import SipRequest

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_allow_list(text: str) -> list[Network]:
    try:
        return [ipaddress.ip_network(part.strip(), strict=False)
                for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise ConfigError(f"sip_allow: {exc}") from None


class Access:
    def __init__(self, settings: Settings) -> None:
        self._allow = parse_allow_list(settings.sip_allow)
        self._verifier = DigestVerifier("voice-assistant", settings.sip_inbound_user,
                                        settings.sip_inbound_password) \
            if settings.sip_inbound_user else None

    def allows(self, host: str) -> bool:
        """Is this source address in the allow-list?"""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self._allow)

    def challenges(self, request: SipRequest, now: float) -> list[str]:
        """[] if the request may start a call; else the WWW-Authenticate values of the
        401 that asks for (fresh) credentials, MD5 and SHA-256."""
        if self._verifier is None:
            return []
        verdict = self._verifier.verify(request.headers.get("Authorization"), request.method,
                                        now)
        if verdict == "ok":
            return []
        return self._verifier.challenges(now, verdict == "stale")
