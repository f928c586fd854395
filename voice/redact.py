"""Secrets out of what the service shows: URLs with credentials in them, and text that
would forge log lines.

`redact_url` keeps a URL's scheme, host, port and path, and replaces its user
information (`https://user:secret@host/v1`) and the values of query parameters that
look like credentials (`?api_key=...`) with `***`. `scrub` does the same to every URL
inside a longer text (a log line, an error message). `one_line` escapes control
characters (CR, LF, the Unicode line separators, others) so that caller-controlled text
cannot start a new log line.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
_SECRET_PARAMS = re.compile(r"(key|token|secret|password|passwd|pwd|auth|sig|signature"
                            r"|credential)", re.IGNORECASE)
_URL_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")
_URL_QUERY_SECRET = re.compile(
    r"(?P<name>[?&](?:[A-Za-z_]*(?:key|token|secret|password|sig)[A-Za-z_]*))=(?P<value>[^&\s]+)",
    re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def redact_url(url: str) -> str:
    """`url` without the secrets it may carry; "" stays ""."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return scrub(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK if _SECRET_PARAMS.search(k) else v) for k, v in pairs],
                          safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def scrub(text: str) -> str:
    """`text` with the credentials of every URL in it masked."""
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    return _URL_QUERY_SECRET.sub(lambda m: f"{m['name']}={MASK}", text)


def one_line(text: str) -> str:
    """Control characters escaped (\\n, \\r, \\x1b, \\u2028...): one line, whatever the
    text came from."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
