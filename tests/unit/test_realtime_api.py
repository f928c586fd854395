"""The /v1/realtime endpoint's sans-I/O parts (apis/openai_realtime/): client events,
session.update, the conversation, the response event sequence and the server VAD, all
checked against the GA types of the installed `openai` package."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter

from apis.openai_realtime.conversation import Conversation, Item, item_from_client
from apis.openai_realtime.input_audio import InputAudio, audio_ms
from apis.openai_realtime.responses import ResponseOptions, ResponseRun
from apis.openai_realtime.session_config import SessionConfig, TurnDetection, apply_update
from clients.audiofile import load_audio, voiced_bounds
from pipelines.providers.llm import ProviderTrace
from pipelines.reply_engine import Completed, Failed, Heard, Said, Voiced
from tests.strategies import cases, hostile_events
from voice.errors import ProviderError
from voice.settings import Settings
from voice.turntaking.detector import SpeechPaused, TurnEnded, TurnStarted
from wire.openai_realtime import client_events as ce

pytestmark = pytest.mark.unit

SERVER = TypeAdapter(RealtimeServerEvent)
DATA = Path(__file__).parents[1] / "data"


# -- client events ------------------------------------------------------------------------
def test_valid_client_events_parse_to_typed_values() -> None:
    pcm = b"\x01\x00\x02\x00"
    append = ce.parse_client_event(json.dumps({
        "type": "input_audio_buffer.append", "event_id": "e1",
        "audio": base64.b64encode(pcm).decode()}))
    assert append == ce.AudioAppend("e1", pcm)
    truncate = ce.parse_client_event(json.dumps({
        "type": "conversation.item.truncate", "item_id": "i", "content_index": 0,
        "audio_end_ms": 1500}))
    assert truncate == ce.ItemTruncate(None, "i", 0, 1500)
    assert ce.parse_client_event('{"type": "response.cancel"}') == ce.ResponseCancel(None, None)
    assert ce.parse_client_event('{"type": "response.create"}') == ce.ResponseCreate(None, {})


@pytest.mark.parametrize("message, code, param", [
    ("{not json", "invalid_json", None),
    ("[]", "invalid_event", None),
    ('{"event_id": "e"}', "missing_required_parameter", "type"),
    ('{"type": "session.delete"}', "invalid_value", "type"),
    ('{"type": "conversation.item.retrieve", "item_id": "x"}', "unsupported", "type"),
    ('{"type": "output_audio_buffer.clear"}', "unsupported", "type"),
    ('{"type": "input_audio_buffer.append"}', "missing_required_parameter", "audio"),
    ('{"type": "input_audio_buffer.append", "audio": 5}', "invalid_type", "audio"),
    ('{"type": "input_audio_buffer.append", "audio": "***"}', "invalid_value", "audio"),
    ('{"type": "input_audio_buffer.append", "audio": "AA=="}', "invalid_value", "audio"),
    ('{"type": "conversation.item.truncate", "item_id": "i", "content_index": 0, '
     '"audio_end_ms": -1}', "invalid_value", "audio_end_ms"),
    ('{"type": "conversation.item.truncate", "item_id": "i", "content_index": true, '
     '"audio_end_ms": 1}', "invalid_type", "content_index"),
    ('{"type": "session.update", "session": []}', "invalid_type", "session"),
])
def test_bad_client_events_are_refused_with_the_protocol_error_fields(
        message: str, code: str, param: str | None) -> None:
    with pytest.raises(ce.RealtimeApiError) as caught:
        ce.parse_client_event(message)
    assert (caught.value.code, caught.value.param) == (code, param)
    assert caught.value.error_type == "invalid_request_error"


def test_the_refusal_names_the_client_event() -> None:
    with pytest.raises(ce.RealtimeApiError) as caught:
        ce.parse_client_event('{"type": "input_audio_buffer.append", "event_id": "evt_7"}')
    assert caught.value.event_id == "evt_7"


# -- session.update -------------------------------------------------------------------------
def config() -> SessionConfig:
    return SessionConfig(session_id="sess_1", model="gpt-realtime", instructions="Be kind.",
                         turn_detection=TurnDetection("server_vad", 250))


def session_updated(cfg: SessionConfig) -> Any:
    return SERVER.validate_python({"type": "session.updated", "event_id": "e",
                                   "session": cfg.to_wire()})


def test_update_changes_only_what_it_names_and_echoes_a_valid_session() -> None:
    cfg = apply_update(config(), {"type": "realtime", "audio": {
        "input": {"format": {"type": "audio/pcm", "rate": 24000},
                  "transcription": {"model": "whisper-1", "language": "en"},
                  "turn_detection": {"type": "server_vad", "silence_duration_ms": 400}},
        "output": {"voice": "cedar"}}})
    assert cfg.instructions == "Be kind."
    assert cfg.turn_detection == TurnDetection("server_vad", 400)
    assert cfg.transcription == {"model": "whisper-1", "language": "en"}
    assert cfg.voice == "cedar"
    model = session_updated(cfg)
    assert model.session.audio.input.turn_detection.silence_duration_ms == 400


def test_turn_detection_null_and_semantic_vad() -> None:
    off = apply_update(config(), {"audio": {"input": {"turn_detection": None}}})
    assert off.turn_detection is None
    semantic = apply_update(off, {"audio": {"input": {"turn_detection": {
        "type": "semantic_vad", "eagerness": "high"}}}})
    assert semantic.turn_detection is not None
    assert semantic.turn_detection.eagerness == "high"
    assert session_updated(semantic).session.audio.input.turn_detection.type == "semantic_vad"


@pytest.mark.parametrize("session, code, param", [
    ({"voices": "x"}, "unknown_parameter", "session.voices"),
    ({"type": "transcription"}, "unsupported", "session.type"),
    ({"audio": {"input": {"format": {"type": "audio/pcmu"}}}}, "unsupported",
     "session.audio.input.format"),
    ({"audio": {"output": {"format": {"type": "audio/pcm", "rate": 16000}}}}, "unsupported",
     "session.audio.output.format"),
    ({"tools": [{"type": "mcp", "server_label": "x"}]}, "unsupported", "session.tools[0].type"),
    ({"tools": [{"type": "function", "name": "no spaces"}]}, "invalid_value",
     "session.tools[0].name"),
    ({"tool_choice": "sometimes"}, "invalid_value", "session.tool_choice"),
    ({"output_modalities": ["audio", "text"]}, "invalid_value", "session.output_modalities"),
    ({"audio": {"input": {"turn_detection": {"type": "push_to_talk"}}}}, "invalid_value",
     "session.audio.input.turn_detection.type"),
    ({"instructions": 5}, "invalid_type", "session.instructions"),
    ({"max_output_tokens": 0}, "invalid_value", "session.max_output_tokens"),
])
def test_updates_we_cannot_honour_are_refused(session: dict[str, Any], code: str,
                                              param: str) -> None:
    with pytest.raises(ce.RealtimeApiError) as caught:
        apply_update(config(), session)
    assert (caught.value.code, caught.value.param) == (code, param)


# -- the conversation ------------------------------------------------------------------------
def test_items_insert_delete_and_read_as_chat_messages() -> None:
    conversation = Conversation()
    a = item_from_client({"type": "message", "role": "user",
                          "content": [{"type": "input_text", "text": "Hello"}]})
    b = Item("item_b", "assistant", "output_audio", "Hi there, how are you?",
             audio_samples=48000)
    assert conversation.add(a) is None
    assert conversation.add(b) == a.id
    system = item_from_client({"type": "message", "role": "system",
                               "content": [{"type": "input_text", "text": "Be brief."}]})
    assert conversation.add(system, "root") is None
    assert [i.id for i in conversation.items] == [system.id, a.id, "item_b"]
    assert conversation.messages("Rules.") == [
        {"role": "system", "content": "Rules."}, {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi there, how are you?"}]
    b.truncate(1000)  # half the audio heard: half the words kept
    assert b.text == "Hi there," and b.audio_ms == 1000
    assert conversation.messages("R", skip=a.id)[-1] == {"role": "assistant",
                                                          "content": "Hi there,"}
    conversation.delete(a.id)
    with pytest.raises(ce.RealtimeApiError, match="not found"):
        conversation.delete(a.id)
    with pytest.raises(ce.RealtimeApiError, match="not found"):
        conversation.add(Item("x", "user", "input_text", "t"), "nope")


@pytest.mark.parametrize("item, code", [
    ({"type": "function_call", "name": "f"}, "missing_required_parameter"),
    ({"type": "function_call_output", "call_id": "c1", "output": 5}, "invalid_type"),
    ({"type": "mcp_call", "name": "f"}, "unsupported"),
    ({"type": "message", "role": "tool", "content": []}, "invalid_value"),
    ({"type": "message", "role": "user", "content": []}, "missing_required_parameter"),
    ({"type": "message", "role": "user", "content": [{"type": "output_text"}]}, "invalid_value"),
    ({"type": "message", "role": "user", "content": [{"type": "input_audio", "audio": "AAA="}]},
     "unsupported"),
])
def test_items_we_cannot_hold_are_refused(item: dict[str, Any], code: str) -> None:
    with pytest.raises(ce.RealtimeApiError) as caught:
        item_from_client(item)
    assert caught.value.code == code


# -- the response event sequence -------------------------------------------------------------
class ScriptedGeneration:
    def __init__(self, *outputs: Any) -> None:
        self.trace = ProviderTrace()  # what the reply used, as a real generation counts it
        self.trace.usage.llm(120, 9)
        self.trace.usage.stt_seconds, self.trace.usage.tts_seconds = 2.0, 1.5
        self.outbox: asyncio.Queue[Any] = asyncio.Queue()
        for output in outputs:
            self.outbox.put_nowait(output)


def run_response(generation: ScriptedGeneration, modalities: tuple[str, ...] = ("audio",),
                 cancel_after: int | None = None) -> tuple[list[dict[str, Any]], list[Any]]:
    sent: list[dict[str, Any]] = []
    heard: list[Any] = []
    conversation = Conversation()

    async def go() -> None:
        run = ResponseRun(sent.append, conversation, generation,  # type: ignore[arg-type]
                          ResponseOptions(modalities, "marin", "conv_1"), heard.append)
        run.start()
        task = asyncio.create_task(run.run())
        if cancel_after is None:
            await task
            return
        while len(sent) < cancel_after:  # noqa: ASYNC110 (let the run produce)
            await asyncio.sleep(0)
        run.cancel_reason = "turn_detected"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    for event in sent:
        SERVER.validate_python(event)
    return sent, heard


def test_an_audio_reply_is_told_in_the_ga_order() -> None:
    pcm = np.arange(24000 // 2, dtype=np.int16).tobytes()  # 0.5 s
    sent, heard = run_response(ScriptedGeneration(
        Heard("What time is it?"), Said("It is "), Said("noon."), Voiced(pcm), Completed()))
    assert heard == ["What time is it?"]
    assert [e["type"] for e in sent] == [
        "response.created", "response.output_item.added", "conversation.item.added",
        "response.content_part.added", "response.output_audio_transcript.delta",
        "response.output_audio_transcript.delta", "response.output_audio.delta",
        "response.output_audio.delta", "response.output_audio.delta",
        "response.output_audio.done", "response.output_audio_transcript.done",
        "response.content_part.done", "response.output_item.done", "conversation.item.done",
        "response.done"]
    audio = b"".join(base64.b64decode(e["delta"]) for e in sent
                     if e["type"] == "response.output_audio.delta")
    assert audio == pcm
    done = sent[-1]["response"]
    assert done["status"] == "completed" and done["status_details"] is None
    assert done["output"][0]["content"] == [{"type": "output_audio", "transcript": "It is noon."}]
    assert done["output"][0]["status"] == "completed"
    # tokens as OpenAI counts them: the LLM's text, audio at 10/s heard and 20/s spoken
    assert done["usage"] == {
        "total_tokens": 120 + 20 + 9 + 30, "input_tokens": 140, "output_tokens": 39,
        "input_token_details": {"text_tokens": 120, "audio_tokens": 20, "cached_tokens": 0},
        "output_token_details": {"text_tokens": 9, "audio_tokens": 30}}
    ids = {e.get("response_id") for e in sent if "response_id" in e}
    assert ids == {sent[0]["response"]["id"]}


def test_a_text_reply_uses_the_text_events() -> None:
    sent, _ = run_response(ScriptedGeneration(Said("Hi."), Completed()), modalities=("text",))
    kinds = [e["type"] for e in sent]
    assert "response.output_text.delta" in kinds and "response.output_text.done" in kinds
    assert not any("audio" in kind for kind in kinds)
    assert sent[-1]["response"]["output"][0]["content"] == [{"type": "output_text", "text": "Hi."}]


def test_a_cancelled_reply_still_closes_its_item_and_says_why() -> None:
    sent, _ = run_response(ScriptedGeneration(Said("One "), Said("two ")), cancel_after=6)
    done = sent[-1]
    assert done["type"] == "response.done"
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    item_done = next(e for e in sent if e["type"] == "response.output_item.done")
    assert item_done["item"]["status"] == "incomplete"


def test_a_failed_reply_reports_the_provider_error() -> None:
    error = ProviderError("LLM gave no token within 1 s", provider="llm", code="llm_timeout")
    sent, _ = run_response(ScriptedGeneration(Failed(error), Completed()))
    response = sent[-1]["response"]
    assert response["status"] == "failed"
    assert response["status_details"]["error"]["code"] == "llm_timeout"


def test_a_reply_to_noise_has_no_output() -> None:
    sent, heard = run_response(ScriptedGeneration(Heard(None), Completed()))
    assert heard == [None]
    assert [e["type"] for e in sent] == ["response.created", "response.done"]
    assert sent[-1]["response"]["output"] == []


# -- the server VAD in audio time --------------------------------------------------------------
def test_server_vad_reports_speech_in_audio_milliseconds() -> None:
    audio = load_audio(DATA / "weather.wav", 24000)
    audio = np.concatenate([np.zeros(24000, np.int16), audio, np.zeros(24000, np.int16)])
    regions = voiced_bounds(audio, 24000)
    start, end = regions[0][0], regions[-1][1]
    buffer = InputAudio(Settings())
    buffer.configure(TurnDetection("server_vad", 300))
    events = []
    for i in range(0, len(audio), 480 * 3):  # 60 ms appends
        events.extend(buffer.append(audio[i: i + 1440].tobytes()))
    started = [e for e in events if isinstance(e, TurnStarted)]
    ended = [e for e in events if isinstance(e, TurnEnded)]
    assert len(started) == len(ended) == 1
    assert abs(audio_ms(started[0].speech_start_ns) - start * 1000 // 24000) <= 120
    speech_end_ms = audio_ms(ended[0].speech_end_ns)
    assert abs(speech_end_ms - end * 1000 // 24000) <= 120
    assert 300 <= audio_ms(ended[0].turn_end_ns) - speech_end_ms <= 340
    assert buffer.buffered_ms == pytest.approx(len(audio) / 24, abs=5)
    assert len(buffer.take()) == pytest.approx(len(audio) * 2 // 3, abs=200)
    assert buffer.buffered_ms == 0


@pytest.mark.parametrize("transcript, wait_ms", [
    (None, (900, 1100)),  # not transcribed: waits the most
    ("What is the weather like in Paris today?", (180, 320)),  # complete: the least
    ("What is the weather like in", (500, 1100)),  # unfinished: longer
])
def test_semantic_vad_waits_by_what_was_said(transcript: str | None,
                                             wait_ms: tuple[int, int]) -> None:
    audio = load_audio(DATA / "weather.wav", 24000)
    audio = np.concatenate([np.zeros(24000, np.int16), audio, np.zeros(48000, np.int16)])
    buffer = InputAudio(Settings())
    buffer.configure(TurnDetection("semantic_vad", 500))
    ended: list[TurnEnded] = []
    for i in range(0, len(audio), 480):
        for event in buffer.append(audio[i: i + 480].tobytes()):
            if isinstance(event, SpeechPaused) and transcript is not None:
                buffer.note_transcript(event.speech_end_ns, transcript)
            if isinstance(event, TurnEnded):
                ended.append(event)
    (turn,) = ended
    waited = audio_ms(turn.turn_end_ns) - audio_ms(turn.speech_end_ns)
    assert wait_ms[0] <= waited <= wait_ms[1]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4), max_leaves=16)
session_keys = st.sampled_from(["type", "instructions", "output_modalities", "audio", "tools",
                                "max_output_tokens", "model", "tracing", "input", "format",
                                "turn_detection", "transcription", "output", "voice", "speed",
                                "silence_duration_ms", "eagerness", "rate", "content", "role",
                                "text", "item"])
nested = st.recursive(json_values, lambda inner: st.dictionaries(session_keys, inner,
                                                                 max_size=5), max_leaves=20)


@settings(max_examples=cases(2000), deadline=None, database=None)
@given(kind=st.sampled_from(ce.CLIENT_EVENT_TYPES), body=st.dictionaries(session_keys, nested,
                                                                          max_size=5))
def test_any_client_event_is_either_understood_or_refused_with_an_error_event(
        kind: str, body: dict[str, Any]) -> None:
    try:
        parsed = ce.parse_client_event(json.dumps({**body, "type": kind}))
        if isinstance(parsed, ce.SessionUpdate):
            session_updated(apply_update(config(), parsed.session))
        elif isinstance(parsed, ce.ItemCreate):
            Conversation().add(item_from_client(parsed.item))
    except ce.RealtimeApiError:
        pass


REALTIME_KEYS = ("session", "item", "response", "audio", "item_id", "event_id", "content_index",
                 "audio_end_ms", "previous_item_id", "response_id", "type", "instructions",
                 "output_modalities", "input", "output", "turn_detection", "format", "rate",
                 "silence_duration_ms", "prefix_padding_ms", "threshold", "eagerness",
                 "create_response", "interrupt_response", "transcription", "voice", "speed",
                 "max_output_tokens", "tools", "content", "role", "text", "id", "metadata",
                 "conversation", "noise_reduction", "model")


@settings(max_examples=cases(2000), deadline=None, database=None)
@given(text=hostile_events(ce.CLIENT_EVENT_TYPES, REALTIME_KEYS))
@example(text='{"type": "session.update", "session": {"audio": {"input": {"turn_detection": '
              '{"type": "server_vad", "silence_duration_ms": 1e999}}}}}')
@example(text='{"type": "conversation.item.create", "item": {"type": "message", '
              '"role": "user", "content": [{"type": ["input_text"]}]}}')
def test_hostile_client_events_are_understood_or_refused_with_an_error_event(
        text: str) -> None:
    """inf, NaN, 1e999, Unicode digits and lists where strings go, at every depth."""
    try:
        parsed = ce.parse_client_event(text)
        if isinstance(parsed, ce.SessionUpdate):
            updated = apply_update(config(), parsed.session)
            session_updated(updated)
            if updated.turn_detection is not None:
                InputAudio(Settings()).configure(updated.turn_detection)
        elif isinstance(parsed, ce.ItemCreate):
            item = item_from_client(parsed.item)
            Conversation().add(item, parsed.previous_item_id)
            json.dumps(item.to_wire(), allow_nan=False)
    except ce.RealtimeApiError as exc:
        assert exc.code and exc.message


@pytest.mark.parametrize("session", [
    {"audio": {"input": {"turn_detection": {"type": "server_vad",
                                            "silence_duration_ms": 1e999}}}},
    {"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": float("nan")}}}},
    {"audio": {"input": {"turn_detection": {"type": "server_vad", "prefix_padding_ms": "²"}}}},
    {"audio": {"output": {"voice": ["marin"]}}},
])
def test_numbers_and_names_that_are_not_are_refused_by_name(session: dict[str, Any]) -> None:
    with pytest.raises(ce.RealtimeApiError) as caught:
        apply_update(config(), session)
    assert caught.value.code == "invalid_value" and caught.value.param


def test_an_item_whose_content_type_is_a_list_is_refused() -> None:
    with pytest.raises(ce.RealtimeApiError) as caught:
        item_from_client({"type": "message", "role": "user",
                          "content": [{"type": ["input_text"], "text": "hi"}]})
    assert caught.value.param == "item.content.type"
