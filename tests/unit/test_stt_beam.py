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

    def generate(self, *args: Any, beam_size: int, **kwargs: Any) -> Any:
        self.beams.append(beam_size)
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
