"""Turn detection: a sans-I/O state machine over 16 kHz frames.

Theory of operation. Frames arrive with the monotonic time the transport received
them. While idle the detector keeps a short pre-roll and waits for `min_speech_ms` of
speech-like frames (webrtcvad + energy gate, see `voice.turntaking.vad`) within a short window;
then the turn starts at the first of them. Earlier, after `onset_ms` of speech, it
reports `SpeechOnset` (a reply that is playing can pause at once) and, if the onset
fizzles out before the turn starts, `OnsetAbandoned`. During a turn it tracks the *true* end of
speech: the end of the last speech-like frame. Silence is counted in audio time from
there, so webrtcvad's hangover does not lengthen the wait. `SPECULATE_AFTER_MS` of
silence reports `SpeechPaused` (the moment to start transcribing speculatively: the
gaps between words, shorter, would each start a transcription thrown away at the next
word); speech after it reports `SpeechResumed`; when the end-of-turn policy's wait
has passed the turn ends with `TurnEnded` carrying the audio up to the true end.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from voice.audio import PIPELINE_RATE, Int16Array
from voice.turntaking.vad import FrameClassifier, FrameVerdict

SPECULATE_AFTER_MS = 60  # silence after speech before SpeechPaused


@dataclass(frozen=True)
class SpeechOnset:
    speech_start_ns: int


@dataclass(frozen=True)
class OnsetAbandoned:
    pass


@dataclass(frozen=True)
class TurnStarted:
    speech_start_ns: int
    audio_start: int = 0  # where the turn's audio begins, in samples of audio received


@dataclass(frozen=True)
class SpeechPaused:
    speech_end_ns: int
    audio: Int16Array  # the turn so far, up to the true end of speech


@dataclass(frozen=True)
class SpeechResumed:
    pause_ms: float  # how long the caller paused inside the turn


@dataclass(frozen=True)
class TurnEnded:
    audio: Int16Array
    speech_start_ns: int
    speech_end_ns: int
    turn_end_ns: int
    forced: bool = False  # cut at max_turn_s rather than ended by silence
    audio_end: int = 0  # where `audio` ends, in samples of audio received


TurnEvent = (SpeechOnset | OnsetAbandoned | TurnStarted | SpeechPaused | SpeechResumed
             | TurnEnded)


@dataclass(frozen=True)
class TurnContext:
    speech_ms: float  # length of the turn from its start to the true end of speech
    silence_ms: float  # silence since the true end of speech
    transcript: str | None = None  # speculative transcript of the turn up to the true end
    final_pitch: float | None = None  # voice.turntaking.prosody.final_pitch_ratio of the same audio


class EndOfTurnPolicy(Protocol):
    def required_silence_ms(self, context: TurnContext) -> float: ...


@dataclass(frozen=True)
class FixedSilence:
    silence_ms: float

    def required_silence_ms(self, context: TurnContext) -> float:
        return self.silence_ms


class TurnDetector:
    PREROLL_MS = 300  # audio kept from before the onset began: soft first sounds ("s", "f")
    ONSET_GAP_MS = 120  # a gap longer than this inside a candidate onset restarts it

    def __init__(self, classifier: FrameClassifier, policy: EndOfTurnPolicy,
                 min_speech_ms: int, max_turn_s: float, onset_ms: int = 80) -> None:
        self._classifier = classifier
        self._policy = policy
        self._frame_ms = classifier.frame_ms
        self._min_speech_frames = max(1, min_speech_ms // self._frame_ms)
        self._onset_report_frames = max(1, min(onset_ms, min_speech_ms) // self._frame_ms)
        self._onset_reported = False
        self._transcript: tuple[int, str, float | None] | None = None  # (end, text, pitch)
        self._max_turn_frames = int(max_turn_s * 1000 / self._frame_ms)
        self._preroll_frames = self.PREROLL_MS // self._frame_ms
        # the pre-roll proper, then the onset: up to min_speech_ms of speech-like frames
        # with gaps of up to ONSET_GAP_MS
        self._preroll: deque[tuple[Int16Array, int]] = deque(
            maxlen=self._preroll_frames + (min_speech_ms + self.ONSET_GAP_MS) // self._frame_ms
            + 2)
        self._onset_frames = 0
        self._onset_gap = 0
        self._onset_start_ns = 0
        self._onset_span = 0  # frames since the onset began, gaps included
        self._lead_frames = 0  # frames of the turn from before its onset
        self._in_turn = False
        self._frames: list[Int16Array] = []
        self._speech_end_index = 0  # frames[:index] is the turn up to the true end
        self._speech_end_ns = 0
        self._speech_start_ns = 0
        # samples of real audio pushed so far (fillers not counted): the turns' places in
        # the audio itself, which arrival times do not give when the audio came late
        self._received = 0
        self._turn_audio_start = 0
        self._paused = False
        self._peak_db: float | None = None
        self._fillers = 0  # trailing frames of self._frames that are push_filler's

    def use_policy(self, policy: EndOfTurnPolicy) -> None:
        self._policy = policy

    @property
    def in_turn(self) -> bool:
        return self._in_turn

    @property
    def speech_ms(self) -> float:
        """Length of the current turn up to its true end of speech (0 when idle)."""
        return self._speech_frames() * self._frame_ms if self._in_turn else 0.0

    def _speech_frames(self) -> int:
        """Frames from the onset to the true end of speech (the pre-roll not counted)."""
        return max(0, self._speech_end_index - self._lead_frames)

    def set_transcript(self, speech_end_ns: int, text: str,
                       final_pitch: float | None = None) -> None:
        """What is known of the turn up to `speech_end_ns`, for the policy."""
        self._transcript = (speech_end_ns, text, final_pitch)

    @property
    def frame_samples(self) -> int:
        return self._classifier.frame_samples

    def push(self, frame: Int16Array, arrival_ns: int) -> list[TurnEvent]:
        verdict = self._classifier.classify(frame, self._peak_db)
        self._received += len(frame)
        if not self._in_turn:
            return self._push_idle(frame, arrival_ns, verdict)
        if self._fillers:  # real audio covers the time the fillers stood in for
            del self._frames[-self._fillers:]
            self._fillers = 0
        return self._push_in_turn(frame, arrival_ns, verdict)

    def push_filler(self, now_ns: int) -> list[TurnEvent]:
        """A frame of silence standing in for audio that did not come (the client
        stopped sending mid-turn), so that the turn can end. If real audio arrives
        after all (it was only late), the fillers are taken out again: the turn's
        audio is only ever what was received."""
        if not self._in_turn:
            return []
        silence = self.silence_frame()
        self._fillers += 1
        return self._push_in_turn(silence, now_ns, self._classifier.classify(silence,
                                                                             self._peak_db))

    def _push_idle(self, frame: Int16Array, arrival_ns: int,
                   verdict: FrameVerdict) -> list[TurnEvent]:
        self._preroll.append((frame, arrival_ns))
        if verdict.speech_like:
            if self._onset_frames == 0:
                self._onset_start_ns = arrival_ns
                self._onset_span = 0
            self._onset_frames += 1
            self._onset_span += 1
            self._onset_gap = 0
        elif self._onset_frames:
            self._onset_gap += 1
            self._onset_span += 1
            if self._onset_gap * self._frame_ms > self.ONSET_GAP_MS:
                self._onset_frames = 0
        if not self._onset_frames:
            if self._onset_reported:
                self._onset_reported = False
                return [OnsetAbandoned()]
            return []
        events: list[TurnEvent] = []
        if self._onset_frames >= self._onset_report_frames and not self._onset_reported:
            self._onset_reported = True
            events.append(SpeechOnset(self._onset_start_ns))
        if self._onset_frames >= self._min_speech_frames:
            events.append(self._start_turn(arrival_ns, verdict))
        return events

    def _start_turn(self, arrival_ns: int, verdict: FrameVerdict) -> TurnStarted:
        self._in_turn = True
        keep = self._onset_span + self._preroll_frames
        self._frames = [f for f, _ in list(self._preroll)[-keep:]]
        self._lead_frames = max(0, len(self._frames) - self._onset_span)
        self._preroll.clear()
        self._speech_end_index = len(self._frames)
        self._speech_end_ns = arrival_ns
        self._speech_start_ns = self._onset_start_ns
        self._paused = False
        self._peak_db = verdict.level_db
        self._onset_frames = 0
        self._onset_reported = False
        self._transcript = None
        self._turn_audio_start = self._received - sum(len(f) for f in self._frames)
        return TurnStarted(speech_start_ns=self._onset_start_ns,
                           audio_start=self._turn_audio_start)

    def _push_in_turn(self, frame: Int16Array, arrival_ns: int,
                      verdict: FrameVerdict) -> list[TurnEvent]:
        self._frames.append(frame)
        events: list[TurnEvent] = []
        if verdict.speech_like:
            self._peak_db = max(self._peak_db or verdict.level_db, verdict.level_db)
            pause_ms = (len(self._frames) - 1 - self._speech_end_index) * self._frame_ms
            self._speech_end_index = len(self._frames)
            self._speech_end_ns = arrival_ns
            if self._paused:
                self._paused = False
                events.append(SpeechResumed(pause_ms=pause_ms))
        else:
            silence_ms = (len(self._frames) - self._speech_end_index) * self._frame_ms
            if not self._paused and silence_ms >= SPECULATE_AFTER_MS:
                self._paused = True
                events.append(SpeechPaused(self._speech_end_ns, self.audio_to_speech_end()))
            if self._turn_is_over():
                events.append(self._end_turn(arrival_ns, forced=False))
                return events
        if len(self._frames) >= self._max_turn_frames:
            events.append(self._end_turn(arrival_ns, forced=True))
        return events

    def _turn_is_over(self) -> bool:
        known = self._transcript
        current = known is not None and known[0] == self._speech_end_ns
        context = TurnContext(
            speech_ms=self._speech_frames() * self._frame_ms,
            silence_ms=(len(self._frames) - self._speech_end_index) * self._frame_ms,
            transcript=known[1] if known and current else None,
            final_pitch=known[2] if known and current else None,
        )
        return context.silence_ms >= self._policy.required_silence_ms(context)

    def _end_turn(self, now_ns: int, forced: bool) -> TurnEnded:
        audio = self.audio_to_speech_end() if not forced else np.concatenate(self._frames)
        ended = TurnEnded(audio=audio, speech_start_ns=self._speech_start_ns,
                          speech_end_ns=self._speech_end_ns if not forced else now_ns,
                          turn_end_ns=now_ns, forced=forced,
                          audio_end=self._turn_audio_start + len(audio))
        self._in_turn = False
        self._frames = []
        self._fillers = 0
        self._peak_db = None
        return ended

    def audio_to_speech_end(self) -> Int16Array:
        if not self._frames:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(self._frames[: self._speech_end_index])

    def silence_frame(self) -> Int16Array:
        return np.zeros(self.frame_samples, dtype=np.int16)


def frames_of(samples: Int16Array, frame_samples: int) -> tuple[list[Int16Array], Int16Array]:
    """Split samples into whole frames; return the frames and the leftover tail."""
    whole = len(samples) // frame_samples * frame_samples
    frames = [samples[i: i + frame_samples] for i in range(0, whole, frame_samples)]
    return frames, samples[whole:]


assert PIPELINE_RATE == 16000
