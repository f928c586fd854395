"""State of one provider reply in the realtime pipeline, and two small helpers.

`ProviderReply` follows one provider response: its turn and timeline, the provider's
ids (needed for `response.cancel` and `conversation.item.truncate`), the words so far,
and where its audio sits in the session's playout, so that on barge-in it can tell
how much the caller heard. `InputClock` maps the provider's input-buffer offsets
(`audio_start_ms`, `audio_end_ms`) back to when that audio reached us. `Watchdog`
bounds how long the provider may stay silent while we wait for it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from voice.audio import StreamResampler, array_to_pcm16_bytes, pcm16_bytes_to_array
from voice.errors import ProviderTimeout
from voice.latency import TurnTimeline
from voice.playout import Playout
from wire.openai_realtime.server_events import PROVIDER_RATE


@dataclass
class ProviderReply:
    turn_id: int
    timeline: TurnTimeline
    resampler: StreamResampler
    response_id: str | None = None  # None: no provider response (it failed before one)
    item_id: str | None = None  # the assistant item, for conversation.item.truncate
    text: str = ""
    provider_samples: int = 0  # reply audio received, at the provider's rate
    base: int | None = None  # playout.enqueued_samples when its first audio was queued
    queued: int = 0  # samples of it queued (session rate)
    generated: bool = False  # the provider finished it (response.done) or it failed
    finished: bool = False  # response.done or response.interrupted has been emitted
    finisher: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def received_ms(self) -> int:
        return self.provider_samples * 1000 // PROVIDER_RATE

    def enqueue(self, playout: Playout, pcm: bytes,
                on_first_send: Callable[[int], None]) -> None:
        """Queue reply audio already at the session rate."""
        if not pcm:
            return
        if self.base is None:
            self.base = playout.enqueued_samples
            playout.on_first_send = on_first_send
        playout.enqueue(pcm)
        self.queued += len(pcm) // 2

    def add_provider_audio(self, playout: Playout, pcm: bytes,
                           on_first_send: Callable[[int], None]) -> None:
        samples = pcm16_bytes_to_array(pcm[: len(pcm) // 2 * 2])
        self.provider_samples += len(samples)
        self.enqueue(playout, array_to_pcm16_bytes(self.resampler.process(samples)),
                     on_first_send)

    def flush_audio(self, playout: Playout, on_first_send: Callable[[int], None]) -> None:
        if not self.provider_samples:  # an empty reply: a resampler's tail is no reply
            return
        tail = self.resampler.process(np.zeros(0, dtype=np.int16), last=True)
        self.enqueue(playout, array_to_pcm16_bytes(tail), on_first_send)

    def played(self, playout: Playout) -> tuple[int, str]:
        """Milliseconds of this reply the caller heard, and the words in them (in
        proportion: the provider's transcript carries no timings)."""
        if self.base is None:
            return 0, ""
        heard = min(self.queued, max(0, playout.played_samples() - self.base))
        ms = heard * 1000 // playout.sample_rate
        words = self.text.split()
        share = min(1.0, ms / self.received_ms) if self.received_ms else 0.0
        return ms, " ".join(words[: int(len(words) * share)])


class InputClock:
    """Provider input-buffer offsets (ms at 24 kHz) → arrival time of that audio."""

    def __init__(self, keep: int = 3000) -> None:
        self._marks: deque[tuple[int, int]] = deque(maxlen=keep)  # (end sample, arrival)
        self.samples = 0

    def reset(self) -> None:
        """A new provider session: its buffer starts again at 0."""
        self._marks.clear()
        self.samples = 0

    def add(self, samples: int, arrival_ns: int) -> None:
        self.samples += samples
        self._marks.append((self.samples, arrival_ns))

    def arrival_ns(self, offset_ms: int) -> int | None:
        index = offset_ms * PROVIDER_RATE // 1000
        for end, arrival in self._marks:
            if end > index:
                return arrival
        return None


class Watchdog:
    """Raises ProviderTimeout from `run()` when armed and not fed for `timeout_s`."""

    def __init__(self, timeout_s: float, provider: str) -> None:
        self._timeout_s = timeout_s
        self._provider = provider
        self._deadline: float | None = None
        self._changed = asyncio.Event()

    @property
    def armed(self) -> bool:
        return self._deadline is not None

    def arm(self) -> None:
        self._deadline = asyncio.get_running_loop().time() + self._timeout_s
        self._changed.set()

    def feed(self) -> None:
        if self._deadline is not None:
            self.arm()

    def disarm(self) -> None:
        self._deadline = None
        self._changed.set()

    async def run(self) -> None:
        while True:
            self._changed.clear()
            if self._deadline is None:
                await self._changed.wait()
                continue
            try:
                async with asyncio.timeout_at(self._deadline):
                    await self._changed.wait()
            except TimeoutError:
                self._deadline = None
                raise ProviderTimeout(
                    f"the realtime provider sent nothing for {self._timeout_s:g} s",
                    provider=self._provider, code="realtime_timeout") from None
