"""The cascade over WebSocket, end to end: real service, real models, real openai client."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from clients.ws_client import VoiceClient
from latency_tests.llm_server import LLMServer
from pipelines.providers.stt import WhisperSTT
from tests.conftest import word_recall
from tests.e2e.conftest import RunningService, converse, noise, speak, transcribe_back

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

STAGES = ("endpointing_ms", "stt_ms", "llm_ms", "tts_ms", "transport_ms", "voice_to_voice_ms")


def last_user_message(llm: LLMServer) -> str:
    messages = llm.requests[-1]["messages"]
    return str([m for m in messages if m["role"] == "user"][-1]["content"])


@pytest.mark.parametrize("sample_rate", [16000, 8000, 48000])
async def test_turn_is_transcribed_answered_and_timed(
        service: RunningService, fresh_llm: LLMServer, whisper: WhisperSTT,
        utterances: dict[str, dict[str, str]], sample_rate: int) -> None:
    reply = "It is sunny and warm in London today."
    fresh_llm.behaviour.reply = reply
    utterance = utterances["weather"]
    async with VoiceClient(service.url, sample_rate) as client:
        assert client.session["sample_rate"] == sample_rate
        done = await converse(client, utterance["path"])

        transcript = client.events_of("transcript.final")
        assert len(transcript) == 1
        assert word_recall(utterance["text"], transcript[0]["text"]) >= 0.8
        assert last_user_message(fresh_llm) == transcript[0]["text"]
        assert done["type"] == "response.done" and done["text"] == reply
        deltas = "".join(e["delta"] for e in client.events_of("response.text.delta"))
        assert deltas == reply

        heard = transcribe_back(whisper, client.reply_audio(), sample_rate)
        assert word_recall(reply, heard) >= 0.8, heard

        (latency,) = client.events_of("turn.latency")
        stages = latency["stages"]
        assert set(STAGES) <= set(stages)
        assert all(v >= 0 for v in stages.values())
        parts = sum(v for k, v in stages.items() if k != "voice_to_voice_ms")
        assert abs(parts - stages["voice_to_voice_ms"]) <= 1.0
        # the configured 200 ms of silence, counted in audio from the true end; stamps are
        # arrival times, and on a loaded machine audio can arrive in bursts that compress
        # the wall-clock span a little
        assert stages["endpointing_ms"] >= 180


async def test_second_turn_keeps_history(service: RunningService, fresh_llm: LLMServer,
                                         utterances: dict[str, dict[str, str]]) -> None:
    fresh_llm.behaviour.reply = lambda messages: f"Answer number {len(messages)}."
    async with VoiceClient(service.url) as client:
        first = await converse(client, utterances["name"]["path"])
        second = await converse(client, utterances["train"]["path"])
    messages = fresh_llm.requests[-1]["messages"]
    roles = [m["role"] for m in messages]
    assert roles == ["system", "user", "assistant", "user"]
    assert word_recall(utterances["name"]["text"], messages[1]["content"]) >= 0.8
    assert messages[2]["content"] == first["text"]
    assert word_recall(utterances["train"]["text"], messages[3]["content"]) >= 0.8
    assert second["text"] == "Answer number 4."


LONG_REPLY = (
    "Here is a long story about a lighthouse keeper. Every evening he climbed the tower "
    "and lit the lamp for the ships at sea. One night a storm came in from the west and "
    "the waves rose higher than the rocks. He kept the light burning until the morning. "
    "The sailors never forgot him, and the town built a statue by the harbour."
)


async def test_barge_in_stops_audio_and_keeps_only_what_was_heard(
        service: RunningService, fresh_llm: LLMServer,
        utterances: dict[str, dict[str, str]]) -> None:
    def reply(messages: list[dict[str, str]]) -> str:
        said = messages[-1]["content"].lower()
        return "Okay, Tuesday it is." if "tuesday" in said else LONG_REPLY

    fresh_llm.behaviour.reply = reply
    async with VoiceClient(service.url) as client:
        await speak(client, utterances["weather"]["path"])
        await client.wait_for("turn.latency", timeout=15)
        while client.first_audible_ns(0) is None or len(client.reply_audio()) < 16000 * 2:
            await client.stream_silence(0.1)
        await speak(client, utterances["stop"]["path"])
        interrupted = await client.wait_for("response.interrupted", timeout=10)
        cut_ns = interrupted["_received_ns"]
        while not client.events_of("response.done"):  # let the second turn finish
            await client.stream_silence(0.1)
        second = client.events_of("response.done")[0]

    assert interrupted["reason"] == "barge_in"
    assert 1500 <= interrupted["played_ms"] < 20000
    played = interrupted["played_text"]
    assert played and LONG_REPLY.startswith(played.split(" ...")[0][:20])
    assert len(played) < len(LONG_REPLY)
    # after the interruption no more audio of the old reply arrives: the next audio is
    # the reply to the second turn, which starts after its transcript
    next_transcript = client.events_of("transcript.final")[1]["_received_ns"]
    stray = [c for c in client.record.audio if cut_ns < c.arrival_ns < next_transcript]
    assert sum(len(c.samples) for c in stray) <= 16000 * 0.25
    history = fresh_llm.requests[-1]["messages"]
    assistant = [m["content"] for m in history if m["role"] == "assistant"]
    assert assistant[0] == played
    assert second["text"] == "Okay, Tuesday it is."
    assert word_recall(utterances["stop"]["text"], history[-1]["content"]) >= 0.6


@pytest.mark.parametrize("kind", ["silence", "white noise", "breathing bursts", "hum"])
async def test_silence_and_noise_trigger_no_turn(service: RunningService, fresh_llm: LLMServer,
                                                  kind: str) -> None:
    # 12 s at 1.5x real time, the fastest the session takes whole (voice/session.py
    # MAX_INPUT_SPEED): faster, and most of the noise would be dropped unheard
    rate, seconds = 16000, 12.0
    if kind == "silence":
        audio = np.zeros(int(seconds * rate), np.int16)
    elif kind == "white noise":
        audio = noise(seconds, rate, 1500)
    elif kind == "breathing bursts":
        audio = noise(seconds, rate, 60)
        t = np.arange(int(0.5 * rate)) / rate
        envelope = np.sin(np.pi * t / 0.5) ** 2
        for start in range(rate, len(audio) - rate, int(2.2 * rate)):
            burst = noise(0.5, rate, 2500, seed=start) * envelope
            audio[start: start + len(burst)] = np.clip(
                audio[start: start + len(burst)] + burst, -32768, 32767).astype(np.int16)
    else:
        t = np.arange(int(seconds * rate)) / rate
        audio = (3000 * np.sin(2 * np.pi * 120 * t) + noise(seconds, rate, 200)).astype(np.int16)
    requests_before = len(fresh_llm.requests)
    async with VoiceClient(service.url) as client:
        await client.stream(audio, chunk_ms=100, speed=1.5)
        await client.stream_silence(1.0)
        await client.send_json({"type": "ping"})
        await client.wait_for("pong")
    assert client.events_of("error") == []  # all of it was heard: none dropped as too fast
    assert client.events_of("transcript.final") == []
    assert client.events_of("response.text.delta") == []
    assert client.reply_audio().size == 0
    assert len(fresh_llm.requests) == requests_before


async def test_voice_call_cli_prints_the_conversation_and_saves_the_reply(
        service: RunningService, fresh_llm: LLMServer, whisper: WhisperSTT,
        utterances: dict[str, dict[str, str]], tmp_path: Path) -> None:
    fresh_llm.behaviour.reply = "The next train leaves at nine."
    out = tmp_path / "reply.wav"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.cli", "call", "--url", service.url,
        "--sample-rate", "24000", utterances["train"]["path"], "--out", str(out),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    text = output.decode()
    assert process.returncode == 0, text
    said = next(line for line in text.splitlines() if line.startswith("you:"))
    assert word_recall(utterances["train"]["text"], said) >= 0.8
    assert "assistant: The next train leaves at nine." in text
    assert "voice_to_voice" in text
    audio, rate = soundfile.read(out, dtype="int16")
    assert rate == 24000
    heard = transcribe_back(whisper, audio, rate)
    assert word_recall("The next train leaves at nine.", heard) >= 0.8, heard


async def test_keypad_zero_speaks_the_goodbye_and_hangs_up(
        service: RunningService, whisper: WhisperSTT) -> None:
    async with VoiceClient(service.url) as client:
        await client.stream_silence(0.3)
        await client.send_json({"type": "dtmf", "digit": "5"})
        await client.wait_for("dtmf.received", digit="5")
        await client.send_json({"type": "dtmf", "digit": "0"})
        done = await client.wait_for("response.done", timeout=15)
        await client.wait_closed()
    assert done["text"] == "Connecting you to a person. Goodbye."
    assert client.close_code == 1000
    heard = transcribe_back(whisper, client.reply_audio(), 16000)
    assert word_recall("connecting you to a person goodbye", heard) >= 0.6, heard
