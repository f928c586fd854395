"""Registration with a registrar (RFC 3261 section 10): REGISTER with digest
authentication, refreshed before it expires, retried with back-off after failures,
removed (Expires: 0) on shutdown."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from transports.sip.endpoint import SipEndpoint
from transports.sip.uac import Credentials, resolve, with_credentials
from wire.sip.dialog import new_branch, new_call_id, new_tag
from wire.sip.headers import NameAddr, SipUri, ascii_int, get_param, iter_name_addrs
from wire.sip.message import Headers, SipRequest, SipResponse
from wire.sip.transaction import new_via

log = logging.getLogger(__name__)

RETRY_MIN_S, RETRY_MAX_S = 2.0, 60.0


def refresh_after(expires: int) -> float:
    """Refresh well before expiry: at 80 %, and at least 5 s early, never sooner than 1 s."""
    return max(1.0, min(expires * 0.8, expires - 5.0))


def granted_expires(response: SipResponse, contact_uri: SipUri, asked: int) -> int:
    for contact in iter_name_addrs(response.headers.get_all("Contact"), "Contact"):
        if contact.uri.host == contact_uri.host and contact.uri.port == contact_uri.port:
            value = get_param(contact.params, "expires")
            granted = ascii_int(value or "", 10)
            if granted is not None:
                return granted
    header = ascii_int(response.headers.get("Expires") or "", 10)
    return asked if header is None else header


@dataclass
class Registration:
    endpoint: SipEndpoint
    registrar: SipUri
    credentials: Credentials
    contact: SipUri
    expires: int = 300
    registered: bool = False
    refreshes: int = 0

    def __post_init__(self) -> None:
        self._call_id = new_call_id(self.contact.host)
        self._tag = new_tag()
        self._cseq = 0

    @property
    def aor(self) -> SipUri:
        return SipUri(host=self.registrar.host, user=self.credentials.username,
                      port=self.registrar.port)

    def _request(self, expires: int) -> SipRequest:
        self._cseq += 1
        via = self.endpoint.local_address
        aor = NameAddr(self.aor)
        headers = Headers.of(
            ("Via", new_via(via[0], via[1], new_branch())), ("Max-Forwards", "70"),
            ("From", aor.with_tag(self._tag).serialize()), ("To", aor.serialize()),
            ("Call-ID", self._call_id), ("CSeq", f"{self._cseq} REGISTER"),
            ("Contact", f"<{self.contact.serialize()}>"), ("Expires", str(expires)))
        registrar = SipUri(host=self.registrar.host, port=self.registrar.port)
        return SipRequest(headers=headers, body=b"", method="REGISTER", uri=registrar.serialize())

    async def register_once(self, expires: int) -> SipResponse:
        destination = await resolve(self.registrar)
        request = self._request(expires)
        response = await self.endpoint.request(request, destination)
        if response.status in (401, 407):
            request = with_credentials(request, response, self.credentials)
            self._cseq = request.cseq.number
            response = await self.endpoint.request(request, destination)
        return response

    async def run(self) -> None:
        """Keep the registration alive until cancelled."""
        failures = 0
        while True:
            response = await self.register_once(self.expires)
            if 200 <= response.status < 300:
                granted = granted_expires(response, self.contact, self.expires)
                if self.registered:
                    self.refreshes += 1
                self.registered, failures = True, 0
                log.info("registered with %s as %s for %d s", self.registrar, self.aor, granted)
                await asyncio.sleep(refresh_after(granted))
                continue
            self.registered = False
            failures += 1
            delay = min(RETRY_MAX_S, RETRY_MIN_S * 2 ** (failures - 1))
            log.warning("registration with %s failed: %d %s; retrying in %.0f s",
                        self.registrar, response.status, response.reason, delay)
            await asyncio.sleep(delay)

    async def unregister(self) -> None:
        if self.registered:
            await self.register_once(0)
            self.registered = False
