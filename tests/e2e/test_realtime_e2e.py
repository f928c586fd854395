"""The OpenAI-Realtime-compatible endpoint (/v1/realtime) and the realtime pipeline, end
to end: one real service with the bundled models whose realtime pipeline uses the
service's own endpoint as its provider; the official `openai` library's realtime
client as the endpoint's caller; replies transcribed back with Whisper."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import numpy as np
import pytest
from openai import AsyncOpenAI
from openai.resources.realtime.realtime import AsyncRealtimeConnection
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter

import tests.e2e.conftest as e2e
from clients.audiofile import load_audio
from clients.ws_client import VoiceClient
from latency_tests.llm_server import CallTools, LLMServer
from pipelines.context import prompt_tokens
from pipelines.providers.stt import WhisperSTT
from pipelines.realtime.options import RealtimeOptions
from pipelines.realtime.pipeline import RealtimePipeline
from pipelines.realtime.provider import WebSocketProvider
from tests.conftest import word_recall
from tests.e2e.conftest import RunningService, converse, speak, transcribe_back
from tests.e2e.test_realtime_pipeline_provider import Caller, pipeline_tasks
from voice.clock import MONOTONIC
from voice.events import ResponseDone, SpeechStarted, SpeechStopped, TranscriptFinal, TurnLatency

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

SERVER = TypeAdapter(RealtimeServerEvent)
REPLY = "It is sunny and warm in London today."
LONG_REPLY = (
    "Here is a long story about a lighthouse keeper. Every evening he climbed the tower "
    "and lit the lamp for the ships at sea. One night a storm came in from the west and "
    "the waves rose higher than the rocks. He kept the light burning until the morning. "
    "The sailors never forgot him, and the town built a statue by the harbour."
)


@pytest.fixture(scope="module")
def service(llm: LLMServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    """The service, with its realtime pipeline pointed at its own /v1/realtime."""
    running = e2e.start_self_realtime_service(tmp_path_factory.mktemp("realtime"), {
        "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "sk-test-key-123",
        "VOICE_IDLE_TIMEOUT_S": "20"})
    yield running
    e2e.stop_service(running)
    assert "sk-test-key-123" not in running.log()


@contextlib.asynccontextmanager
async def realtime(service: RunningService) -> AsyncIterator[AsyncRealtimeConnection]:
    client = AsyncOpenAI(base_url=f"{service.url}/v1", api_key="sk-test-key-123")
    async with client.realtime.connect(model="gpt-realtime") as connection:
        yield connection


async def until(connection: AsyncRealtimeConnection, kind: str,
                timeout: float = 20.0) -> list[Any]:
    """Events up to and including the first of type `kind`, each checked against the
    official types."""
    events: list[Any] = []
    async with asyncio.timeout(timeout):
        async for event in connection:
            SERVER.validate_python(event.to_dict())
            events.append(event)
            if event.type == kind:
                return events
    raise AssertionError(f"closed before {kind}")


def audio_of(events: list[Any]) -> np.ndarray:
    pcm = b"".join(base64.b64decode(e.delta) for e in events
                   if e.type == "response.output_audio.delta")
    return np.frombuffer(pcm, dtype="<i2").astype(np.int16)


async def send_speech(connection: AsyncRealtimeConnection, path: str) -> None:
    """The utterance at 24 kHz, then 1 s of silence; server VAD runs in audio time, so
    the audio need not be paced."""
    audio = load_audio(path, 24000)
    audio = np.concatenate([np.zeros(12000, np.int16), audio, np.zeros(24000, np.int16)])
    for i in range(0, len(audio), 2400):
        chunk = audio[i: i + 2400].astype("<i2").tobytes()
        await connection.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())


# -- the endpoint, with the official openai client -------------------------------------------
async def test_openai_client_holds_a_spoken_turn(
        service: RunningService, fresh_llm: LLMServer, whisper: WhisperSTT,
        utterances: dict[str, dict[str, str]]) -> None:
    fresh_llm.behaviour.reply = REPLY
    async with realtime(service) as connection:
        created = await until(connection, "session.created")
        assert created[-1].session.audio.input.format.rate == 24000
        await connection.session.update(session={
            "type": "realtime", "instructions": "Answer briefly.",
            "audio": {"input": {"transcription": {"model": "whisper-1"},
                                "turn_detection": {"type": "server_vad",
                                                   "silence_duration_ms": 300}}}})
        updated = await until(connection, "session.updated")
        assert updated[-1].session.audio.input.turn_detection.silence_duration_ms == 300
        await send_speech(connection, utterances["weather"]["path"])
        events = await until(connection, "response.done")
    kinds = [e.type for e in events]
    assert kinds.index("input_audio_buffer.speech_started") < kinds.index(
        "input_audio_buffer.speech_stopped") < kinds.index("response.created")
    (heard,) = [e for e in events
                if e.type == "conversation.item.input_audio_transcription.completed"]
    assert word_recall(utterances["weather"]["text"], heard.transcript) >= 0.8
    messages = fresh_llm.requests[-1]["messages"]
    assert messages[0] == {"role": "system", "content": "Answer briefly."}
    assert messages[-1] == {"role": "user", "content": heard.transcript}
    words = "".join(e.delta for e in events if e.type == "response.output_audio_transcript.delta")
    assert words == REPLY
    done = events[-1].response
    assert done.status == "completed" and done.output[0].content[0].transcript == REPLY
    spoken = transcribe_back(whisper, audio_of(events), 24000)
    assert word_recall(REPLY, spoken) >= 0.8, spoken


async def test_openai_client_text_turns(service: RunningService, fresh_llm: LLMServer,
                                        whisper: WhisperSTT) -> None:
    fresh_llm.behaviour.reply = lambda messages: f"You wrote: {messages[-1]['content']}"
    async with realtime(service) as connection:
        await until(connection, "session.created")
        await connection.conversation.item.create(item={
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "Good morning."}]})
        added = await until(connection, "conversation.item.done")
        assert added[-1].item.content[0].text == "Good morning."
        await connection.response.create()
        spoken = await until(connection, "response.done")
        await connection.conversation.item.create(item={
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "Thank you."}]})
        await connection.response.create(response={"output_modalities": ["text"]})
        written = await until(connection, "response.done")
    assert spoken[-1].response.output[0].content[0].transcript == "You wrote: Good morning."
    heard = transcribe_back(whisper, audio_of(spoken), 24000)
    assert word_recall("You wrote good morning", heard) >= 0.75, heard
    text = "".join(e.delta for e in written if e.type == "response.output_text.delta")
    assert text == "You wrote: Thank you."
    assert audio_of(written).size == 0
    assert [m["role"] for m in fresh_llm.requests[-1]["messages"]] == [
        "system", "user", "assistant", "user"]


async def test_openai_client_cancels_a_reply_mid_way(service: RunningService,
                                                     fresh_llm: LLMServer) -> None:
    fresh_llm.behaviour.reply = LONG_REPLY
    fresh_llm.behaviour.token_interval = 0.05
    async with realtime(service) as connection:
        await until(connection, "session.created")
        await connection.conversation.item.create(item={
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "Tell me a story."}]})
        await connection.response.create()
        before = await until(connection, "response.output_audio.delta")
        await connection.response.cancel()
        after = await until(connection, "response.done")
        await connection.send({"type": "response.cancel"})  # nothing left to cancel
        refused = await until(connection, "error")
    done = after[-1].response
    assert done.status == "cancelled"
    assert done.status_details.reason == "client_cancelled"
    assert done.output[0].status == "incomplete"
    kinds = [e.type for e in after]
    assert kinds.index("response.output_audio.done") < kinds.index("response.done")
    full_seconds = len(LONG_REPLY.split()) / 2.5  # roughly, at speaking pace
    assert len(audio_of(before + after)) / 24000 < full_seconds / 2
    assert refused[-1].error.code == "response_cancel_not_active"


async def test_bad_client_events_get_error_events_not_a_closed_connection(
        service: RunningService) -> None:
    async with realtime(service) as connection:
        await until(connection, "session.created")
        cases = [({"type": "session.explode", "event_id": "evt_1"}, "invalid_value"),
                 ({"type": "input_audio_buffer.append", "audio": "%%%"}, "invalid_value"),
                 ({"type": "input_audio_buffer.commit"}, "input_audio_buffer_commit_empty"),
                 ({"type": "conversation.item.truncate", "item_id": "nope", "content_index": 0,
                   "audio_end_ms": 10}, "invalid_value"),
                 ({"type": "session.update", "session": {"type": "realtime", "audio": {
                     "input": {"format": {"type": "audio/pcmu"}}}}}, "unsupported")]
        for event, code in cases:
            await connection.send(event)  # type: ignore[arg-type]
            error = (await until(connection, "error"))[-1].error
            assert error.code == code, (event, error)
        assert error.param == "session.audio.input.format"
        await connection.send_raw("{not json")  # as a broken client would
        assert (await until(connection, "error"))[-1].error.code == "invalid_json"
        for raw, param in [  # each once closed the connection with 1011
                ('{"type": "session.update", "session": {"audio": {"input": {"turn_detection":'
                 ' {"type": "server_vad", "silence_duration_ms": 1e999}}}}}',
                 "session.audio.input.turn_detection.silence_duration_ms"),
                ('{"type": "conversation.item.create", "item": {"type": "message", "role": '
                 '"user", "content": [{"type": ["input_text"], "text": "hi"}]}}',
                 "item.content.type")]:
            await connection.send_raw(raw)
            error = (await until(connection, "error"))[-1].error
            assert (error.code, error.param) == ("invalid_value", param), error
        await connection.session.update(session={"type": "realtime", "instructions": "Hi"})
        assert (await until(connection, "session.updated"))[-1].session.instructions == "Hi"


async def test_a_client_gone_mid_reply_leaves_nothing_behind(service: RunningService,
                                                              fresh_llm: LLMServer) -> None:
    fresh_llm.behaviour.reply = LONG_REPLY
    fresh_llm.behaviour.token_interval = 0.05
    async with realtime(service) as connection:
        await until(connection, "session.created")
        await connection.conversation.item.create(item={
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "Tell me a story."}]})
        await connection.response.create()
        await until(connection, "response.output_audio.delta")
    async with asyncio.timeout(10):  # the endpoint's session and its tasks are gone
        while (await asyncio.to_thread(service.health))["realtime_api_sessions"]:  # noqa: ASYNC110
            await asyncio.sleep(0.05)



# -- the realtime pipeline, with our endpoint as its provider --------------------------------
async def test_realtime_pipeline_turn_over_the_websocket_transport(
        service: RunningService, fresh_llm: LLMServer, whisper: WhisperSTT,
        utterances: dict[str, dict[str, str]]) -> None:
    fresh_llm.behaviour.reply = REPLY
    async with VoiceClient(service.url, 16000, pipeline="realtime") as client:
        assert client.session["pipeline"] == "realtime"
        done = await converse(client, utterances["weather"]["path"])
    (transcript,) = client.events_of("transcript.final")
    assert word_recall(utterances["weather"]["text"], transcript["text"]) >= 0.8
    assert done["type"] == "response.done" and done["text"] == REPLY
    assert "".join(e["delta"] for e in client.events_of("response.text.delta")) == REPLY
    heard = transcribe_back(whisper, client.reply_audio(), 16000)
    assert word_recall(REPLY, heard) >= 0.8, heard
    (latency,) = client.events_of("turn.latency")
    assert latency["provider"].startswith("realtime:127.0.0.1:")
    stages = latency["stages"]
    assert {"endpointing_ms", "tts_ms", "transport_ms", "voice_to_voice_ms"} <= set(stages)
    assert stages["endpointing_ms"] >= 200  # the configured silence, from the true end
    assert client.events_of("error") == []


async def test_realtime_pipeline_barge_in_truncates_what_was_not_heard(
        service: RunningService, fresh_llm: LLMServer,
        utterances: dict[str, dict[str, str]]) -> None:
    def reply(messages: list[dict[str, str]]) -> str:
        return "Okay, Tuesday it is." if "stop" in messages[-1]["content"].lower() \
            else LONG_REPLY

    fresh_llm.behaviour.reply = reply
    async with VoiceClient(service.url, 16000, pipeline="realtime") as client:
        await speak(client, utterances["weather"]["path"])
        await client.wait_for("turn.latency", timeout=15)
        while len(client.reply_audio()) < 16000 * 2:
            await client.stream_silence(0.1)
        await speak(client, utterances["stop"]["path"])
        interrupted = await client.wait_for("response.interrupted", timeout=10)
        cut_ns = interrupted["_received_ns"]
        while not client.events_of("response.done"):
            await client.stream_silence(0.1)
    assert interrupted["reason"] == "barge_in"
    assert 1500 <= interrupted["played_ms"] < 20000
    played = interrupted["played_text"]
    assert played and LONG_REPLY.startswith(played) and len(played) < len(LONG_REPLY)
    next_transcript = client.events_of("transcript.final")[1]["_received_ns"]
    stray = [c for c in client.record.audio if cut_ns < c.arrival_ns < next_transcript]
    assert sum(len(c.samples) for c in stray) <= 16000 * 0.25
    # the provider (our endpoint) was told exactly what was heard, and kept only that
    truncations = re.findall(r"truncated at (\d+) ms of (\d+) ms", service.log())
    assert truncations and int(truncations[-1][0]) == interrupted["played_ms"]
    history = fresh_llm.requests[-1]["messages"]
    (kept,) = [m["content"] for m in history if m["role"] == "assistant"]
    assert abs(len(kept.split()) - len(played.split())) <= 1 and LONG_REPLY.startswith(kept)
    assert client.events_of("response.done")[0]["text"] == "Okay, Tuesday it is."


async def test_realtime_pipeline_with_our_own_vad_commits_each_turn(
        service: RunningService, fresh_llm: LLMServer,
        utterances: dict[str, dict[str, str]]) -> None:
    """turn_detection local: our VAD ends the turn, then input_audio_buffer.commit and
    response.create (the endpoint runs with turn detection off)."""
    fresh_llm.behaviour.reply = REPLY
    url = service.url.replace("http://", "ws://") + "/v1/realtime"
    caller = Caller()
    options = RealtimeOptions(instructions="Be brief.", voice="marin", turn_detection="local",
                              silence_ms=250, language="en", timeout_s=10)
    pipeline = RealtimePipeline(WebSocketProvider(url, "gpt-realtime", "", 10), options, caller,
                                MONOTONIC)
    audio = load_audio(utterances["train"]["path"], 16000)
    audio = np.concatenate([np.zeros(8000, np.int16), audio, np.zeros(16000, np.int16)])

    async def session() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(caller.playout.run(), name="test-playout")
            tg.create_task(pipeline.run(), name="test-pipeline")
            for i in range(0, len(audio), 320):
                pipeline.push_audio(audio[i: i + 320], MONOTONIC.now_ns())
                await asyncio.sleep(0.002)

    task = asyncio.create_task(session())
    try:
        await caller.wait(lambda: bool(caller.of(ResponseDone)), timeout=30)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert pipeline_tasks() == []
    kinds = [type(e) for e in caller.events if type(e) in (
        SpeechStarted, SpeechStopped, TranscriptFinal, TurnLatency, ResponseDone)]
    assert kinds == [SpeechStarted, SpeechStopped, TranscriptFinal, TurnLatency, ResponseDone]
    assert word_recall(utterances["train"]["text"], caller.of(TranscriptFinal)[0].text) >= 0.8
    assert caller.of(ResponseDone)[0].text == REPLY


async def test_realtime_pipeline_keypad_zero_speaks_the_goodbye_and_hangs_up(
        service: RunningService, whisper: WhisperSTT) -> None:
    async with VoiceClient(service.url, 16000, pipeline="realtime") as client:
        await client.stream_silence(0.3)
        await client.send_json({"type": "dtmf", "digit": "0"})
        done = await client.wait_for("response.done", timeout=15)
        await client.wait_closed()
    assert done["text"] == "Connecting you to a person. Goodbye."
    assert client.close_code == 1000
    heard = transcribe_back(whisper, client.reply_audio(), 16000)
    assert word_recall("connecting you to a person goodbye", heard) >= 0.6, heard


async def test_the_key_never_reaches_the_log(service: RunningService) -> None:
    assert "sk-test-key-123" not in service.log()


async def test_a_200_turn_session_reads_a_prompt_that_levels_off(
        service: RunningService, fresh_llm: LLMServer) -> None:
    """/v1/realtime keeps what the LLM reads within llm_history_tokens (3000): the
    prompt grows with the first turns, then stays level; the system prompt and the
    newest question are always there."""
    fresh_llm.behaviour.reply = "A reply of some twenty words, " * 4
    sizes = []
    async with realtime(service) as connection:
        await until(connection, "session.created")
        for n in range(200):
            await connection.conversation.item.create(item={
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": f"Question {n}, if you please."}]})
            await connection.response.create(response={"output_modalities": ["text"]})
            await until(connection, "response.done")
            messages = fresh_llm.requests[-1]["messages"]
            assert messages[0]["role"] == "system"
            assert messages[-1]["content"] == f"Question {n}, if you please."
            sizes.append(prompt_tokens(messages))
    print(f"prompt tokens at turns 1, 10, 50, 100, 200: "
          f"{[sizes[i] for i in (0, 9, 49, 99, 199)]}")
    assert sizes[9] > sizes[0] and max(sizes) <= 3000
    assert max(sizes[100:]) - min(sizes[100:]) < 100  # level: one turn's worth at most


async def test_openai_client_function_calling(service: RunningService, fresh_llm: LLMServer,
                                              whisper: WhisperSTT) -> None:
    """The client declares a function tool; the model calls it (function_call item,
    arguments events); the client runs it and sends a function_call_output item; the
    spoken answer uses its output. Every event is checked against the SDK's types."""
    def responder(messages: list[dict[str, Any]]) -> str | CallTools:
        if messages[-1]["role"] == "tool":
            return f"The weather in Paris is {messages[-1]['content']}."
        return CallTools((("get_weather", '{"city": "Paris"}'),))

    fresh_llm.behaviour.reply = responder
    async with realtime(service) as connection:
        await until(connection, "session.created")
        await connection.session.update(session={"type": "realtime", "tools": [{
            "type": "function", "name": "get_weather", "description": "The weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]}}], "tool_choice": "auto"})
        updated = await until(connection, "session.updated")
        assert updated[-1].session.tools[0].name == "get_weather"  # type: ignore[union-attr]
        await connection.conversation.item.create(item={
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "What is the weather in Paris?"}]})
        await connection.response.create()
        asked = await until(connection, "response.done")
        done = asked[-1].response
        (call,) = [o for o in done.output if o.type == "function_call"]
        assert (call.name, call.arguments) == ("get_weather", '{"city": "Paris"}')
        kinds = [e.type for e in asked]
        assert "response.function_call_arguments.delta" in kinds
        (arguments_done,) = [e for e in asked if e.type == "response.function_call_arguments.done"]
        assert arguments_done.call_id == call.call_id and arguments_done.name == "get_weather"
        assert fresh_llm.requests[-1]["tools"][0]["function"]["name"] == "get_weather"

        await connection.conversation.item.create(item={
            "type": "function_call_output", "call_id": call.call_id, "output": "sunny and mild"})
        await until(connection, "conversation.item.done")
        await connection.response.create()
        answered = await until(connection, "response.done")
    transcript = answered[-1].response.output[0].content[0].transcript
    assert transcript == "The weather in Paris is sunny and mild."
    heard = transcribe_back(whisper, audio_of(answered), 24000)
    assert word_recall("the weather in paris is sunny and mild", heard) >= 0.7, heard
    history = fresh_llm.requests[-1]["messages"]
    assert [m["role"] for m in history] == ["system", "user", "assistant", "tool"]
    assert history[2]["tool_calls"][0]["id"] == call.call_id
    assert history[3] == {"role": "tool", "tool_call_id": call.call_id,
                          "content": "sunny and mild"}
