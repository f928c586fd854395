"""A session's `language` (session.update), through the pipeline harness: the speech
model is asked for that language, the LLM is told to answer in it, and a speech model
that cannot take it refuses the whole update, naming the field."""

from __future__ import annotations

import copy

import pytest

from tests.harness import DATA, PipelineHarness, ScriptedLLM, ScriptedSTT, clip, silence
from voice.errors import ConfigError
from voice.events import ResponseDone

pytestmark = pytest.mark.unit

WEATHER = clip(DATA / "weather.wav")


class MultilingualSTT(ScriptedSTT):
    """The scripted speech model, as a multilingual one: `for_language` gives a copy."""

    language = "en"

    def for_language(self, code: str) -> MultilingualSTT:
        if code not in ("en", "fr", "de"):
            raise ConfigError(f"session.language: {code!r} is not a language code",
                              code="invalid_session_update")
        other = copy.copy(self)
        other.language = code
        return other


async def test_a_session_in_french_asks_the_llm_to_answer_in_french() -> None:
    harness = PipelineHarness(MultilingualSTT({"Quel temps fait-il à Paris ?": WEATHER}),
                              ScriptedLLM("Il fait beau."), system_prompt="Be brief.")
    updated = harness.pipeline.update_session({"language": "fr"})
    assert updated["language"] == "fr" and updated["voice"] == "tone-tts"
    async with harness.running():
        await harness.say(silence(300), WEATHER, silence(300))
        await harness.wait_for(ResponseDone, timeout=20)
    system = harness.llm.prompts[-1][0]
    assert system["role"] == "system" and system["content"].startswith("Be brief.")
    assert "'fr': always answer in that language" in system["content"]
    # back to the service's own language: the plain instructions again
    assert harness.pipeline.update_session({"language": "en"})["language"] == "en"
    assert harness.pipeline._instructions() == "Be brief."


def test_a_language_the_speech_model_cannot_take_changes_nothing() -> None:
    harness = PipelineHarness(MultilingualSTT({}), ScriptedLLM("x"), system_prompt="Be brief.")
    with pytest.raises(ConfigError) as refused:
        harness.pipeline.update_session({"instructions": "Be long.", "language": "xx"})
    assert "session.language" in refused.value.message
    settings = harness.pipeline.session_settings()
    assert settings["language"] == "en" and settings["instructions"] == "Be brief."
    plain = PipelineHarness(ScriptedSTT({}), ScriptedLLM("x"))  # no for_language at all
    with pytest.raises(ConfigError) as no_language:
        plain.pipeline.update_session({"language": "fr"})
    assert "takes no language" in no_language.value.message


def test_the_bundled_english_whisper_model_takes_only_english() -> None:
    from pipelines.providers.stt import WhisperSTT

    whisper = WhisperSTT.load("", "cpu", "int8", 1, "en")
    assert whisper.for_language("en") is whisper
    with pytest.raises(ConfigError) as refused:
        whisper.for_language("fr")
    assert "knows only en" in refused.value.message and refused.value.code == \
        "invalid_session_update"
