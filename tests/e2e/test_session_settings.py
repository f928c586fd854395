"""Per-session settings over /ws (`session.update`), against the real service: a client
sets its instructions and turn-taking preset at the start and mid-call; a bad field or
value gets an `error` naming it and leaves the session as it was, all of it."""

from __future__ import annotations

import pytest

import tests.e2e.conftest as e2e
from clients.ws_client import VoiceClient
from latency_tests.llm_server import LLMServer

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
                                      "tools": [], "turn_preset": "default"}
        await e2e.converse(client, utterances["weather"]["path"])
        assert fresh_llm.requests[-1]["messages"][0] == {
            "role": "system", "content": "You are a pirate. Talk like one."}

        for bad, names in [
            ({"voice": "alloy"}, "'voice'"),
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
