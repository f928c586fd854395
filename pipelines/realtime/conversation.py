"""Our record of the conversation held at the realtime provider: the story so far
(replayed to a new connection after a reconnect), and which provider input item is
which of our turns, so transcripts and audio lengths land on the right turn."""

from __future__ import annotations

from typing import Any, Literal

from voice.events import TranscriptFinal

Role = Literal["user", "assistant"]
HISTORY_TURNS = 40  # messages kept for a replay, and turns kept in each book


class Conversation:
    def __init__(self) -> None:
        self.history: list[tuple[Role, str]] = []
        self.last_user_item: str | None = None
        self._since_mark = 0  # messages remembered since the last turn was committed
        self._turn_of: dict[str, int] = {}  # provider input item → our turn
        self._start_ms: dict[str, int] = {}  # provider VAD: item → audio_start_ms
        self._audio_ms: dict[int, float] = {}  # turn → length of the audio it committed
        self._forgotten: dict[str, None] = {}  # user items a continuation took back

    def remember(self, role: Role, text: str) -> None:
        if text:
            self.history = [*self.history, (role, text)][-HISTORY_TURNS:]
            self._since_mark += 1

    def mark(self) -> None:
        """A turn was committed: a continuation forgets from here."""
        self._since_mark = 0

    def forget(self, reply_item: str | None) -> list[str]:
        """A continuation takes back the last turn and the reply to it: the provider
        items to delete; their messages leave the history."""
        items = [item for item in (reply_item, self.last_user_item) if item is not None]
        for item in items:
            self._forgotten[item] = None
        _bound(self._forgotten)
        if self._since_mark:
            del self.history[-self._since_mark:]
            self._since_mark = 0
        return items

    def speech_started(self, item_id: str, turn_id: int, audio_start_ms: int) -> None:
        """Provider VAD: the input item of a new turn."""
        self._turn_of[item_id] = turn_id
        self._start_ms[item_id] = audio_start_ms
        for book in (self._turn_of, self._start_ms, self._audio_ms):
            _bound(book)  # transcripts that never came

    def speech_stopped(self, item_id: str, audio_end_ms: int, turn_id: int) -> None:
        start = self._start_ms.pop(item_id, audio_end_ms)
        self._audio_ms[self._turn_of.get(item_id, turn_id)] = audio_end_ms - start

    def committed_audio(self, turn_id: int, audio_ms: float) -> None:
        """Local VAD: the length of the audio this turn committed."""
        self._audio_ms[turn_id] = audio_ms
        _bound(self._audio_ms)

    def input_committed(self, item_id: str, turn_id: int) -> None:
        self.last_user_item = item_id
        self._turn_of.setdefault(item_id, turn_id)

    def transcribed(self, item_id: str, transcript: str, turn_id: int) -> TranscriptFinal | None:
        """The provider's transcript of an input item: remembered unless a continuation
        took it back; the event for the turn it belongs to (None: no words)."""
        text = transcript.strip()
        if item_id not in self._forgotten:
            self.remember("user", text)
        if not text:
            return None
        turn = self._turn_of.pop(item_id, turn_id)
        return TranscriptFinal(turn_id=turn, text=text,
                               audio_ms=round(self._audio_ms.pop(turn, 0)))


def _bound(book: dict[Any, Any]) -> None:
    """Forget the oldest entries beyond HISTORY_TURNS (dicts keep insertion order)."""
    while len(book) > HISTORY_TURNS:
        del book[next(iter(book))]
