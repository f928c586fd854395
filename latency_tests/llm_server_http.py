"""The HTTP/1.1 side of the fake LLM server: sans-I/O wire types, then a thin asyncio adapter.

Theory of operation: the server reads one request head (everything up to and
including the blank line, RFC 9112 section 2.1) and hands the bytes to
`RequestHead.parse`. The head says how many body bytes follow (Content-Length
only; chunked request bodies are refused) and whether the connection may be
reused. Responses are built as bytes with `ResponseHead.serialize` and, for
streamed bodies, framed with `encode_chunk` / `LAST_CHUNK` (RFC 9112 section 7.1).
The wire types touch no sockets, clocks or event loop; only `serve_connection`
and `HttpResponse` at the bottom do I/O, on asyncio streams.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Self

MAX_BODY_BYTES = 8 * 1024 * 1024
LAST_CHUNK = b"0\r\n\r\n"

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(r"HTTP/1\.[01]")
_TARGET = re.compile(r"/[\x21-\x7e]*")
_DIGITS = re.compile(r"[0-9]+")

Headers = tuple[tuple[str, str], ...]


class ProtocolError(ValueError):
    """A request that cannot be understood; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RequestHead:
    """Request line and header fields of one HTTP/1.x request; names are lower-cased."""

    method: str
    target: str
    version: str
    headers: Headers
    content_length: int = 0

    @classmethod
    def parse(cls, data: bytes) -> Self:
        """Parse a head that ends with CRLF CRLF; raise `ProtocolError` naming the fault."""
        # RFC 9112 section 2.2: ignore empty lines before the request line.
        text = data.lstrip(b"\r\n").decode("latin-1")
        if not text.endswith("\r\n\r\n"):
            raise ProtocolError("request head does not end with an empty line")
        request_line, *field_lines = text[:-4].split("\r\n")
        method, target, version = _parse_request_line(request_line)
        headers = tuple(_parse_field_line(line) for line in field_lines)
        head = cls(method=method, target=target, version=version, headers=headers)
        if version == "HTTP/1.1" and head.header("host") is None:
            raise ProtocolError("HTTP/1.1 request without a Host header")
        if head.header("transfer-encoding") is not None:
            raise ProtocolError("chunked request bodies are not supported; send Content-Length")
        length = _parse_content_length(head.header("content-length"))
        return cls(method, target, version, headers, length)

    def header(self, name: str) -> str | None:
        """The value of header `name`, or None; repeated fields are joined with commas."""
        values = [value for key, value in self.headers if key == name]
        return ", ".join(values) if values else None

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def keep_alive(self) -> bool:
        """HTTP/1.1 persists unless told otherwise; HTTP/1.0 connections are always closed."""
        tokens = {token.strip().lower() for token in (self.header("connection") or "").split(",")}
        return self.version == "HTTP/1.1" and "close" not in tokens


@dataclass(frozen=True)
class ResponseHead:
    status: int
    headers: Headers

    def serialize(self) -> bytes:
        try:
            reason = HTTPStatus(self.status).phrase
        except ValueError:
            reason = "Unknown"
        lines = [f"HTTP/1.1 {self.status} {reason}"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def encode_chunk(data: bytes) -> bytes:
    """Frame `data` as one chunk; empty data would end the body, so it is rejected."""
    if not data:
        raise ValueError("an empty chunk would terminate the body; send LAST_CHUNK instead")
    return b"%X\r\n%s\r\n" % (len(data), data)


def _parse_request_line(line: str) -> tuple[str, str, str]:
    parts = line.split(" ")
    if len(parts) != 3:
        raise ProtocolError(f"malformed request line {line[:80]!r}")
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        raise ProtocolError(f"invalid method {method[:40]!r}")
    if not _TARGET.fullmatch(target):
        raise ProtocolError(f"invalid request target {target[:80]!r}")
    if not _VERSION.fullmatch(version):
        raise ProtocolError(f"unsupported HTTP version {version[:20]!r}")
    return method, target, version


def _parse_content_length(value: str | None) -> int:
    if value is None:
        return 0
    # Repeated identical values are allowed (RFC 9110 section 8.6); differing ones are not.
    lengths = {part.strip() for part in value.split(",")}
    if len(lengths) != 1 or not _DIGITS.fullmatch(length := lengths.pop()):
        raise ProtocolError(f"invalid Content-Length {value[:40]!r}")
    if len(length) > 12 or int(length) > MAX_BODY_BYTES:
        raise ProtocolError(
            f"request body of {length} bytes exceeds {MAX_BODY_BYTES}",
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
        )
    return int(length)


def _parse_field_line(line: str) -> tuple[str, str]:
    name, colon, value = line.partition(":")
    if not colon or not _TOKEN.fullmatch(name):
        raise ProtocolError(f"malformed header line {line[:80]!r}")
    if "\r" in value or "\n" in value or "\0" in value:
        raise ProtocolError(f"forbidden character in header {name!r}")
    return name.lower(), value.strip(" \t")


# --- asyncio adapter -------------------------------------------------------------------------


Handler = Callable[[RequestHead, bytes, "HttpResponse"], Awaitable[None]]


async def serve_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handler: Handler
) -> None:
    """Pass each request on the connection to `handler` until either side ends the connection.

    A request that cannot be parsed is answered here with its `ProtocolError` status.
    """
    while True:
        try:
            request = await _read_request(reader)
        except ProtocolError as exc:
            response = HttpResponse(reader, writer, None)
            await response.send_error(exc.status, str(exc), "invalid_request_error")
            return
        if request is None:
            return
        head, body = request
        response = HttpResponse(reader, writer, head)
        await handler(head, body, response)
        if not response.keep_alive:
            return


async def _read_request(reader: asyncio.StreamReader) -> tuple[RequestHead, bytes] | None:
    """The next request on the connection, or None if the client closed it between requests."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise ProtocolError("connection closed inside the request head") from exc
    except asyncio.LimitOverrunError as exc:
        too_large = HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
        raise ProtocolError("request head too large", too_large) from exc
    head = RequestHead.parse(raw)
    try:
        return head, await reader.readexactly(head.content_length)
    except asyncio.IncompleteReadError as exc:
        raise ProtocolError("connection closed inside the request body") from exc


class HttpResponse:
    """Writes the response to `head` (None: a request too broken to parse).

    `keep_alive` turns False once the connection must close after this response.
    """

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: RequestHead | None
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.keep_alive = head is not None and head.keep_alive
        self._chunked = head is not None and head.version == "HTTP/1.1"

    async def send_json(
        self,
        status: int,
        payload: object,
        headers: Sequence[tuple[str, str]] = (),
        *,
        cut_short: bool = False,
    ) -> None:
        """Send `payload`; `cut_short` sends half the body and gives up the connection."""
        body = json.dumps(payload).encode()
        length = ("content-length", str(len(body)))
        head = ResponseHead(status, (*self._common("application/json"), length, *headers))
        if cut_short:
            self.keep_alive = False
            body = body[: len(body) // 2]
        await self._write(head.serialize() + body)

    async def send_error(
        self,
        status: int,
        message: str,
        error_type: str,
        code: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        """An error body in OpenAI's shape: {"error": {message, type, param, code}}."""
        error = {"message": message, "type": error_type, "param": None, "code": code}
        await self.send_json(status, {"error": error}, headers)

    async def send_page(self, status: int, body: bytes, content_type: str) -> None:
        """Any other body (an HTML error page from a proxy, say)."""
        length = ("content-length", str(len(body)))
        await self._write(ResponseHead(status, (*self._common(content_type), length))
                          .serialize() + body)

    async def start_events(self) -> None:
        """Send the head of a server-sent event stream."""
        if not self._chunked:  # HTTP/1.0: the body ends when the connection closes
            self.keep_alive = False
        framing = (("transfer-encoding", "chunked"),) if self._chunked else ()
        common = self._common("text/event-stream; charset=utf-8")
        head = ResponseHead(200, (*common, ("cache-control", "no-cache"), *framing))
        await self._write(head.serialize())

    async def send_event(self, data: str) -> None:
        event = f"data: {data}\n\n".encode()
        await self._write(encode_chunk(event) if self._chunked else event)

    async def end_events(self) -> None:
        if self._chunked:
            await self._write(LAST_CHUNK)

    async def wait_for_disconnect(self) -> None:
        """Answer nothing; return once the client closes its side. Anything it sends is dropped."""
        self.keep_alive = False
        while await self._reader.read(65536):
            pass

    def _common(self, content_type: str) -> Headers:
        return (
            ("content-type", content_type),
            ("connection", "keep-alive" if self.keep_alive else "close"),
            ("x-request-id", f"req_{uuid.uuid4().hex}"),
        )

    async def _write(self, data: bytes) -> None:
        self._writer.write(data)
        await self._writer.drain()
