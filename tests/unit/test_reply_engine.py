"""The reply engine (pipelines/reply_engine.py) tells the inference queues how urgent
each sentence is: the first one now, each later one when the audio before it will
have played (voice/scheduler.py runs a due sentence before newer first sentences)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from pipelines.providers.models import CascadeModels
from pipelines.reply_engine import Completed, Generation
from voice.scheduler import Demand, current_demand

pytestmark = pytest.mark.unit

RATE = 16000


class TwoSentences:
    name = "scripted"

    async def stream(self, messages: Any) -> AsyncIterator[str]:
        for delta in ("One sentence here. ", "And another one."):
            yield delta


class SecondPerSentence:
    """Each sentence makes one second of audio; records the demand it ran under."""

    name = "fake"
    sample_rate = RATE

    def __init__(self) -> None:
        self.asked: list[tuple[str, Demand, float]] = []

    async def synthesize(self, text: str) -> np.ndarray:
        self.asked.append((text, current_demand(), time.monotonic()))
        return np.full(RATE, 1000, dtype=np.int16)


async def test_each_later_sentence_is_due_when_the_audio_before_it_has_played() -> None:
    tts = SecondPerSentence()
    models = CascadeModels(stt=None, llm=TwoSentences(), tts=tts)  # type: ignore[arg-type]
    generation = Generation(models, lambda heard: [], None, RATE, 0.6)
    await generation.run()
    outputs = []
    while not generation.outbox.empty():
        outputs.append(generation.outbox.get_nowait())
    assert isinstance(outputs[-1], Completed)
    (first, first_demand, voiced), (second, second_demand, _) = tts.asked
    assert (first, second) == ("One sentence here.", "And another one.")
    assert not first_demand.later and first_demand.due is None
    assert second_demand.later and second_demand.due is not None
    # the first sentence's second of audio plays from about when it was voiced
    assert voiced + 1.0 <= second_demand.due <= voiced + 1.2
