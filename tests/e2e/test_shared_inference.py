"""Shared inference: one worker serves its models over the OpenAI audio API
(`--audio-api-port`); the official `openai` client uses it, and a second worker whose
STT and TTS point at it holds a spoken turn."""

from __future__ import annotations

import io
import wave
from collections.abc import Iterator

import numpy as np
import openai
import pytest
import soundfile

from clients.audiofile import load_audio
from clients.ws_client import VoiceClient
from latency_tests.llm_server import LLMServer
from pipelines.providers.stt import WhisperSTT
from tests.conftest import word_recall
from tests.e2e.conftest import (
    RunningService,
    converse,
    free_port,
    start_service,
    stop_service,
    transcribe_back,
)

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

KEY = "sk-audio-api-key"


@pytest.fixture(scope="module")
def model_server(llm: LLMServer, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[tuple[RunningService, str]]:
    port = free_port()
    service = start_service(tmp_path_factory.mktemp("models"), {
        "OPENAI_BASE_URL": llm.base_url, "VOICE_AUDIO_API_PORT": str(port),
        "VOICE_AUDIO_API_KEY": KEY}, name="models")
    yield service, f"http://127.0.0.1:{port}/v1"
    stop_service(service)
    assert KEY not in service.log()


def audio_client(base_url: str, key: str = KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0)


def wav_of(path: str) -> bytes:
    audio = load_audio(path, 16000)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(audio.astype("<i2").tobytes())
    return buffer.getvalue()


async def test_the_openai_client_transcribes_and_speaks_through_a_worker(
        model_server: tuple[RunningService, str], whisper: WhisperSTT,
        utterances: dict[str, dict[str, str]]) -> None:
    _, base_url = model_server
    client = audio_client(base_url)
    weather = utterances["weather"]
    result = await client.audio.transcriptions.create(
        file=("weather.wav", wav_of(weather["path"]), "audio/wav"), model="whisper-1")
    assert word_recall(weather["text"], result.text) >= 0.7, result.text
    pcm = bytearray()
    async with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input="The shared voice says hello. Goodbye now.",
            response_format="pcm") as response:
        async for chunk in response.iter_bytes():
            pcm += chunk
    spoken = np.frombuffer(bytes(pcm), dtype="<i2").astype(np.int16)
    assert len(spoken) > 24000  # over a second at 24 kHz
    heard = transcribe_back(whisper, spoken, 24000)
    assert word_recall("The shared voice says hello. Goodbye now.", heard) >= 0.7, heard


async def test_bad_requests_get_openai_shaped_errors(
        model_server: tuple[RunningService, str]) -> None:
    _, base_url = model_server
    with pytest.raises(openai.AuthenticationError):
        await audio_client(base_url, key="wrong").audio.transcriptions.create(
            file=("x.wav", b"RIFF", "audio/wav"), model="whisper-1")
    client = audio_client(base_url)
    with pytest.raises(openai.BadRequestError, match="cannot read the audio"):
        await client.audio.transcriptions.create(file=("x.wav", b"not audio at all", "audio/wav"),
                                                 model="whisper-1")
    # three minutes of silence: a small file (FLAC), but too long for the shared model
    long_file = io.BytesIO()
    soundfile.write(long_file, np.zeros(8000 * 180, np.int16), 8000, format="FLAC")
    assert len(long_file.getvalue()) < 200_000
    with pytest.raises(openai.BadRequestError, match="180 s of audio; at most 120 s"):
        await client.audio.transcriptions.create(
            file=("long.flac", long_file.getvalue(), "audio/flac"), model="whisper-1")
    many = io.BytesIO()
    soundfile.write(many, np.zeros((1600, 16), np.int16), 16000, format="WAV")
    with pytest.raises(openai.BadRequestError, match="16 channels; at most 8"):
        await client.audio.transcriptions.create(
            file=("many.wav", many.getvalue(), "audio/wav"), model="whisper-1")
    with pytest.raises(openai.BadRequestError, match="input"):
        await client.audio.speech.create(model="tts-1", voice="alloy", input="   ")
    with pytest.raises(openai.BadRequestError, match="input"):
        await client.audio.speech.create(model="tts-1", voice="alloy", input="x" * 5000)


async def test_a_worker_with_remote_stt_and_tts_holds_a_spoken_turn(
        model_server: tuple[RunningService, str], llm: LLMServer, fresh_llm: LLMServer,
        whisper: WhisperSTT, utterances: dict[str, dict[str, str]],
        tmp_path_factory: pytest.TempPathFactory) -> None:
    _, base_url = model_server
    fresh_llm.behaviour.reply = "The remote models answered you."
    worker = start_service(tmp_path_factory.mktemp("thin"), {
        "OPENAI_BASE_URL": llm.base_url, "VOICE_STT_URL": base_url, "VOICE_STT_API_KEY": KEY,
        "VOICE_TTS_URL": base_url, "VOICE_TTS_API_KEY": KEY}, name="thin")
    try:
        health = worker.health()
        assert health["stt"].startswith("openai-audio:") and health["tts"].startswith(
            "openai-audio:")
        async with VoiceClient(worker.url) as client:
            done = await converse(client, utterances["weather"]["path"])
        assert done["text"] == "The remote models answered you."
        final = client.events_of("transcript.final")[0]["text"]
        assert word_recall(utterances["weather"]["text"], final) >= 0.7, final
        heard = transcribe_back(whisper, client.reply_audio(), 16000)
        assert word_recall("The remote models answered you.", heard) >= 0.7, heard
    finally:
        stop_service(worker)
    assert KEY not in worker.log()


async def test_an_unreachable_stt_server_opens_its_breaker_and_fails_fast(
        llm: LLMServer, fresh_llm: LLMServer, whisper: WhisperSTT,
        utterances: dict[str, dict[str, str]],
        tmp_path_factory: pytest.TempPathFactory) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens here
    worker = start_service(tmp_path_factory.mktemp("deadstt"), {
        "OPENAI_BASE_URL": llm.base_url, "VOICE_STT_URL": dead}, name="deadstt")
    try:
        async with VoiceClient(worker.url) as client:
            await converse(client, utterances["weather"]["path"])
            await converse(client, utterances["joke"]["path"])
        errors = client.events_of("error")
        # one error a turn; failures at startup (warm-up) and in the first turn opened the
        # breaker, so the second turn failed at once, without a connection attempt
        assert len(errors) == 2 and errors[1]["code"] == "provider_unavailable"
        assert "breaker is open" in errors[1]["message"]
        # the caller heard the (local) apology both times
        assert "sorry" in transcribe_back(whisper, client.reply_audio(), 16000).lower()
        breaker = next(v for k, v in worker.health()["breakers"].items()
                       if k.startswith("stt:"))
        assert breaker["state"] == "open" and breaker["skipped"] >= 1
    finally:
        stop_service(worker)
