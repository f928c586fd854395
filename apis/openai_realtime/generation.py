"""One reply of the /v1/realtime endpoint, produced by the cascade's models.

A `Generation` runs STT on the caller's turn (when it has one), streams the LLM and
speaks the reply sentence by sentence with the TTS, putting typed outputs in order
into its outbox. It may run *speculatively*: the connection starts it on the first
silent frame after speech and only reads the outbox once the turn is confirmed, so a
confirmed turn finds its transcript, first words and first audio ready. Cancelling
it leaves no trace. Reply audio is 24 kHz PCM, the protocol's rate.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from apis.openai_realtime.session_config import RATE
from pipelines.providers.models import CascadeModels
from pipelines.providers.stt import hallucination_reason
from pipelines.sentences import SentenceSplitter, clean_for_speech
from voice.audio import Int16Array, array_to_pcm16_bytes, resample, trim_leading_silence
from voice.errors import ProviderError

log = logging.getLogger(__name__)

Message = dict[str, str]


@dataclass(frozen=True)
class Heard:
    """The caller's words (None: dropped as noise or a Whisper hallucination)."""
    text: str | None


@dataclass(frozen=True)
class Said:
    text: str  # an LLM text delta


@dataclass(frozen=True)
class Voiced:
    pcm: bytes  # reply audio at 24 kHz


@dataclass(frozen=True)
class Failed:
    error: ProviderError


@dataclass(frozen=True)
class Completed:
    pass


Output = Heard | Said | Voiced | Failed | Completed
MessagesFor = Callable[[str | None], list[Message]]  # the prompt, given the caller's words


class Generation:
    def __init__(self, models: CascadeModels, messages_for: MessagesFor,
                 audio: Int16Array | None, speak: bool, no_speech_threshold: float,
                 speech_end: int = 0,
                 on_transcript: Callable[[str | None], None] | None = None) -> None:
        self._models = models
        self._messages_for = messages_for
        self._audio = audio
        self._speak = speak
        self._no_speech_threshold = no_speech_threshold
        self.speech_end = speech_end  # which turn audio a speculation was started on
        self._on_transcript = on_transcript  # told at once, even before release
        self.outbox: asyncio.Queue[Output] = asyncio.Queue()
        self._first_audio = True

    async def run(self) -> None:
        try:
            heard: str | None = None
            if self._audio is not None:
                heard = await self._transcribe(self._audio)
                if self._on_transcript is not None:
                    self._on_transcript(heard)
                self.outbox.put_nowait(Heard(heard))
            if self._audio is None or heard is not None:
                await self._generate(self._messages_for(heard))
        except ProviderError as exc:
            log.warning("realtime endpoint: %s failed: %s", exc.provider, exc)
            self.outbox.put_nowait(Failed(exc))
        self.outbox.put_nowait(Completed())

    async def _transcribe(self, audio: Int16Array) -> str | None:
        return await transcribe(self._models, audio, self._no_speech_threshold)

    async def _generate(self, messages: list[Message]) -> None:
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        failure: ProviderError | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                if self._speak:
                    tg.create_task(self._speak_pieces(pieces), name="realtime-api-tts")
                try:
                    await self._stream_llm(messages, pieces)
                except ProviderError as exc:
                    failure = exc
                finally:
                    pieces.put_nowait(None)
        except* ProviderError as group:  # the TTS failed
            failure = failure or next(e for e in group.exceptions if isinstance(e, ProviderError))
        if failure is not None:
            raise failure

    async def _stream_llm(self, messages: list[Message], pieces: asyncio.Queue[str | None]) -> None:
        splitter = SentenceSplitter()
        async for delta in self._models.llm.stream(messages):
            self.outbox.put_nowait(Said(delta))
            for piece in splitter.push(delta):
                pieces.put_nowait(piece)
        for piece in splitter.flush():
            pieces.put_nowait(piece)

    async def _speak_pieces(self, pieces: asyncio.Queue[str | None]) -> None:
        tts = self._models.tts
        while (piece := await pieces.get()) is not None:
            spoken = clean_for_speech(piece)
            if not spoken:
                continue
            samples = await tts.synthesize(spoken)
            if self._first_audio:
                samples = trim_leading_silence(samples, tts.sample_rate)
                self._first_audio = False
            self.outbox.put_nowait(Voiced(array_to_pcm16_bytes(
                resample(samples, tts.sample_rate, RATE))))


async def transcribe(models: CascadeModels, audio: Int16Array,
                     no_speech_threshold: float) -> str | None:
    """The words in `audio` (16 kHz), or None if Whisper heard none worth keeping."""
    transcript = await models.stt.transcribe(audio)
    reason = hallucination_reason(transcript, no_speech_threshold)
    if reason is not None:
        log.info("realtime endpoint: transcript dropped (%s): %r", reason, transcript.text)
        return None
    return transcript.text
