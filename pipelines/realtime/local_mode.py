"""The realtime pipeline's own turn-taking (`--realtime-turn-detection local`), with the
cascade's rules: the `Listener` ends turns, the `Floor` decides speech over a reply
(`voice.turntaking`), the local STT's reading of each pause (`TurnReader`) informs
both.

Only a turn's audio goes to the provider: its pre-roll when it starts, then as it
comes, and the commit and `response.create` when it ends. A turn that began over a
reply is held back (the provider hears none of it) until the floor's verdict: a
backchannel drops it and the reply resumes; words or long speech interrupt the reply
(or continue the previous turn, which is then sent again with this one), and the
turn's audio so far goes to the provider.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Protocol

from pipelines.providers.stt import SpeechToText
from pipelines.realtime.local_turns import LocalTurns, TurnReader
from pipelines.realtime.options import RealtimeOptions
from voice.audio import Int16Array
from voice.clock import Clock
from voice.turntaking.detector import (
    OnsetAbandoned,
    SpeechOnset,
    SpeechPaused,
    SpeechResumed,
    TurnEnded,
    TurnEvent,
    TurnStarted,
)
from voice.turntaking.floor import Floor, FloorHost, Verdict


class LocalHost(FloorHost, Protocol):
    """What of the realtime pipeline its local turn-taking drives."""

    @property
    def turn_id(self) -> int: ...

    def replying_to(self) -> int | None: ...

    async def start_turn(self, speech_start_ns: int) -> None: ...

    def forget_turn(self) -> None: ...

    def turn_began_at(self, speech_start_ns: int) -> None: ...

    async def clear_input(self) -> None: ...

    async def send_input(self, samples: Int16Array, arrival_ns: int) -> None: ...

    async def commit_turn(self, audio: Int16Array, event: TurnEnded) -> None: ...

    def spawn(self, coro: Coroutine[Any, Any, str | None],
              what: str) -> asyncio.Task[str | None]: ...


class LocalTurnTaking:
    def __init__(self, host: LocalHost, options: RealtimeOptions, stt: SpeechToText | None,
                 clock: Clock, session_rate: int, provider_rate: int) -> None:
        self._host = host
        self._clock = clock
        self._turns = LocalTurns(options.turns, session_rate, provider_rate)
        self._floor = Floor(host, options.turns.barge_in_confirm_ms,
                            options.turns.continuation_window_ms, provider_rate,
                            options.turns.max_turn_s)
        self._reader = TurnReader(self._turns.listener, stt, options.no_speech_threshold,
                                  host.spawn)
        self._streaming = False  # the current turn's audio is being kept

    @property
    def in_turn(self) -> bool:
        return self._turns.in_turn

    async def hear(self, samples: Int16Array, provider_samples: Int16Array,
                   arrival_ns: int) -> None:
        """The caller's audio, at the session's rate and at the provider's."""
        await self._on(self._turns.listener.push(samples, arrival_ns), provider_samples,
                       arrival_ns)

    async def starved(self, ms: int, now_ns: int) -> None:
        """The caller stopped sending mid-turn: the gap counts as silence."""
        await self._on(self._turns.listener.push_silence(ms, now_ns), None, now_ns)

    async def _on(self, events: list[TurnEvent], samples: Int16Array | None,
                  arrival_ns: int) -> None:
        turn_id = self._host.turn_id
        for event in events:
            if isinstance(event, SpeechOnset):
                self._floor.onset()
            elif isinstance(event, OnsetAbandoned):
                self._floor.onset_abandoned()
            elif isinstance(event, TurnStarted):
                await self._turn_started(event.speech_start_ns)
            elif isinstance(event, SpeechPaused):
                self._reader.paused(event, turn_id)
            elif isinstance(event, SpeechResumed):
                self._reader.cancel()
        if samples is not None:
            if not self._streaming:
                self._turns.keep(samples)
            else:
                self._turns.add_to_turn(samples)
                if not self._floor.contested:
                    await self._host.send_input(samples, arrival_ns)
        if self._floor.speech_confirms(self._turns.listener.speech_ms):
            await self._confirm("long speech")
        for event in events:
            if isinstance(event, TurnEnded):
                await self._turn_ended(event)

    async def _turn_started(self, speech_start_ns: int) -> None:
        contested = self._floor.turn_started(speech_start_ns)
        await self._host.start_turn(speech_start_ns)
        preroll = self._turns.begin_turn()
        self._streaming = True
        if not contested:
            await self._host.clear_input()
            await self._host.send_input(preroll, speech_start_ns)

    async def _turn_ended(self, event: TurnEnded) -> None:
        turn_id = self._host.turn_id
        if self._floor.contested:
            heard = await self._floor.judge(self._reader.heard(event, turn_id), turn_id)
            if self._floor.dismisses(heard, turn_id):
                self._streaming = False
                self._host.forget_turn()
                return
            await self._confirm(f"words: {heard!r}")
        self._reader.cancel()
        self._streaming = False
        audio = self._floor.joined(self._turns.turn_audio())
        self._floor.turn_ended(audio, event.turn_end_ns)
        await self._host.commit_turn(audio, event)

    async def _confirm(self, why: str) -> None:
        """The turn over the reply is real: it interrupts the reply, or continues the
        previous turn; either way its audio so far now goes to the provider."""
        host = self._host
        verdict = await self._floor.confirm(why, host.turn_id, host.replying_to())
        if verdict is Verdict.CONTINUATION:
            host.turn_began_at(self._floor.speech_start_ns)
        await host.clear_input()
        await host.send_input(self._floor.joined(self._turns.turn_audio()),
                              self._clock.now_ns())
