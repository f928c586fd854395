"""The browser side of the service: the widget's files and the demo page, read-only.

`GET /` is the demo page (clients/web/index.html); `GET /widget/NAME` serves the files
of clients/web/ (the widget script, its AudioWorklet module). Names are looked up in
the folder's listing, never joined onto a path, so nothing outside it can be read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

WEB_ROOT = Path(__file__).resolve().parents[1] / "clients" / "web"
WIDGET_PREFIX = "/widget/"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
}


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str


class StaticFiles:
    def __init__(self, root: Path = WEB_ROOT) -> None:
        self._files = {p.name: p for p in root.iterdir()
                       if p.is_file() and p.suffix in CONTENT_TYPES} if root.is_dir() else {}

    def lookup(self, path: str) -> StaticFile | None:
        """The file served at this request path (no query), or None."""
        if path == "/":
            name = "index.html"
        elif path.startswith(WIDGET_PREFIX):
            name = path[len(WIDGET_PREFIX):]
        else:
            return None
        file = self._files.get(name)
        if file is None:
            return None
        return StaticFile(file.read_bytes(), CONTENT_TYPES[file.suffix])
