"""What one trial (one clip said to the service) tells, from the client's own record.

Pure functions of a `Trial`: the events the client received (each with the client's
`_received_ns`), the reply audio it heard (arrival, and when a listener playing on
arrival first hears something audible in it), and when the clip's speech left the
client. No I/O, no clock: the unit tests feed hand-made timelines.

Definitions (docs/latency.md):
- voice-to-voice: last voiced sample sent -> first audible reply sample heard;
- cut-off: the service ended the turn before the speech had all been sent (a
  `speech.stopped` or `transcript.final` arrived, or reply audio was heard, before
  the last voiced sample left): the turn ended inside a pause;
- false trigger: a no-turn clip (silence, noise, tones) got a transcript or a reply,
  or a speech clip got more than one answered turn without being cut off;
- barge-in reaction: the interruption's first voiced sample sent -> the last audible
  audio of the old reply received (arrival);
- stage work: how long each cascade stage took, from the raw stamps (`stamps_ms`),
  whether or not speculation hid it behind the endpointing wait.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

SPEECH_KINDS = ("command", "question", "paused")
TURN_END_EVENTS = ("speech.stopped", "transcript.final")
TRIGGER_EVENTS = ("transcript.final", "turn.latency", "response.text.delta", "response.done")

# (work metric, from stamp, to stamp): each stage's own duration on the raw timeline
WORK_SPANS = (
    ("stt_ms", "speech_end", "stt_final"),
    ("llm_ms", "stt_final", "llm_first_token"),
    ("first_text_ms", "llm_first_token", "tts_first_text"),
    ("tts_ms", "tts_first_text", "tts_first_audio"),
)


@dataclass(frozen=True)
class Heard:
    """One chunk of reply audio: when it arrived, and when a listener playing on
    arrival first hears an audible sample of it (None: the chunk is silent)."""

    arrival_ns: int
    audible_ns: int | None
    play_ns: int | None = None  # when the listener starts playing it ...
    end_ns: int | None = None  # ... and when it has played it


@dataclass
class Trial:
    kind: str
    events: list[dict[str, Any]] = field(default_factory=list)
    audio: list[Heard] = field(default_factory=list)
    speech_end_sent_ns: int | None = None  # the clip's last voiced sample left
    barge_start_sent_ns: int | None = None  # interruption: its first voiced sample left

    def of_type(self, *types: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") in types]


def first_heard_ns(trial: Trial, after_ns: int) -> int | None:
    """When the listener first hears reply audio that arrived at or after `after_ns`."""
    times = [h.audible_ns for h in trial.audio
             if h.audible_ns is not None and h.arrival_ns >= after_ns]
    return min(times, default=None)


def reply_gap_ms(trial: Trial) -> float | None:
    """The longest time the listener's playback ran dry inside the reply, from its
    first audible audio to its last chunk: the next sentence came late. (Pauses the
    service voiced are audio, not gaps.) None: no reply was heard."""
    chunks = [h for h in trial.audio if h.play_ns is not None and h.end_ns is not None]
    start = next((i for i, h in enumerate(chunks) if h.audible_ns is not None), None)
    if start is None:
        return None
    longest = 0
    for before, after in zip(chunks[start:], chunks[start + 1:], strict=False):
        longest = max(longest, after.play_ns - before.end_ns)  # type: ignore[operator]
    return round(longest / 1e6, 1)


def voice_to_voice_ms(trial: Trial) -> float | None:
    sent = trial.speech_end_sent_ns
    if sent is None:
        return None
    heard = first_heard_ns(trial, sent)
    return None if heard is None else round((heard - sent) / 1e6, 1)


def is_cut_off(trial: Trial) -> bool:
    end = trial.speech_end_sent_ns
    if end is None or trial.kind == "no_turn":
        return False
    early_event = any(e["_received_ns"] < end for e in trial.of_type(*TURN_END_EVENTS))
    early_audio = any(h.audible_ns is not None and h.arrival_ns < end for h in trial.audio)
    return early_event or early_audio


def answered_turns(trial: Trial) -> int:
    return len({e.get("turn_id") for e in trial.of_type("transcript.final")})


def is_false_trigger(trial: Trial) -> bool:
    if trial.kind == "no_turn":
        return bool(trial.of_type(*TRIGGER_EVENTS)) or any(
            h.audible_ns is not None for h in trial.audio)
    if trial.kind in SPEECH_KINDS:
        return answered_turns(trial) > 1 and not is_cut_off(trial)
    return False


def was_reprompted(trial: Trial) -> bool:
    """The service asked the caller to say it again (speech it did not understand)."""
    return any(e.get("reprompt") for e in trial.of_type("response.done"))


def has_no_reply(trial: Trial) -> bool:
    """A speech clip that was never answered with audible audio."""
    return trial.kind in SPEECH_KINDS and voice_to_voice_ms(trial) is None


def barge_in(trial: Trial) -> tuple[bool, float | None]:
    """(missed, reaction ms) of an interruption said over a reply. Missed: the reply
    was not interrupted."""
    start = trial.barge_start_sent_ns
    if start is None:
        return False, None
    stops = [e for e in trial.of_type("response.interrupted") if e["_received_ns"] >= start]
    if not stops:
        return True, None
    stopped = stops[0]["_received_ns"]
    old = [h.arrival_ns for h in trial.audio
           if h.audible_ns is not None and h.arrival_ns <= stopped]
    if not old:
        return False, None
    return False, round(max(0.0, (max(old) - start) / 1e6), 1)


def answered_latency(trial: Trial) -> dict[str, Any] | None:
    """The `turn.latency` of the turn that answered the clip: the last one for a
    speech clip (after a cut-off, the turn that answered the whole), the first one
    (the question's) for an interruption trial."""
    events = trial.of_type("turn.latency")
    if not events:
        return None
    return events[0] if trial.kind == "interruption" else events[-1]


def answered_transcript(trial: Trial) -> str:
    """The last transcript: of the turn that answered the whole clip (or of the
    interruption)."""
    finals = trial.of_type("transcript.final")
    return str(finals[-1].get("text", "")) if finals else ""


def usage(trial: Trial) -> tuple[dict[str, float], dict[str, str]]:
    """What the session used, from its `turn.usage` events (the last of each turn: the
    realtime pipeline reports a turn's running total after each provider response),
    and the priced models that did the work."""
    last: dict[Any, dict[str, Any]] = {}
    for event in trial.of_type("turn.usage"):
        last[event.get("turn_id")] = event
    total: dict[str, float] = {}
    models: dict[str, str] = {}
    for event in last.values():
        for name, value in dict(event.get("usage") or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                total[name] = round(total.get(name, 0) + value, 3)
        models = {str(k): str(v) for k, v in dict(event.get("models") or {}).items()}
    return total, models


def session_seconds(trial: Trial) -> float:
    """How long the conversation lasted: from the client's first event to its last
    event or the end of the last reply audio it heard, whichever came later (a
    realtime provider's events end long before its audio has played)."""
    times = [e["_received_ns"] for e in trial.events if "_received_ns" in e]
    times += [h.end_ns for h in trial.audio if h.audible_ns is not None and h.end_ns]
    return round((max(times) - min(times)) / 1e9, 3) if len(times) > 1 else 0.0


def stage_work_ms(stamps_ms: dict[str, float]) -> dict[str, float]:
    return {name: round(stamps_ms[end] - stamps_ms[start], 1)
            for name, start, end in WORK_SPANS if start in stamps_ms and end in stamps_ms}


# -- word error rate -------------------------------------------------------------------
_SMALL = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
          "fourteen fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def _number_words(digits: str) -> list[str]:
    """"7" -> seven, "42" -> forty two; longer numbers digit by digit (phone numbers)."""
    if len(digits) > 2:
        return [_SMALL[int(d)] for d in digits]
    n = int(digits)
    if n < 20:
        return [_SMALL[n]]
    return [_TENS[n // 10]] + ([_SMALL[n % 10]] if n % 10 else [])


def normalize(text: str) -> list[str]:
    """Lower-case words; numerals spelled out; punctuation (but apostrophes) dropped."""
    text = re.sub(r"(?<=\d)[-.,](?=\d)", "", text.lower())  # 555-1234, 1,000
    text = re.sub(r"\d+", lambda m: " " + " ".join(_number_words(m.group())) + " ", text)
    return re.sub(r"[^a-z' ]+", " ", text).replace(" '", " ").split()


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate: (substitutions + deletions + insertions) / reference words."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    previous = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, 1):
        current = [i]
        for j, heard in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1,
                               previous[j - 1] + (word != heard)))
        previous = current
    return round(previous[-1] / len(ref), 4)
