"""Reply audio to a telephony provider that buffers it, and what the caller has heard.

Twilio and Telnyx queue the audio we send and play it to the caller at their own
pace; we learn how far playback has got only from the `mark` messages they echo when
the audio before a mark has been played. So this playout:
- sends 20 ms `media` messages while fewer than `lead_ms` of them are unheard (by
  the marks, not by our own clock: audio waiting in the provider's buffer counts);
- sends a `mark` after a reply's first chunk, every `segment_ms` of audio, and when
  its queue runs dry (the end of a reply segment);
- counts as heard the audio up to the newest mark echoed, plus the time since then
  at real time, never past the next mark not yet echoed. A mark not echoed
  `MARK_GRACE_NS` after it should have played counts as played (a provider that
  does not echo marks still gets a working session, with our clock's estimate);
- calls a reply's `on_first_send` when its first chunk has been heard (the echo of
  the mark after it, less the audio between), so `first_audio_out`, and with it the
  voice-to-voice figure, counts the provider's buffer;
- on `clear()` (barge-in) sends `clear`, so the provider drops what it still holds,
  and forgets the unheard audio; on `pause()` does the same but keeps the unheard
  audio queued, so that `resume()` plays it from where the caller stopped hearing.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from voice.clock import Clock
from voice.playout import Playout

MARK_GRACE_NS = 2_000_000_000
NS = 1_000_000_000


class StreamSink(Protocol):
    """The provider's side of the stream: each call queues one message (never blocks)."""

    def media(self, pcm: bytes) -> None: ...

    def mark(self, name: str) -> None: ...

    def clear(self) -> None: ...


@dataclass
class _Mark:
    name: str
    position: int  # sent samples before it
    due_ns: int  # when it would have played, by our clock, if the provider adds nothing


@dataclass
class _FirstHeard:
    callback: Callable[[int], None]
    position: int  # where the reply's first chunk starts
    sent_ns: int


async def _nothing(chunk: bytes) -> None:
    raise RuntimeError("MarkedPlayout sends through its StreamSink")


class MarkedPlayout(Playout):
    def __init__(self, sink: StreamSink, sample_rate: int, clock: Clock, lead_ms: int = 200,
                 segment_ms: int = 100) -> None:
        super().__init__(_nothing, sample_rate, clock, lead_ms=lead_ms)
        self._sink = sink
        self._segment = sample_rate * segment_ms // 1000
        self._marks: deque[_Mark] = deque()
        self._unheard: deque[tuple[int, bytes]] = deque()  # (start, chunk) sent, not heard
        self._heard = 0  # samples confirmed heard (by a mark)
        self._anchor = (0, 0)  # (samples, ns): playback was at this sample at this time
        self._marked_at = 0  # sent samples at the last mark
        self._first: _FirstHeard | None = None
        self._names = 0
        self.marks_sent = 0
        self.marks_echoed = 0
        self.clears_sent = 0

    # -- what the caller has heard ------------------------------------------------------
    def played_samples(self) -> int:
        now = self._clock.now_ns()
        self._expire(now)
        limit = self._marks[0].position if self._marks else self.sent_samples
        since = max(0, now - self._anchor[1]) * self.sample_rate // NS
        return max(self._heard, min(limit, self._anchor[0] + since))

    @property
    def speaking(self) -> bool:
        return bool(self._queue) or self.played_samples() < self.sent_samples

    def on_mark(self, name: str, now_ns: int) -> None:
        """The provider echoed mark `name`: the audio before it has been played (or,
        after a `clear`, dropped: those names are forgotten already and ignored)."""
        if not any(m.name == name for m in self._marks):
            return
        self.marks_echoed += 1
        while self._marks:
            mark = self._marks.popleft()
            if mark.name == name:
                self._confirm(mark.position, now_ns)
                return

    def _expire(self, now: int) -> None:
        while self._marks and self._marks[0].due_ns + MARK_GRACE_NS < now:
            mark = self._marks.popleft()
            self._confirm(mark.position, mark.due_ns)

    def _confirm(self, position: int, at_ns: int) -> None:
        self._heard = max(self._heard, position)
        self._anchor = (position, at_ns)
        while self._unheard and self._unheard[0][0] + len(self._unheard[0][1]) // 2 <= position:
            self._unheard.popleft()
        first = self._first
        if first is not None and position > first.position:
            self._first = None
            heard_ns = at_ns - (position - first.position) * NS // self.sample_rate
            first.callback(max(first.sent_ns, heard_ns))

    # -- sending -----------------------------------------------------------------------
    def _account(self, chunk: bytes, now: int) -> None:
        mark_after = False
        if self.on_first_send is not None:
            self._first = _FirstHeard(self.on_first_send, self.sent_samples, now)
            self.on_first_send = None
            mark_after = True
        if self.played_samples() >= self.sent_samples:  # the provider's buffer ran dry
            self._anchor = (self.sent_samples, now)
        self._unheard.append((self.sent_samples, chunk))
        super()._account(chunk, now)
        self._sink.media(chunk)
        if mark_after or self.sent_samples - self._marked_at >= self._segment:
            self._mark()

    def _mark(self) -> None:
        if self.sent_samples == self._marked_at:
            return
        self._names += 1
        name = f"m{self._names}"
        self._marks.append(_Mark(name, self.sent_samples, self._play_end_ns))
        self._marked_at = self.sent_samples
        self.marks_sent += 1
        self._sink.mark(name)

    async def run(self) -> None:
        """Send queued audio forever, `lead_ms` ahead of what the caller has heard."""
        while True:
            if not self._queue or self.paused:
                self._mark()  # the end of a reply segment
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            ahead_ns = (self.sent_samples - self.played_samples()) * NS // self.sample_rate
            if ahead_ns > self._lead_ns:
                await asyncio.sleep(min(0.02, (ahead_ns - self._lead_ns) / 1e9))
                continue
            self._account(self._queue.popleft(), self._clock.now_ns())

    # -- stopping ----------------------------------------------------------------------
    def clear(self) -> None:
        """Barge-in: drop the queue and what the provider still buffers."""
        heard = self._drop_unheard(keep_first=False)
        super().clear()
        self.enqueued_samples -= self.sent_samples - heard
        self.sent_samples = heard
        self._unheard.clear()

    def pause(self) -> None:
        """Stop the caller hearing more at once; `resume()` goes on from there."""
        if self.paused:
            return
        super().pause()
        heard = self._drop_unheard(keep_first=True)
        unheard = [(start, chunk) for start, chunk in self._unheard
                   if start + len(chunk) // 2 > heard]
        for start, chunk in reversed(unheard):
            self._queue.appendleft(chunk[max(0, heard - start) * 2:])
        self.sent_samples = heard
        self._unheard.clear()

    def _drop_unheard(self, keep_first: bool) -> int:
        """Tell the provider to drop its buffer; returns what the caller heard. A reply
        whose first chunk was heard gets its `first_audio_out` now; one not heard yet
        keeps waiting (`keep_first`: its audio is sent again) or never gets one."""
        now = self._clock.now_ns()
        heard = min(self.played_samples(), self.sent_samples)
        if self.sent_samples > self._heard:
            self._sink.clear()
            self.clears_sent += 1
        first = self._first
        if first is not None and (heard > first.position or not keep_first):
            self._first = None
            if heard > first.position:
                first.callback(max(first.sent_ns,
                                   now - (heard - first.position) * NS // self.sample_rate))
        self._marks.clear()
        self._heard = heard
        self._anchor = (heard, now)
        self._marked_at = heard
        self._play_end_ns = now
        return heard
