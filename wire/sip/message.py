"""SIP messages (RFC 3261 sections 7, 18.3, 20): parsing and serialising, sans-I/O.

`parse_message(datagram)` reads a request or a response: start line, headers
(case-insensitive names, compact forms, folded continuation lines, several headers
of one name), then the body framed by Content-Length (on UDP a missing
Content-Length means "the rest of the datagram"). Anything structurally broken
raises `SipError(400)` with a message that names the problem. `check_request` adds
the checks RFC 3261 section 8.2 needs before a request is processed.

Serialising always writes a Content-Length that matches the body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from voice.errors import SipError
from wire.sip.headers import CSeq, NameAddr, SipUri, Via, ascii_int, split_list

SIP_VERSION = "SIP/2.0"
MAX_HEADERS = 128

COMPACT = {"i": "Call-ID", "m": "Contact", "e": "Content-Encoding", "l": "Content-Length",
           "c": "Content-Type", "f": "From", "s": "Subject", "k": "Supported", "t": "To",
           "v": "Via", "o": "Event", "r": "Refer-To", "u": "Allow-Events", "x": "Session-Expires",
           "b": "Referred-By", "a": "Accept-Contact", "j": "Reject-Contact", "y": "Identity"}
_SPECIAL = {"call-id": "Call-ID", "cseq": "CSeq", "www-authenticate": "WWW-Authenticate",
            "mime-version": "MIME-Version", "rack": "RAck", "rseq": "RSeq"}
LIST_HEADERS = frozenset({"Via", "Contact", "Route", "Record-Route", "Allow", "Supported",
                          "Require", "Proxy-Require", "Unsupported", "Accept"})
REASONS = {
    100: "Trying", 180: "Ringing", 183: "Session Progress", 200: "OK",
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 407: "Proxy Authentication Required", 408: "Request Timeout",
    413: "Request Entity Too Large", 415: "Unsupported Media Type",
    416: "Unsupported URI Scheme", 420: "Bad Extension", 481: "Call/Transaction Does Not Exist",
    482: "Loop Detected", 483: "Too Many Hops", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 491: "Request Pending", 500: "Server Internal Error",
    501: "Not Implemented", 503: "Service Unavailable", 505: "Version Not Supported",
    513: "Message Too Large", 603: "Decline",
}
_METHOD = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_HEADER_NAME = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")


def canonical_name(name: str) -> str:
    lower = name.lower()
    if lower in COMPACT:
        return COMPACT[lower]
    return _SPECIAL.get(lower) or "-".join(p.capitalize() for p in lower.split("-"))


def malformed(what: str) -> SipError:
    return SipError(400, what, code="sip_malformed")


@dataclass(frozen=True)
class Headers:
    """Ordered (name, value) pairs under canonical names; lookups ignore case."""

    items: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, *pairs: tuple[str, str]) -> Headers:
        return cls(tuple((canonical_name(n), v) for n, v in pairs))

    def get(self, name: str) -> str | None:
        name = canonical_name(name)
        return next((v for n, v in self.items if n == name), None)

    def get_all(self, name: str) -> list[str]:
        """Every value of the header, comma-separated lists split for list headers."""
        name = canonical_name(name)
        values = [v for n, v in self.items if n == name]
        if name in LIST_HEADERS:
            return [item for v in values for item in split_list(v)]
        return values

    def without(self, *names: str) -> Headers:
        drop = {canonical_name(n) for n in names}
        return Headers(tuple((n, v) for n, v in self.items if n not in drop))

    def plus(self, *pairs: tuple[str, str]) -> Headers:
        return Headers(self.items + Headers.of(*pairs).items)

    def replaced(self, name: str, value: str) -> Headers:
        return self.without(name).plus((name, value))

    def serialize(self) -> str:
        return "".join(f"{n}: {v}\r\n" for n, v in self.items if n != "Content-Length")


@dataclass(frozen=True)
class _Message:
    headers: Headers
    body: bytes

    @property
    def call_id(self) -> str:
        return self.headers.get("Call-ID") or ""

    @property
    def cseq(self) -> CSeq:
        raw = self.headers.get("CSeq")
        if raw is None:
            raise malformed("missing CSeq header")
        return CSeq.parse(raw)

    @property
    def vias(self) -> list[Via]:
        return [Via.parse(v) for v in self.headers.get_all("Via")]

    @property
    def from_(self) -> NameAddr:
        return NameAddr.parse(self._required("From"), "From")

    @property
    def to(self) -> NameAddr:
        return NameAddr.parse(self._required("To"), "To")

    @property
    def content_type(self) -> str:
        return (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()

    def _required(self, name: str) -> str:
        value = self.headers.get(name)
        if value is None:
            raise malformed(f"missing {name} header")
        return value

    def _serialize(self, start_line: str) -> bytes:
        head = f"{start_line}\r\n{self.headers.serialize()}Content-Length: {len(self.body)}\r\n\r\n"
        return head.encode() + self.body


@dataclass(frozen=True)
class SipRequest(_Message):
    method: str = "OPTIONS"
    uri: str = ""

    def serialize(self) -> bytes:
        return self._serialize(f"{self.method} {self.uri} {SIP_VERSION}")

    @property
    def request_uri(self) -> SipUri:
        return SipUri.parse(self.uri)


@dataclass(frozen=True)
class SipResponse(_Message):
    status: int = 200
    reason: str = "OK"

    def serialize(self) -> bytes:
        return self._serialize(f"{SIP_VERSION} {self.status} {self.reason}")


SipMessage = SipRequest | SipResponse


def parse_message(data: bytes) -> SipMessage:
    head, body = _split_head(data)
    lines = _unfold(head)
    if not lines or not lines[0]:
        raise malformed("empty start line")
    headers = _parse_headers(lines[1:])
    body = _frame_body(headers, body)
    start = lines[0]
    if start.startswith("SIP/"):
        return _parse_status_line(start, headers, body)
    return _parse_request_line(start, headers, body)


def _split_head(data: bytes) -> tuple[str, bytes]:
    data = data.lstrip(b"\r\n")  # RFC 3261 7.5: ignore CRLFs before the start line
    for sep in (b"\r\n\r\n", b"\n\n"):
        index = data.find(sep)
        if index >= 0:
            head, body = data[:index], data[index + len(sep):]
            break
    else:
        raise malformed("no blank line after the headers")
    try:
        return head.decode("utf-8"), body
    except UnicodeDecodeError as exc:
        raise malformed(f"headers are not UTF-8 (byte {exc.start})") from None


def _unfold(head: str) -> list[str]:
    lines: list[str] = []
    for line in head.replace("\r\n", "\n").split("\n"):
        if line[:1] in (" ", "\t") and len(lines) > 1:
            lines[-1] += " " + line.strip()
        elif line[:1] in (" ", "\t"):
            raise malformed("continuation line without a header")
        else:
            lines.append(line)
    return lines


def _parse_headers(lines: list[str]) -> Headers:
    if len(lines) > MAX_HEADERS:
        raise malformed(f"more than {MAX_HEADERS} header lines")
    items = []
    for line in lines:
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not _HEADER_NAME.fullmatch(name):
            raise malformed(f"bad header line: {line[:60]!r}")
        items.append((canonical_name(name), value.strip()))
    return Headers(tuple(items))


def _frame_body(headers: Headers, rest: bytes) -> bytes:
    raw = headers.get("Content-Length")
    if raw is None:
        return rest
    length = ascii_int(raw, 9)
    if length is None:
        raise malformed(f"bad Content-Length: {raw[:20]!r}")
    if length > len(rest):
        raise malformed(f"Content-Length {length} but only {len(rest)} body bytes")
    return rest[:length]


def _parse_request_line(line: str, headers: Headers, body: bytes) -> SipRequest:
    parts = line.split(" ")
    if len(parts) != 3 or not _METHOD.fullmatch(parts[0]) or not parts[1]:
        raise malformed(f"bad request line: {line[:80]!r}")
    method, uri, version = parts
    if version.upper() != SIP_VERSION:
        raise SipError(505, f"SIP version {version[:20]!r} not supported", code="sip_version")
    return SipRequest(headers=headers, body=body, method=method, uri=uri)


def _parse_status_line(line: str, headers: Headers, body: bytes) -> SipResponse:
    version, _, rest = line.partition(" ")
    code, _, reason = rest.partition(" ")
    status = ascii_int(code, 3)
    if version.upper() != SIP_VERSION or status is None or not 100 <= status <= 699:
        raise malformed(f"bad status line: {line[:80]!r}")
    return SipResponse(headers=headers, body=body, status=status, reason=reason.strip())


def check_request(request: SipRequest) -> None:
    """RFC 3261 8.2: the headers every request needs, well-formed, consistent."""
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        if request.headers.get(name) is None:
            raise malformed(f"missing {name} header")
    request.from_, request.to, request.vias  # noqa: B018 - parse to validate
    if request.cseq.method != request.method:
        raise malformed(f"CSeq method {request.cseq.method!r} does not match {request.method!r}")
    forwards = request.headers.get("Max-Forwards")
    if forwards is not None and ascii_int(forwards, 3) is None:
        raise malformed(f"bad Max-Forwards: {forwards[:20]!r}")
    if forwards == "0" and request.method not in ("ACK", "CANCEL"):
        raise SipError(483, "Max-Forwards reached 0", code="sip_too_many_hops")
    request.request_uri  # noqa: B018 - 416 for a non-SIP URI


def response_to(request: SipRequest, status: int, reason: str | None = None,
                to_tag: str | None = None, headers: tuple[tuple[str, str], ...] = (),
                body: bytes = b"") -> SipResponse:
    """A response copying Via, From, To (with our tag), Call-ID and CSeq (RFC 3261 8.2.6),
    and Record-Route when it sets up a dialog (12.1.1), so that the caller's ACK and BYE
    follow a proxy that recorded its route."""
    copied = [(n, v) for n, v in request.headers.items
              if n in ("Via", "From", "Call-ID", "CSeq")]
    if request.method == "INVITE" and 100 < status < 300:
        copied += [("Record-Route", v) for v in request.headers.get_all("Record-Route")]
    to = request.headers.get("To")
    if to is not None:
        if to_tag and status > 100 and ";tag=" not in to.replace(" ", "").lower():
            to = f"{to};tag={to_tag}"
        copied.insert(2, ("To", to))
    return SipResponse(headers=Headers(tuple(copied)).plus(*headers), body=body, status=status,
                       reason=reason or REASONS.get(status, "Unknown"))


def with_received(request: SipRequest, host: str, port: int) -> SipRequest:
    """Stamp the top Via with `received` and `rport` (RFC 3261 18.2.1, RFC 3581)."""
    vias = request.headers.get_all("Via")
    if not vias:
        return request
    top = Via.parse(vias[0])
    params = top.params
    if top.host != host:
        params = tuple(p for p in params if p[0] != "received") + (("received", host),)
    if any(k == "rport" for k, _ in params):
        params = tuple((k, str(port) if k == "rport" else v) for k, v in params)
    stamped = replace(top, params=params).serialize()
    items = [(n, v) for n, v in request.headers.items if n != "Via"]
    via_items = [("Via", stamped)] + [("Via", v) for v in vias[1:]]
    return replace(request, headers=Headers(tuple(via_items + items)))
