"""The media clock: one thread sends the RTP of every call at absolute deadlines.

Why a thread: the event loop runs every session's pipeline, and when faster-whisper
and Piper keep both cores busy a callback on it can start tens of milliseconds late;
a media clock that is a task on that loop is late with it. This thread does nothing
but sleep until the next deadline and, for each call due, take the next packet of
reply audio and send it, so the OS wakes it on time and it needs the GIL for a few
microseconds per packet. Calls with the same packet time share a grid of deadlines,
so 30 calls cost one wake-up per 20 ms, not 30. Other processes, and the model
threads, still compete with it for the CPU; with `priority` > 0 the thread asks for
real-time scheduling (SCHED_FIFO at that priority, as FreeSWITCH's `-rp` does for its
timer), which Linux grants with CAP_SYS_NICE or an RLIMIT_RTPRIO; without it the
clock runs at normal priority and says so once.

Thread-safety: a call's `RtpOut` holds a lock over its plan, numbering and figures
(the loop changes the plan on re-INVITE; the clock ticks). Reply audio comes from a
`SharedPlayout`, the session's playout with every method under one lock, so a
barge-in's `clear()` (or a backchannel's `pause()`) on the loop and the clock's
`pull()` never interleave: the first tick after `clear()` returns sends silence.
The first-send callback of a reply (the `first_audio_out` stamp) runs on the loop,
with the time the clock took the audio.

Keypad digits the assistant presses (`send_digits`, RFC 4733) go out on the same
clock and numbering: while a digit's event packets are sent the reply audio waits
(it is not dropped), the audio timestamp moves on with the time, and a short gap of
ordinary packets separates one digit from the next.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from voice.clock import MONOTONIC, Clock
from voice.errors import ProtocolError
from voice.playout import Playout
from wire.rtp.dtmf import event_payloads
from wire.rtp.plan import MediaPlan
from wire.rtp.stream import OutboundStream, PullChunk

log = logging.getLogger(__name__)

MAX_CATCH_UP = 3  # packets sent back to back after a short stall; beyond it, skip
DIGIT_MS = 100  # how long each pressed key sounds (RFC 4733 event duration)
DIGIT_GAP_MS = 60  # ordinary packets between two keys
MAX_PENDING_DIGITS = 64
FirstSend = Callable[[int], None]


@dataclass
class ClockStats:
    packets: int = 0
    gaps: int = 0  # ticks sent more than one packet time late
    max_late_ms: float = 0.0
    send_errors: int = 0


class RtpOut:
    """One call's outgoing RTP, ticked by the media clock thread."""

    def __init__(self, sock: socket.socket, plan: MediaPlan, pull: PullChunk) -> None:
        self.outbound = OutboundStream(plan)
        self.stats = ClockStats()
        self.due_ns = 0
        self._sock = sock
        self._pull = pull
        self._lock = threading.Lock()
        self._closed = False
        # (event payload, marker, starts a key) per tick; None: an ordinary packet
        self._keys: deque[tuple[bytes, bool, bool] | None] = deque()
        self._pending_digits = 0
        self._event_timestamp = 0

    @property
    def period_ns(self) -> int:
        return self.outbound.plan.ptime * 1_000_000

    def update(self, plan: MediaPlan) -> None:
        with self._lock:
            self.outbound.plan = plan

    def tick(self, now_ns: int) -> None:
        """Send the packet due at `due_ns` (or note it skipped when not sending)."""
        with self._lock:
            period = self.period_ns
            if self._closed:
                self.due_ns += period
                return
            late = now_ns - self.due_ns
            self.stats.max_late_ms = max(self.stats.max_late_ms, late / 1e6)
            if late > period:
                self.stats.gaps += 1
            if late > MAX_CATCH_UP * period:  # a long stall: skip ahead rather than burst
                skipped = late // period
                self.outbound.skip(skipped)
                self.due_ns += skipped * period
            self.due_ns += period
            self._send()

    def send_digits(self, digits: str) -> float:
        """Queue keypad digits (checked: 0-9 * # A-D) after any still queued; returns
        how many seconds until the last has been sent. `ProtocolError` when the peer
        did not offer telephone-event or too many digits are waiting."""
        with self._lock:
            plan = self.outbound.plan
            if plan.dtmf_payload_type is None:
                raise ProtocolError("the phone did not offer telephone-event (RFC 4733)",
                                    code="dtmf_unsupported")
            if self._pending_digits + len(digits) > MAX_PENDING_DIGITS:
                raise ProtocolError(f"at most {MAX_PENDING_DIGITS} keys may wait to be "
                                    "pressed", code="dtmf_busy")
            step = self.outbound.samples_per_packet
            planned: list[tuple[bytes, bool, bool] | None] = []
            for digit in digits:
                payloads = event_payloads(digit, DIGIT_MS * 8, step)
                planned += [(payload, marker, i == 0) for i, (payload, marker)
                            in enumerate(payloads)]
                planned += [None] * max(1, DIGIT_GAP_MS // plan.ptime)
            self._keys.extend(planned)
            self._pending_digits += len(digits)
            return len(self._keys) * plan.ptime / 1000

    def _send(self) -> None:
        plan = self.outbound.plan
        if not plan.sends:
            self.outbound.skip(1)
            return
        key = self._keys.popleft() if self._keys else None
        if key is not None and plan.dtmf_payload_type is not None:
            payload, marker, starts = key
            sender = self.outbound.sender
            if starts:
                self._event_timestamp = sender.timestamp
                self._pending_digits -= 1
            data = sender.event_packet(plan.dtmf_payload_type, payload,
                                       self._event_timestamp, marker).serialize()
            sender.skip(self.outbound.samples_per_packet)  # the audio clock runs on
        else:
            data = self.outbound.packet(self.outbound.fill(self._pull))
        try:
            self._sock.sendto(data, (plan.remote_host, plan.remote_port))
        except OSError:
            self.stats.send_errors += 1  # a full socket buffer, or no route: UDP drops it
        self.stats.packets += 1

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """No packet is sent after this returns (a tick in progress completes first)."""
        with self._lock:
            self._closed = True
        self._sock.close()


class MediaClock:
    """One thread ticking every added `RtpOut` at its absolute deadlines."""

    def __init__(self, clock: Clock = MONOTONIC, priority: int = 0) -> None:
        self._clock = clock
        self._priority = priority
        self._streams: list[RtpOut] = []
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False

    def add(self, stream: RtpOut) -> None:
        period = stream.period_ns
        now = self._clock.now_ns()
        stream.due_ns = (now // period + 1) * period  # the shared grid of this packet time
        with self._changed:
            if self._stopping:
                raise RuntimeError("the media clock is closed")
            self._streams.append(stream)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sip-media-clock",
                                                daemon=True)
                self._thread.start()
            self._changed.notify()

    def remove(self, stream: RtpOut) -> None:
        with self._changed:
            if stream in self._streams:
                self._streams.remove(stream)

    def close(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        self._ask_priority()
        while True:
            with self._changed:
                if self._stopping:
                    return
                due = self._due()
                if not due:
                    continue
            for stream in due:
                try:
                    stream.tick(self._clock.now_ns())
                except Exception:  # one call's failure must not silence the others
                    log.exception("media clock: a call's tick failed; it is dropped")
                    self.remove(stream)

    def _ask_priority(self) -> None:
        if self._priority <= 0:
            return
        try:  # on Linux, pid 0 is this thread only
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(self._priority))
        except (AttributeError, OSError) as exc:
            log.warning("media clock: no real-time priority (%s); running at normal priority",
                        exc)
        else:
            log.info("media clock: real-time priority %d (SCHED_FIFO)", self._priority)

    def _due(self) -> list[RtpOut]:
        """The streams due now, in deadline order; else wait (holding `_changed`) until
        the next deadline or a change, and return none."""
        self._streams = [s for s in self._streams if not s.closed]
        if not self._streams:
            self._changed.wait()
            return []
        now = self._clock.now_ns()
        first = min(s.due_ns for s in self._streams)
        if first > now:
            self._changed.wait((first - now) / 1e9)
            return []
        return sorted((s for s in self._streams if s.due_ns <= now), key=lambda s: s.due_ns)


class SharedPlayout(Playout):
    """The session's playout, safe to `pull()` from the media clock thread.

    Every method holds one lock; the first-send callback, which the pipelines set on
    the loop, is handed back to the loop with the time the audio was taken."""

    def __init__(self, sample_rate: int, clock: Clock, lead_ms: int,
                 loop: asyncio.AbstractEventLoop) -> None:
        self._lock = threading.RLock()
        self._loop = loop
        self._first_send: FirstSend | None = None
        super().__init__(_never_pushed, sample_rate, clock, lead_ms=lead_ms)

    @property
    def on_first_send(self) -> FirstSend | None:
        with self._lock:
            callback = self._first_send
        return None if callback is None else functools.partial(self._call_on_loop, callback)

    @on_first_send.setter
    def on_first_send(self, callback: FirstSend | None) -> None:
        with self._lock:
            self._first_send = callback

    def _call_on_loop(self, callback: FirstSend, now: int) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            callback(now)
            return
        try:
            self._loop.call_soon_threadsafe(callback, now)
        except RuntimeError:  # the loop closed under a last tick: no one is waiting
            pass

    def enqueue(self, pcm: bytes) -> None:
        with self._lock:
            super().enqueue(pcm)

    def clear(self) -> None:
        with self._lock:
            super().clear()

    def pause(self) -> None:
        with self._lock:
            super().pause()

    def resume(self) -> None:
        with self._lock:
            super().resume()

    @property
    def speaking(self) -> bool:
        with self._lock:
            return super().speaking

    def played_samples(self) -> int:
        with self._lock:
            return super().played_samples()

    def pending_samples(self) -> int:
        with self._lock:
            return super().pending_samples()

    def pull(self) -> bytes | None:
        with self._lock:
            return super().pull()


async def _never_pushed(chunk: bytes) -> None:
    raise RuntimeError("the media clock pulls this playout; nothing may push it")
