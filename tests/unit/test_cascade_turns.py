"""The cascade's turn-taking rules, driven through the pipeline harness (tests/harness.py):
real speech clips paced in real time, the real VAD, detector and floor, scripted
models. These rules were only tested end to end before."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pipelines.providers.llm import Message
from pipelines.tools import ToolBox, ToolCall, from_function
from tests.harness import (
    DATA,
    TURN_TAKING,
    PipelineHarness,
    ScriptedLLM,
    ScriptedSTT,
    clip,
    silence,
)
from voice.audio import resample
from voice.events import ResponseDone, ResponseInterrupted, SpeechStarted, TranscriptFinal

pytestmark = pytest.mark.unit

REPLY = ("Paris is sunny today with a light breeze from the west. It should stay dry "
         "until the evening, when a few clouds come in from the sea.")


WEATHER, STOP, UHHUH = (clip(DATA / "weather.wav"), clip(DATA / "stop.wav"),
                        clip(TURN_TAKING / "b_uhhuh.wav"))
PHONE, NAME = clip(TURN_TAKING / "p_phone.wav"), clip(DATA / "name.wav")


async def test_a_backchannel_over_the_reply_does_not_stop_it() -> None:
    harness = PipelineHarness(ScriptedSTT({"Uh-huh.": UHHUH,
                                           "What is the weather like in Paris?": WEATHER}),
                              ScriptedLLM(REPLY))
    async with harness.running():
        await harness.say(silence(300), WEATHER, silence(300))
        await harness.until_playing()
        await harness.say(silence(400), UHHUH)
        done = await harness.wait_for(ResponseDone, timeout=20)
    io = harness.io
    assert len(io.of(SpeechStarted)) == 2  # the uh-huh was heard as speech ...
    assert io.of(ResponseInterrupted) == []  # ... and did not interrupt
    assert [t.text for t in io.of(TranscriptFinal)] == ["What is the weather like in Paris?"]
    assert done[0].text.strip() == REPLY
    asked = {m["content"] for prompt in harness.llm.prompts for m in prompt if m["role"] == "user"}
    assert asked == {"What is the weather like in Paris?"}  # the uh-huh never reached it
    assert not io.playout.paused


async def test_words_over_the_reply_interrupt_it_and_history_keeps_what_was_heard() -> None:
    harness = PipelineHarness(ScriptedSTT({"Wait, stop, I meant Tuesday.": STOP,
                                           "What is the weather like in Paris?": WEATHER}),
                              ScriptedLLM(REPLY))
    async with harness.running():
        await harness.say(silence(300), WEATHER, silence(300))
        await harness.until_playing()
        await harness.say(silence(1500))  # past the continuation window
        await harness.say(STOP)
        (interrupted,) = await harness.wait_for(ResponseInterrupted, timeout=20)
        await harness.wait_for(ResponseDone, timeout=20)  # the answer to the interruption
    assert interrupted.reason == "barge_in" and interrupted.played_ms > 0
    second_prompt = harness.llm.prompts[-1]
    assert second_prompt[-1] == {"role": "user", "content": "Wait, stop, I meant Tuesday."}
    kept = [m["content"] for m in second_prompt if m["role"] == "assistant"]
    assert kept == [interrupted.played_text] and REPLY.startswith(kept[0])
    assert kept[0] != REPLY  # only what the caller heard


async def test_speech_right_after_a_turn_continues_it_as_one_utterance() -> None:
    harness = PipelineHarness(ScriptedSTT({"My phone number is five five five.": PHONE,
                                           "My name is Alice.": NAME}), ScriptedLLM(REPLY))
    async with harness.running():
        await harness.say(silence(300), PHONE)
        await harness.until_playing()  # the first part was answered ...
        await harness.say(NAME)  # ... and the caller goes on at once
        interrupted = await harness.wait_for(ResponseInterrupted, timeout=20)
        await harness.wait_for(ResponseDone, timeout=20)
    assert [i.reason for i in interrupted] == ["continuation"]
    final = harness.llm.prompts[-1]
    assert [m["content"] for m in final if m["role"] == "user"] == [
        "My phone number is five five five. My name is Alice."]  # once, whole, in order
    assert not [m for m in final if m["role"] == "assistant"]  # the cut reply is forgotten
    assert [t.text for t in harness.io.of(TranscriptFinal)][-1] == (
        "My phone number is five five five. My name is Alice.")


class LooksItUp(ScriptedLLM):
    """Says a few words and calls `lookup` first; then, with the result, the reply."""

    async def stream(self, messages: list[Message], tools: list[dict[str, Any]] | None = None,
                     calls: list[ToolCall] | None = None) -> AsyncIterator[str]:
        self.prompts.append([dict(m) for m in messages])
        if tools and calls is not None and messages[-1]["role"] == "user" \
                and sum(m["role"] == "user" for m in messages) == 1:  # the first question
            yield "Let me check. "
            calls.append(ToolCall("call_1", "lookup", "{}"))
            return
        for word in self.reply.split(" "):
            await asyncio.sleep(0)
            yield word + " "


async def test_a_barge_in_after_a_tool_round_keeps_the_words_before_it_once() -> None:
    async def lookup() -> str:
        return "sunny, 21 degrees"

    harness = PipelineHarness(ScriptedSTT({"Wait, stop, I meant Tuesday.": STOP,
                                           "What is the weather like in Paris?": WEATHER}),
                              LooksItUp(REPLY), tools=ToolBox([from_function(lookup)]))
    async with harness.running():
        await harness.say(silence(300), WEATHER, silence(300))
        await harness.until_playing()
        await harness.say(silence(3000))  # "Let me check." and some of the answer
        await harness.say(STOP)
        (interrupted,) = await harness.wait_for(ResponseInterrupted, timeout=20)
        await harness.wait_for(ResponseDone, timeout=20)
    assert interrupted.played_text.startswith("Let me check.")  # the caller heard it all
    history = harness.llm.prompts[-1][1:]
    assert [m["role"] for m in history] == ["user", "assistant", "tool", "assistant", "user"]
    assert history[1]["content"].strip() == "Let me check."  # the message that made the call
    after = history[3]["content"]  # what was heard of the answer, and only that
    assert REPLY.startswith(after) and after != REPLY, after


async def test_speech_that_was_not_understood_is_answered_with_the_reprompt() -> None:
    harness = PipelineHarness(ScriptedSTT({}), ScriptedLLM(REPLY))  # hears no words in it
    async with harness.running():
        await harness.say(silence(300), WEATHER, silence(300))
        (done,) = await harness.wait_for(ResponseDone, timeout=20)
        await harness.say(silence(300), WEATHER, silence(300))  # said again: asked again
        await harness.wait_for(ResponseDone, count=2, timeout=20)
    io = harness.io
    assert done.reprompt and done.text == "Sorry, I didn't catch that."
    assert len(io.sent) // 2 >= 16000 * 0.15 * 4  # its words were played (150 ms a word)
    assert io.of(TranscriptFinal) == [] and harness.llm.prompts == []  # nothing to answer
    assert harness.pipeline.history == []  # and the conversation is as it was
    assert [d.turn_id for d in io.of(ResponseDone)] == [1, 2]  # once for each turn


async def test_noise_that_starts_a_turn_is_never_reprompted() -> None:
    tones = resample(_corpus_clip("n_tones_tel.wav"), 8000, 16000)
    harness = PipelineHarness(ScriptedSTT({}), ScriptedLLM(REPLY))
    async with harness.running():
        await harness.say(silence(300), tones, silence(2500))
    assert harness.stt.heard_seconds  # a turn was heard and transcribed (as nothing) ...
    assert harness.io.of(ResponseDone) == [] and not harness.io.sent  # ... and left alone


async def test_the_reprompt_can_be_switched_off() -> None:
    harness = PipelineHarness(ScriptedSTT({}), ScriptedLLM(REPLY), reprompt_message="")
    async with harness.running():
        await harness.say(silence(300), WEATHER, silence(2500))
    assert harness.stt.heard_seconds and harness.io.of(ResponseDone) == []


def _corpus_clip(name: str) -> Any:
    import soundfile

    audio, _ = soundfile.read(TURN_TAKING.parent / "regression" / name, dtype="int16")
    return audio
