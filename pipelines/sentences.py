"""Splits a streamed reply into speakable pieces, as soon as each is complete.

A piece ends at a sentence end (. ! ? followed by space) that is not an abbreviation
or a decimal point, or at a newline. The *first* piece of a reply may also end at a
clause boundary (, ; : or a dash) once it has `first_clause_words` words: speaking the
first clause at once hides most of the LLM's generation time. Any piece longer than
`max_chars` is cut at its last space.
"""

from __future__ import annotations

import re

_ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "approx",
    "fig", "inc", "ltd", "co", "mt", "ave",
})
_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*\s|\n+")
_CLAUSE_END = re.compile(r"[,;:]\s|\s[-–—]\s")


class SentenceSplitter:
    def __init__(self, first_clause_words: int = 2, max_chars: int = 240) -> None:
        self._buffer = ""
        self._emitted = 0
        self._first_clause_words = first_clause_words
        self._max_chars = max_chars

    def push(self, delta: str) -> list[str]:
        self._buffer += delta
        pieces: list[str] = []
        while (piece := self._next_piece()) is not None:
            pieces.append(piece)
        return pieces

    def flush(self) -> list[str]:
        rest, self._buffer = self._buffer.strip(), ""
        return [rest] if _speakable(rest) else []

    def _next_piece(self) -> str | None:
        cut = self._sentence_cut()
        if cut is None and self._emitted == 0:
            cut = self._clause_cut()
        too_long = len(self._buffer[:cut].rstrip()) > self._max_chars if cut else False
        if too_long or (cut is None and len(self._buffer) > self._max_chars):
            space = self._buffer.rfind(" ", 0, self._max_chars + 1)
            cut = space if space > 0 else self._max_chars
        if cut is None:
            return None
        piece, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:]
        if not _speakable(piece):
            return self._next_piece() if self._buffer.strip() else None
        self._emitted += 1
        return piece

    def _sentence_cut(self) -> int | None:
        for match in _SENTENCE_END.finditer(self._buffer):
            before = self._buffer[: match.start()]
            last_word = before.rsplit(None, 1)[-1].lower() if before.split() else ""
            if match.group().startswith(".") and (
                last_word.rstrip(".") in _ABBREVIATIONS
                or (last_word[-1:].isdigit() and self._buffer[match.end():][:1].isdigit())
            ):
                continue
            return match.end()
        return None

    def _clause_cut(self) -> int | None:
        for match in _CLAUSE_END.finditer(self._buffer):
            if len(self._buffer[: match.start()].split()) >= self._first_clause_words:
                return match.end()
        return None


def _speakable(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


def clean_for_speech(text: str) -> str:
    """Strip markdown and symbols a voice should not read out."""
    text = re.sub(r"[*_`#>|~]+", " ", text)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[\U0001F000-\U0001FAFF\u2600-\u27BF\u2B00-\u2BFF]", " ", text)
    text = re.sub(r"[\uFE00-\uFE0F\u200D\u20E3]", "", text)  # emoji selectors, joiners
    return " ".join(text.split())
