"""Deciding when the caller's turn is over: the adaptive end-of-turn policy.

The detector counts silence from the true end of speech and asks the policy how much
silence this turn needs. The policy answers from what it can know cheaply (well under
a millisecond per decision):

- the speculative transcript of the turn so far (started at the first silent frame;
  ready 100-250 ms into the silence on a busy 2-core machine):
  a turn ending in a conjunction, preposition, article, filler or an unfinished
  digit string is very likely unfinished, so it waits up to `max_wait_ms`; a turn
  that reads as complete gets `min_wait_ms`; while the transcript is not yet known,
  it waits for it (never less than `min_wait_ms`);
- prosody (`voice.turntaking.prosody`): a turn that reads as a finished statement but whose
  pitch did not fall at the end is probably a mid-sentence pause ("The meeting is on
  Tuesday, ..." transcribes as a complete sentence);
- the caller's own habits: the pauses this caller made inside turns before going
  on. A caller who pauses for 600 ms mid-sentence gets longer waits, within bounds.

Presets: `default` (fast when the caller is done, 200-1000 ms), `patient` (for callers
who pause a lot: dictation, elderly callers; 800-1600 ms) and `fixed` (the plain
`silence_ms` wait, no cues).
"""

from __future__ import annotations

import re
import statistics
from collections import deque
from dataclasses import dataclass

from voice.turntaking.detector import EndOfTurnPolicy, FixedSilence, TurnContext

# Words after which an utterance is almost never finished.
_OPEN_ENDINGS = frozenset("""
and or but so because than that which who whose whom where when while if unless until
although though whether nor yet plus minus then also
to at on in of for with from by about into onto over under between after before
during without within through toward towards like as per via near
a an the my your his her its our their this these those some any every each no
um uh er erm hmm mm like well so basically actually
is are was were be been being am will would can could should shall may might must
do does did have has had
""".split())
# Words that open a question: wh-words, and the auxiliaries of an inverted question.
_QUESTION_OPENINGS = frozenset("""
what whats what's when where which who whom whose why how
is are was were am do does did can could will would shall should may might have has
isn't aren't wasn't weren't don't doesn't didn't can't couldn't won't wouldn't shouldn't
""".split())
# "<verb> me" that goes on to say what: "Can you remind me ... to call my sister?"
# Whisper reads the pause as the end of a question ("Can you remind me?").
_WANTS_MORE = frozenset("remind tell show give send let bring teach get".split())
_NUMBER_WORDS = frozenset(
    "zero oh one two three four five six seven eight nine ten eleven twelve".split())
_WORD = re.compile(r"[a-z0-9']+")


@dataclass(frozen=True)
class Preset:
    min_wait_ms: float
    max_wait_ms: float


PRESETS = {
    "default": Preset(min_wait_ms=200, max_wait_ms=1000),
    "patient": Preset(min_wait_ms=800, max_wait_ms=1600),
}
TURN_PRESETS = (*PRESETS, "fixed")  # "fixed": silence_ms, whatever was said


EAGER_MAX_WAIT_MS = 500  # semantic VAD with eagerness "high": the longest wait

LEVEL_PITCH = 0.85  # final pitch / median pitch at or above this: not a final fall


def incompleteness(transcript: str, final_pitch: float | None = None) -> float:
    """0.0 for an utterance that reads (and sounds) finished, up to 1.0 for an open one."""
    text = transcript.strip().lower()
    words = _WORD.findall(text)
    if not words:
        return 1.0
    last = words[-1]
    if last in _OPEN_ENDINGS:
        return 1.0
    if text.endswith(("-", "...", "…", ":")):
        return 0.8
    if _ends_in_digits(words):
        return 0.7  # dictated numbers come in groups: "four five six ... seven eight"
    if len(words) >= 2 and words[-1] == "me" and words[-2] in _WANTS_MORE:
        return 0.7  # "remind me", "tell me": rarely the whole request
    fell = final_pitch is not None and final_pitch < LEVEL_PITCH
    level = final_pitch is not None and not fell
    # Whisper punctuates a turn cut 40 ms into its silence unreliably, over a phone
    # line more so: a short command comes back as "turn on the lights," or "Call my
    # mother". The final fall of pitch that ends statements and commands outweighs
    # that; a little less for a comma, which also ends the items of a list said with
    # pauses ("Please add milk, ... eggs, ..."), though those are said level (the
    # turn-taking corpus's pauses all measure 0.87 or more). No full stop and a level
    # pitch are two signs of a pause, not one.
    if text.endswith(","):
        return 0.25 if fell else 0.8
    if not text.endswith((".", "?", "!")):
        return 0.0 if fell else 0.8 if level else 0.5
    if text.endswith((".", "!")) and level:
        if text.endswith(".") and _reads_as_question(words):
            return 0.0  # a question (ends high) that lost its "?": common at 8 kHz
        return 0.7  # a statement without the final fall of pitch: probably mid-sentence
    return 0.0


def _reads_as_question(words: list[str]) -> bool:
    """Opens as a question ("How far is it ...", "Could you read me ..."), after at
    most one discourse word ("So what time is it"). Whisper drops the question mark
    of a question cut 40 ms into its silence, and more often on telephone audio; a
    question's pitch ends high, which would otherwise read as a mid-sentence pause."""
    head = words[:2]
    if head and head[0] in ("so", "and", "okay", "ok", "hey", "um", "uh", "then"):
        head = head[1:]
    return bool(head) and head[0] in _QUESTION_OPENINGS and len(words) >= 3


def _ends_in_digits(words: list[str]) -> bool:
    """A digit string: two of the last three words are digits, or a run of digits."""
    tail = words[-3:]
    digits = sum(w.isdigit() or w in _NUMBER_WORDS for w in tail)
    return digits >= 2 or (words[-1].isdigit() and len(words[-1]) >= 3)


class CallerPauses:
    """The pauses this caller made inside turns before going on (per session)."""

    def __init__(self, keep: int = 12) -> None:
        self._pauses: deque[float] = deque(maxlen=keep)

    def record(self, pause_ms: float) -> None:
        if pause_ms >= 100:  # shorter gaps are ordinary articulation
            self._pauses.append(pause_ms)

    def typical_ms(self) -> float | None:
        """A long-ish pause for this caller (75th percentile), once three are known."""
        if len(self._pauses) < 3:
            return None
        return statistics.quantiles(self._pauses, n=4)[2]


class AdaptiveEndpointing:
    def __init__(self, preset: Preset, pauses: CallerPauses) -> None:
        self.preset = preset
        self.pauses = pauses

    def required_silence_ms(self, context: TurnContext) -> float:
        low, high = self.preset.min_wait_ms, self.preset.max_wait_ms
        typical = self.pauses.typical_ms()
        if typical is not None:  # adapt to this caller, within [low, 2 * high]
            low = min(high, max(low, 0.6 * typical))
            high = min(2 * self.preset.max_wait_ms, max(high, typical + 200))
        if context.transcript is None:
            return high  # not transcribed yet: wait for it, or until the maximum
        return low + incompleteness(context.transcript, context.final_pitch) * (high - low)


def build_policy(preset: str, min_wait_ms: float, max_wait_ms: float, silence_ms: float,
                 pauses: CallerPauses) -> EndOfTurnPolicy:
    """The policy a session uses; explicit min/max waits (> 0) override the preset's."""
    if preset == "fixed":
        return FixedSilence(silence_ms)
    base = PRESETS[preset]
    return AdaptiveEndpointing(
        Preset(min_wait_ms=min_wait_ms or base.min_wait_ms,
               max_wait_ms=max_wait_ms or base.max_wait_ms), pauses)
