"""Structured SIP header values (RFC 3261 section 20, 25.1): URIs, name-addr headers
(From, To, Contact), Via, CSeq, and comma-separated header lists.

Each is a frozen dataclass with `parse(text)` and `serialize()`; malformed text
raises `SipError(400)` naming the header.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from voice.errors import SipError

_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._]+)(?::([0-9]{1,5}))?")
Params = tuple[tuple[str, str | None], ...]


def ascii_int(text: str, max_digits: int) -> int | None:
    """`text` as a number if it is 1 to `max_digits` ASCII digits, else None.

    `str.isdigit()` is not enough on the wire: it accepts "²" and "٣", which `int()`
    refuses or reads, and any length."""
    if 0 < len(text) <= max_digits and text.isascii() and text.isdigit():
        return int(text)
    return None


def bad(header: str, text: str) -> SipError:
    return SipError(400, f"malformed {header} header: {text[:80]!r}", code="sip_malformed")


def split_list(value: str) -> list[str]:
    """Split a comma-separated header value, respecting quotes and <...>."""
    parts, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(value):
        if ch == '"' and (i == 0 or value[i - 1] != "\\"):
            quoted = not quoted
        elif not quoted and ch == "<":
            depth += 1
        elif not quoted and ch == ">":
            depth = max(0, depth - 1)
        elif ch == "," and not quoted and depth == 0:
            parts.append(value[start:i].strip())
            start = i + 1
    parts.append(value[start:].strip())
    return [p for p in parts if p]


def parse_params(text: str, header: str) -> Params:
    """`;a=b;c` into (("a", "b"), ("c", None)); names lower-cased."""
    params: list[tuple[str, str | None]] = []
    for raw in text.split(";"):
        raw = raw.strip()
        if not raw:
            continue
        name, eq, value = raw.partition("=")
        name = name.strip().lower()
        if not _TOKEN.fullmatch(name):
            raise bad(header, text)
        params.append((name, value.strip() if eq else None))
    return tuple(params)


def serialize_params(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


def get_param(params: Params, name: str) -> str | None:
    return next((v or "" for k, v in params if k == name), None)


def has_param(params: Params, name: str) -> bool:
    return any(k == name for k, _ in params)


def set_param(params: Params, name: str, value: str | None) -> Params:
    return tuple((k, v) for k, v in params if k != name) + ((name, value),)


def parse_host_port(text: str, header: str) -> tuple[str, int | None]:
    match = _HOST_PORT.fullmatch(text.strip())
    if not match:
        raise bad(header, text)
    port = int(match.group(2)) if match.group(2) else None
    if port is not None and not 0 < port < 65536:
        raise bad(header, text)
    return match.group(1), port


@dataclass(frozen=True)
class SipUri:
    host: str
    user: str | None = None
    port: int | None = None
    scheme: str = "sip"
    params: Params = ()
    password: str | None = None

    @classmethod
    def parse(cls, text: str) -> SipUri:
        scheme, colon, rest = text.strip().partition(":")
        if not colon or scheme.lower() not in ("sip", "sips"):
            raise SipError(416, f"unsupported URI scheme: {text[:80]!r}", code="sip_uri_scheme")
        rest = rest.split("?", 1)[0]
        userinfo, at, hostpart = rest.rpartition("@")
        hostport, _, params = hostpart.partition(";")
        host, port = parse_host_port(hostport, "URI")
        user, _, password = userinfo.partition(":") if at else ("", "", "")
        if at and not user:
            raise bad("URI", text)
        return cls(host=host, user=user or None, port=port, scheme=scheme.lower(),
                   params=parse_params(params, "URI"), password=password or None)

    def serialize(self) -> str:
        user = "" if self.user is None else (
            self.user + (f":{self.password}" if self.password else "") + "@")
        port = "" if self.port is None else f":{self.port}"
        return f"{self.scheme}:{user}{self.host}{port}{serialize_params(self.params)}"

    def __str__(self) -> str:
        return self.serialize()

    def address(self, default_port: int = 5060) -> tuple[str, int]:
        return self.host.strip("[]"), self.port or default_port


@dataclass(frozen=True)
class NameAddr:
    """From, To, Contact, Route: `"Display" <uri>;params` or `uri;params`."""

    uri: SipUri
    display: str = ""
    params: Params = ()

    @classmethod
    def parse(cls, text: str, header: str = "From") -> NameAddr:
        text = text.strip()
        if "<" in text:
            display, _, rest = text.partition("<")
            uri_text, close, params = rest.partition(">")
            if not close:
                raise bad(header, text)
            display = display.strip().strip('"')
        else:
            display = ""
            uri_text, _, params = text.partition(";")
            params = ";" + params if params else ""
        return cls(uri=SipUri.parse(uri_text), display=display,
                   params=parse_params(params, header))

    def serialize(self) -> str:
        display = f'"{self.display}" ' if self.display else ""
        return f"{display}<{self.uri.serialize()}>{serialize_params(self.params)}"

    @property
    def tag(self) -> str | None:
        return get_param(self.params, "tag")

    def with_tag(self, tag: str) -> NameAddr:
        return replace(self, params=set_param(self.params, "tag", tag))


@dataclass(frozen=True)
class Via:
    host: str
    port: int | None = None
    transport: str = "UDP"
    params: Params = field(default=())

    @classmethod
    def parse(cls, text: str) -> Via:
        protocol, _, rest = text.strip().partition(" ")
        parts = [p.strip() for p in protocol.split("/")]
        if len(parts) != 3 or parts[0].upper() != "SIP" or parts[1] != "2.0":
            raise bad("Via", text)
        sent_by, _, params = rest.strip().partition(";")
        host, port = parse_host_port(sent_by, "Via")
        return cls(host=host, port=port, transport=parts[2].upper(),
                   params=parse_params(params, "Via"))

    def serialize(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        return f"SIP/2.0/{self.transport} {self.host}{port}{serialize_params(self.params)}"

    @property
    def branch(self) -> str:
        return get_param(self.params, "branch") or ""


@dataclass(frozen=True)
class CSeq:
    number: int
    method: str

    @classmethod
    def parse(cls, text: str) -> CSeq:
        raw, _, method = text.strip().partition(" ")
        method = method.strip()
        number = ascii_int(raw, 10)
        if number is None or number >= 2**31 or not _TOKEN.fullmatch(method):
            raise bad("CSeq", text)
        return cls(number, method)

    def serialize(self) -> str:
        return f"{self.number} {self.method}"


def iter_name_addrs(values: list[str], header: str) -> Iterator[NameAddr]:
    for value in values:
        for item in split_list(value):
            if item != "*":
                yield NameAddr.parse(item, header)
