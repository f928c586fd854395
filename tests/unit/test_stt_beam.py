"""`stt_beam_size` (docs/recognition.md): the setting reaches the decoder of the real
bundled model, and a turn decoded with a beam still reads as what was said."""

from __future__ import annotations

from typing import Any

import pytest

from pipelines.providers.models import CascadeModels
from pipelines.providers.stt import WhisperSTT, normalize_words
from tests.harness import DATA, clip
from voice.errors import ConfigError
from voice.settings import Settings

pytestmark = pytest.mark.unit


class RecordingDecoder:
    """CTranslate2's Whisper, telling which beam size each `generate` asked for."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.beams: list[int] = []
        self.decoded: list[int] = []  # the beam each turn was decoded with, batched or not

    def generate(self, *args: Any, beam_size: int, **kwargs: Any) -> Any:
        self.beams.append(beam_size)
        self.decoded += [beam_size] * len(args[1])  # args: features, prompts
        return self.inner.generate(*args, beam_size=beam_size, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def whisper_recording(beam_size: int) -> tuple[WhisperSTT, RecordingDecoder]:
    settings = Settings.load(None, {"VOICE_STT_BEAM_SIZE": str(beam_size)})
    stt = WhisperSTT.load(settings.stt_model, "cpu", "int8", 1, settings.stt_language,
                          settings.stt_beam_size)
    decoder = RecordingDecoder(stt._model.model)
    stt._model.model = decoder
    return stt, decoder


@pytest.mark.parametrize("beam_size", [1, 4])
async def test_the_beam_size_setting_reaches_the_decoder(beam_size: int) -> None:
    stt, decoder = whisper_recording(beam_size)
    transcript = await stt.transcribe(clip(DATA / "weather.wav"))
    assert decoder.beams == [beam_size]
    assert "weather" in normalize_words(transcript.text).split()


def test_a_beam_size_below_one_is_refused() -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.load(None, {"VOICE_STT_BEAM_SIZE": "0"})
    assert "stt_beam_size" in refused.value.message


async def test_calls_at_8_khz_decode_with_the_telephone_beam_and_others_do_not() -> None:
    from service.server import Service
    from tests.harness import ScriptedLLM, ToneTTS

    stt, decoder = whisper_recording(1)
    settings = Settings.load(None, {"VOICE_TELEPHONE_STT_BEAM_SIZE": "5"})
    models = CascadeModels(stt=stt, llm=ScriptedLLM("Hello."), tts=ToneTTS())
    service = Service(settings, models)
    phone = service.telephone_models.stt
    assert isinstance(phone, WhisperSTT) and phone.queue is stt.queue  # the same model
    await phone.transcribe(clip(DATA / "weather.wav"))
    await stt.transcribe(clip(DATA / "weather.wav"))
    assert decoder.beams == [5, 1]


def whisper_with_final_pass(beam_size: int, final: int) -> tuple[WhisperSTT, RecordingDecoder]:
    settings = Settings.load(None, {"VOICE_STT_BEAM_SIZE": str(beam_size),
                                    "VOICE_STT_FINAL_BEAM_SIZE": str(final)})
    stt = WhisperSTT.load(settings.stt_model, "cpu", "int8", 1, settings.stt_language,
                          settings.stt_beam_size, settings.stt_final_beam_size)
    decoder = RecordingDecoder(stt._model.model)
    stt._model.model = decoder
    return stt, decoder


async def test_the_final_pass_decodes_the_turn_again_with_its_beam() -> None:
    """Greedy speculation, beam 5 on the final transcript: two decodes, in that order,
    and the final one reads what was said."""
    stt, decoder = whisper_with_final_pass(1, 5)
    audio = clip(DATA / "weather.wav")
    await stt.transcribe(audio)
    final = await stt.final_pass(audio)
    assert decoder.beams == [1, 5]
    assert final is not None and "weather" in normalize_words(final.text).split()
    # the telephone preset and a session's language keep the final pass
    assert stt.with_beam(2).final_beam_size == 5
    # a final pass with the speculation's own beam is none
    assert stt.with_beam(5).final_beam_size == 0
    assert await stt.with_beam(5).final_pass(audio) is None


async def test_turns_with_different_beams_are_not_decoded_in_one_batch() -> None:
    """A call's telephone beam beside a browser's greedy turn, at the same moment: each
    is decoded with its own beam (they share one model and inference queue)."""
    import asyncio

    stt, decoder = whisper_recording(1)
    audio = clip(DATA / "weather.wav")
    await asyncio.gather(stt.transcribe(audio), stt.with_beam(5).transcribe(audio),
                         stt.transcribe(audio))
    assert sorted(decoder.decoded) == [1, 1, 5]


def test_a_final_beam_outside_its_range_is_refused() -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.load(None, {"VOICE_STT_FINAL_BEAM_SIZE": "17"})
    assert "stt_final_beam_size" in refused.value.message


async def test_the_reply_is_given_the_final_pass_words() -> None:
    """Through the pipeline: the end-of-turn policy reads the speculative decode, the
    caller's transcript and the LLM get the final pass's words."""
    from pipelines.providers.stt import Transcript
    from tests.harness import PipelineHarness, ScriptedLLM, ScriptedSTT, silence
    from voice.events import ResponseDone, TranscriptFinal

    class WithFinalPass(ScriptedSTT):
        final_beam_size = 5
        finals = 0

        async def final_pass(self, audio: Any) -> Transcript:
            self.finals += 1
            return Transcript("What is the weather like in Paris today?", 0.0, -0.1, 1000)

    weather = clip(DATA / "weather.wav")
    stt = WithFinalPass({"What is the weather like in Paris?": weather})
    harness = PipelineHarness(stt, ScriptedLLM("It is sunny."))
    async with harness.running():
        await harness.say(silence(300), weather, silence(300))
        await harness.wait_for(ResponseDone, timeout=20)
    assert stt.heard_texts[-1] == "What is the weather like in Paris?"  # the speculation
    assert stt.finals >= 1
    (final,) = harness.io.of(TranscriptFinal)
    assert final.text == "What is the weather like in Paris today?"
    assert harness.llm.prompts[-1][-1]["content"] == "What is the weather like in Paris today?"
