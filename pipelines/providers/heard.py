"""What the caller said, judged: the words, nothing worth keeping, or speech that was
not understood.

Whisper's own guards (`stt.hallucination_reason`) drop a transcript that looks like
noise or a hallucination. On its own it cannot tell noise from speech it failed to
understand: a short command over a telephone line often comes back with a high
no-speech probability, and garbled speech with a low log-probability. So a dropped
transcript gets a second opinion from Silero VAD (the ONNX model faster-whisper ships,
a few milliseconds per second of audio): when the turn holds at least
`SPEECH_EVIDENCE_MS` of speech, Whisper's doubt about *whether* there was speech is
overruled (the words are kept if Whisper was fairly sure of them), and otherwise the
turn is *unclear*: the caller spoke and was not understood, and is asked to say it
again rather than left in silence. Noise, hum, tones and silence hold no speech by
Silero's measure and stay unanswered, and so does a lone acknowledgement ("okay").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pipelines.providers.stt import (
    KNOWN_HALLUCINATIONS,
    Transcript,
    hallucination_reason,
    normalize_words,
)
from voice.audio import PIPELINE_RATE, Int16Array, int16_to_float32
from voice.turntaking.backchannel import is_backchannel

log = logging.getLogger(__name__)

SPEECH_EVIDENCE_MS = 300  # Silero speech that makes a turn speech (a hum measures ~160)
SURE_ENOUGH_LOGPROB = -1.0  # words kept against Whisper's no-speech doubt above this


@dataclass(frozen=True)
class Judged:
    text: str | None  # the words to answer (None: nothing to answer)
    dropped: str = ""  # why the transcript was not kept
    unclear: bool = False  # speech, but not understood: worth a re-prompt


def speech_ms(audio: Int16Array) -> float:
    """Milliseconds of speech Silero VAD finds in 16 kHz `audio`."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    spans = get_speech_timestamps(int16_to_float32(audio),
                                  VadOptions(min_speech_duration_ms=100,
                                             min_silence_duration_ms=100, speech_pad_ms=0),
                                  sampling_rate=PIPELINE_RATE)
    return float(sum(span["end"] - span["start"] for span in spans)) * 1000 / PIPELINE_RATE


def judge(transcript: Transcript, audio: Int16Array | None,
          no_speech_threshold: float) -> Judged:
    """The transcript of `audio` judged (without audio: by Whisper's guards alone).
    Blocking: Silero runs only when Whisper's guards drop the transcript."""
    reason = hallucination_reason(transcript, no_speech_threshold)
    if reason is None:
        return Judged(transcript.text)
    dropped = f"{reason}: {transcript.text!r}"
    words = normalize_words(transcript.text)
    if audio is None or not audio.size or words and is_backchannel(words):
        return Judged(None, dropped)  # an "okay" on its own asks for no answer
    speech = speech_ms(audio)
    if speech < SPEECH_EVIDENCE_MS:
        return Judged(None, f"{dropped}, {speech:.0f} ms of speech")
    if (reason.startswith("no_speech_prob") and words not in KNOWN_HALLUCINATIONS
            and transcript.avg_logprob >= SURE_ENOUGH_LOGPROB):
        log.info("transcript kept (%s, but %.0f ms of speech)", dropped, speech)
        return Judged(transcript.text)
    return Judged(None, f"{dropped}, but {speech:.0f} ms of speech", unclear=True)
