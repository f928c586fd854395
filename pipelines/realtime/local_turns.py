"""The service's own turn-taking for the realtime pipeline (`--realtime-turn-detection
local`): our VAD, turn detector and end-of-turn policy (`voice.turntaking.endpointing`, the
cascade's: transcript cues, final pitch, the caller's own pauses) decide when the
caller's turn ends; the pipeline then commits the provider's input buffer and asks
for a response itself.

Only the turn's audio goes to the provider: a short pre-roll kept while idle, then
everything until the turn ends. The turn's audio is also kept here, at the provider's
rate, so that a turn that began over a reply can be held back until it is judged,
and a continuation can send the previous turn again with the new one. `TurnReader`
transcribes the turn so far with the local STT at each pause: the policy reads that
transcript, and the floor (`voice.turntaking.floor`, the cascade's rules) judges by it
whether a turn over a reply held words. The `Listener` is the cascade's too.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.providers.stt import SpeechToText, hallucination_reason
from voice.audio import Int16Array
from voice.errors import ProviderError
from voice.turntaking.detector import SpeechPaused, TurnEnded
from voice.turntaking.floor import UNKNOWN
from voice.turntaking.listener import Listener, TurnConfig
from voice.turntaking.prosody import final_pitch_ratio

log = logging.getLogger(__name__)

PREROLL_MS = 400

Spawn = Callable[[Coroutine[Any, Any, str | None], str], "asyncio.Task[str | None]"]


class LocalTurns:
    def __init__(self, config: TurnConfig, session_rate: int, provider_rate: int) -> None:
        self.listener = Listener(config, session_rate)
        self._preroll: deque[Int16Array] = deque()
        self._preroll_samples = 0
        self._max_preroll = provider_rate * PREROLL_MS // 1000
        self._turn: list[Int16Array] = []  # this turn's audio at the provider's rate

    @property
    def in_turn(self) -> bool:
        return self.listener.in_turn

    def keep(self, provider_samples: Int16Array) -> None:
        """Audio heard while idle, at the provider's rate: the next turn's pre-roll."""
        self._preroll.append(provider_samples)
        self._preroll_samples += len(provider_samples)
        while self._preroll and self._preroll_samples - len(self._preroll[0]) >= \
                self._max_preroll:
            self._preroll_samples -= len(self._preroll.popleft())

    def begin_turn(self) -> Int16Array:
        """A turn starts: its pre-roll becomes the start of the turn's audio."""
        audio = (np.concatenate(list(self._preroll)) if self._preroll
                 else np.zeros(0, dtype=np.int16))
        self._preroll.clear()
        self._preroll_samples = 0
        self._turn = [audio]
        return audio

    def add_to_turn(self, provider_samples: Int16Array) -> None:
        self._turn.append(provider_samples)

    def turn_audio(self) -> Int16Array:
        """The turn's audio so far, at the provider's rate."""
        return np.concatenate(self._turn) if self._turn else np.zeros(0, dtype=np.int16)


@dataclass
class _Guess:
    speech_end_ns: int
    task: asyncio.Task[str | None]


class TurnReader:
    """The local STT's reading of the turn so far, started at each pause: the
    end-of-turn policy reads it (with the final pitch), and a turn that began over a
    reply is judged by it at its end (`heard`, for the floor's judge)."""

    def __init__(self, listener: Listener, stt: SpeechToText | None,
                 no_speech_threshold: float, spawn: Spawn) -> None:
        self._listener = listener
        self._stt = stt
        self._no_speech_threshold = no_speech_threshold
        self._spawn = spawn
        self._guess: _Guess | None = None
        self._final_pitch: float | None = None

    def paused(self, event: SpeechPaused, turn_id: int) -> None:
        """The caller paused: read the turn so far while the policy waits."""
        self.cancel()
        self._final_pitch = final_pitch_ratio(event.audio)
        self._guess = self._start(event.speech_end_ns, event.audio, turn_id, "guess")

    def cancel(self) -> None:
        if self._guess is not None:
            self._guess.task.cancel()
            self._guess = None

    def heard(self, event: TurnEnded, turn_id: int) -> Awaitable[str | None]:
        """What the caller said in this turn (None: no words). The pause's reading
        serves if it read this very turn; otherwise the turn is read now."""
        guess = self._guess
        if guess is None or guess.speech_end_ns != event.speech_end_ns:
            self.cancel()
            guess = self._guess = self._start(event.speech_end_ns, event.audio, turn_id,
                                              "judge")
        return asyncio.shield(guess.task)

    def _start(self, speech_end_ns: int, audio: Int16Array, turn_id: int,
               what: str) -> _Guess:
        return _Guess(speech_end_ns, self._spawn(
            self._transcribe(speech_end_ns, audio, turn_id), what))

    async def _transcribe(self, speech_end_ns: int, audio: Int16Array,
                          turn_id: int) -> str | None:
        if self._stt is None:
            return "(no local transcription)"  # judged as words: the reply stops
        try:
            transcript = await self._stt.transcribe(audio)
        except ProviderError as exc:
            log.warning("turn %d: local transcription failed: %s", turn_id, exc)
            return UNKNOWN
        text = (None if hallucination_reason(transcript, self._no_speech_threshold)
                else transcript.text)
        guess = self._guess
        if guess is not None and guess.speech_end_ns == speech_end_ns:
            self._listener.set_transcript(speech_end_ns, text or "", self._final_pitch)
        return text
