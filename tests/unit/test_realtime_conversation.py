"""The realtime pipeline's records (pipelines/realtime/conversation.py, fallback.py):
which provider item is which turn, what a continuation takes back, how much unheard
audio waits for a fallback."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.realtime.conversation import HISTORY_TURNS, Conversation
from pipelines.realtime.fallback import REPLAY_S, UnheardAudio

pytestmark = pytest.mark.unit


def test_a_transcript_lands_on_the_turn_whose_speech_made_the_item() -> None:
    conversation = Conversation()
    conversation.speech_started("item_a", turn_id=1, audio_start_ms=500)
    conversation.speech_stopped("item_a", audio_end_ms=2300, turn_id=1)
    conversation.input_committed("item_a", turn_id=1)
    conversation.speech_started("item_b", turn_id=2, audio_start_ms=4000)

    final = conversation.transcribed("item_a", "  What time is it? ", turn_id=2)

    assert final is not None
    assert (final.turn_id, final.text, final.audio_ms) == (1, "What time is it?", 1800)
    assert conversation.history == [("user", "What time is it?")]


def test_an_empty_transcript_makes_no_event_and_no_message() -> None:
    conversation = Conversation()
    conversation.input_committed("item_a", turn_id=1)
    assert conversation.transcribed("item_a", "   ", turn_id=1) is None
    assert conversation.history == []


def test_a_continuation_takes_back_the_turn_and_its_reply_and_nothing_before() -> None:
    conversation = Conversation()
    conversation.remember("user", "Hello.")
    conversation.remember("assistant", "Hi there.")
    conversation.committed_audio(turn_id=2, audio_ms=900)
    conversation.mark()
    conversation.input_committed("user_2", turn_id=2)
    assert conversation.transcribed("user_2", "Remind me", turn_id=2) is not None
    conversation.remember("assistant", "Sure, what should I")

    assert conversation.forget("reply_2") == ["reply_2", "user_2"]
    assert conversation.history == [("user", "Hello."), ("assistant", "Hi there.")]
    # the taken-back item's late transcript does not come back into the history
    conversation.transcribed("user_2", "Remind me", turn_id=3)
    assert conversation.history == [("user", "Hello."), ("assistant", "Hi there.")]


def test_the_books_stay_bounded_when_transcripts_never_come() -> None:
    conversation = Conversation()
    for turn in range(1, 10 * HISTORY_TURNS):
        conversation.speech_started(f"item_{turn}", turn_id=turn, audio_start_ms=0)
        conversation.remember("user", f"turn {turn}")
    assert len(conversation.history) == HISTORY_TURNS
    # the oldest items are forgotten: their transcript falls back to the current turn
    final = conversation.transcribed("item_1", "late", turn_id=999)
    assert final is not None and final.turn_id == 999
    newest = conversation.transcribed(f"item_{10 * HISTORY_TURNS - 1}", "new", turn_id=999)
    assert newest is not None and newest.turn_id == 10 * HISTORY_TURNS - 1


def test_unheard_audio_keeps_the_last_seconds_in_order_and_empties_when_taken() -> None:
    rate = 8000
    unheard = UnheardAudio(rate)
    chunk = rate // 50  # 20 ms
    for i in range(int(REPLAY_S * 50) * 2):
        unheard.keep(np.full(chunk, i % 1000, dtype=np.int16), arrival_ns=i)
    chunks = unheard.take()
    assert not unheard
    kept_s = sum(len(samples) for samples, _ in chunks) / rate
    assert REPLAY_S - 0.02 <= kept_s <= REPLAY_S + 0.02
    arrivals = [arrival for _, arrival in chunks]
    assert arrivals == sorted(arrivals) and arrivals[-1] == int(REPLAY_S * 50) * 2 - 1
