"""A continued turn is answered once, with its words once (issue: "My phone number is
5 5 5 2 1 2 4 4 3 9 My phone number is 5 5 2 1 2" reached the LLM).

The floor joins the carried turn's audio and the new turn's (voice/turntaking/floor.py)
and Whisper transcribes the whole; on such audio the short-window decoder sometimes
does not stop, and starts the utterance over, misheard and cut short. Two properties:
- on text: any utterance followed by its opening said again (misheard in a word, the
  last word cut short) is cut back to the utterance, and an utterance alone is kept;
- on audio: the paused clips of both corpora (16 kHz and over G.711), split at random
  points and joined as the floor joins them, transcribe with no opening said twice.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.providers.stt import WhisperSTT, cut_repeated_words, normalize_words
from tests.harness import TURN_TAKING
from tests.strategies import cases
from voice.audio import resample
from voice.turntaking.floor import Floor
from wire.rtp import g711

pytestmark = pytest.mark.unit

VOCAB = ("my phone number is five one two three seven nine the meeting on tuesday at "
         "half past in afternoon book a table for four people send report to maria and "
         "copy whole team code eight address twenty baker street taxi airport please "
         "flight boston friday remind me call sister tomorrow kitchen lights hallway").split()


@st.composite
def restarted(draw: st.DrawFn) -> tuple[str, str]:
    """(utterance, its decode started over): the opening said again, at least three
    words of it, one word dropped or changed where that leaves four in five right,
    the last word perhaps cut short."""
    words = draw(st.lists(st.sampled_from(VOCAB), min_size=3, max_size=24, unique=True))
    again = words[: draw(st.integers(3, len(words)))]
    if len(again) >= 5 and draw(st.booleans()):
        at = draw(st.integers(3, len(again) - 1))
        if draw(st.booleans()):
            del again[at]
        else:
            again[at] = draw(st.sampled_from([w for w in VOCAB if w not in words] or ["uh"]))
    if draw(st.booleans()):
        again[-1] = again[-1][: draw(st.integers(1, len(again[-1])))]
    said = " ".join(words)
    return said, f"{said}. {' '.join(again).capitalize()}"


@settings(max_examples=cases(2000), deadline=None)
@given(restarted())
def test_a_decode_that_starts_the_utterance_over_is_cut_back_to_it(
        case: tuple[str, str]) -> None:
    said, decoded = case
    assert normalize_words(cut_repeated_words(decoded)) == said


@settings(max_examples=cases(2000), deadline=None)
@given(st.lists(st.sampled_from(VOCAB), min_size=4, max_size=24, unique=True),
       st.sampled_from([".", "?", "!"]), st.integers(2, 8))
def test_a_sentence_followed_by_its_first_word_alone_is_cut_back_to_it(
        words: list[str], end: str, keep: int) -> None:
    """The decoder started over and stopped after a word (a telephone clip: "How long
    should I roast a chicken ...? How"), which read as an unfinished turn."""
    said = " ".join(words)
    decoded = f"{said}{end} {words[0][:keep].capitalize()}"
    assert normalize_words(cut_repeated_words(decoded)) == said


@settings(max_examples=cases(2000), deadline=None)
@given(st.lists(st.sampled_from(VOCAB), min_size=1, max_size=24, unique=True))
def test_an_utterance_that_does_not_start_over_is_kept_whole(words: list[str]) -> None:
    said = " ".join(words)
    assert cut_repeated_words(said) == said


# -- real audio, real Whisper ----------------------------------------------------------
CLIPS = sorted({*TURN_TAKING.glob("p_*.wav"), *(TURN_TAKING.parent / "regression").glob("p_*.wav")})


@functools.cache
def _stt() -> WhisperSTT:
    return WhisperSTT.load("", "cpu", "int8", 1, "en")


@functools.cache
def _speech(name: str) -> np.ndarray:
    import soundfile

    path = next(p for p in CLIPS if p.name == name)
    audio, rate = soundfile.read(path, dtype="int16")
    if rate == 8000:  # a telephone-band clip: through G.711 as a phone sends it
        audio = g711.decode(g711.encode(audio, 0), 0)
    audio = resample(audio, rate, 16000)
    loud = np.flatnonzero(np.abs(audio.astype(np.int32)) > 500)
    return audio[max(0, loud[0] - 4800): loud[-1] + 4800]


class _Playout:
    speaking = False

    def pause(self) -> None:
        pass


class _Host:  # the floor's pipeline, as far as joining audio goes
    playout = _Playout()

    def reply_playing(self) -> bool:
        return True

    async def interrupt(self, reason: str, forget: bool = False) -> None:
        pass


async def _joined_transcript(audio: np.ndarray, cut: int, gap_ms: int) -> list[str]:
    floor = Floor(_Host(), 900, 1000, 16000)  # type: ignore[arg-type]
    floor.turn_started(0, audio_start=0)
    floor.turn_ended(audio[:cut], turn_end_ns=1, audio_end=cut)
    floor.turn_started(2, audio_start=cut + gap_ms * 16)
    await floor.confirm("words", turn_id=2, replying_to=1)  # a continuation
    return normalize_words(_stt().transcribe_sync(floor.joined(audio[cut:])).text).split()


async def test_the_continuation_tiny_en_started_over_on_is_transcribed_once() -> None:
    """Found by splitting the corpus's paused clips: tiny.en decoded this one as "the
    coast or the Norrid 4 to behind him with it. The coast or the Nor"."""
    import soundfile

    audio, rate = soundfile.read(TURN_TAKING.parent / "regression" / "p_door_tel.wav",
                                 dtype="int16")
    wide = resample(audio, rate, 16000)  # as the search that found it made it
    audio = resample(g711.decode(g711.encode(resample(wide, 16000, 8000), 0), 0), 8000, 16000)
    words = await _joined_transcript(audio, int(2.56 * 16000), 300)
    assert len(words) >= 6 and " ".join(words[:3]) not in " ".join(words[3:]), words


@settings(max_examples=cases(12), deadline=None, derandomize=True)
@given(name=st.sampled_from([p.name for p in CLIPS]), split=st.floats(0.25, 0.75),
       gap_ms=st.integers(0, 600))
async def test_a_continued_turn_transcribes_with_its_opening_once(
        name: str, split: float, gap_ms: int) -> None:
    audio = _speech(name)
    words = await _joined_transcript(audio, int(len(audio) * split), gap_ms)
    opening = " ".join(words[:3])
    assert len(words) < 4 or opening not in " ".join(words[3:]), words
