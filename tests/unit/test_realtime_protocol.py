"""The realtime pipeline's wire core (wire/openai_realtime/server_events.py) against the GA
protocol of the installed `openai` package: recorded event sequences in the shape of
the real API's, parsed without loss; client events the official types accept."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent
from pydantic import TypeAdapter

from tests.strategies import cases
from voice.errors import ProtocolError
from wire.openai_realtime import client_events as ce
from wire.openai_realtime import server_events as rt

pytestmark = pytest.mark.unit

RECORDINGS = Path(__file__).parents[1] / "data" / "realtime"
SERVER = TypeAdapter(RealtimeServerEvent)
CLIENT = TypeAdapter(RealtimeClientEvent)


def recording(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (RECORDINGS / name).read_text().splitlines()]


ALL = sorted(p.name for p in RECORDINGS.glob("*.jsonl"))


@pytest.mark.parametrize("name", ALL)
def test_recordings_are_in_the_shape_of_the_official_types(name: str) -> None:
    for data in recording(name):
        model = SERVER.validate_python(data)  # raises on any missing or mistyped field
        assert model.type == data["type"]


@pytest.mark.parametrize("name", ALL)
def test_every_recorded_event_parses_and_keeps_what_the_official_model_holds(name: str) -> None:
    for data in recording(name):
        model = SERVER.validate_python(data)
        event = rt.parse_server_event(json.dumps(data))
        assert event.event_id == model.event_id
        if isinstance(event, rt.OtherEvent):
            assert event.known and event.type == model.type
            continue
        for field in ("item_id", "response_id", "audio_start_ms", "audio_end_ms",
                      "content_index", "transcript", "delta"):
            if hasattr(event, field) and hasattr(model, field):
                assert getattr(event, field) == getattr(model, field), (data["type"], field)
        if isinstance(event, rt.AudioDelta):
            assert event.pcm == base64.b64decode(data["delta"])
        if isinstance(event, rt.ResponseCreated | rt.ResponseDone):
            assert event.response_id == model.response.id  # type: ignore[union-attr]


def test_a_spoken_turn_adds_up() -> None:
    events = [rt.parse_server_event(json.dumps(d)) for d in recording("server_vad_turn.jsonl")]
    kinds = [type(e).__name__ for e in events]
    assert kinds[:4] == ["SessionConfigured", "SessionConfigured", "SpeechStarted",
                         "SpeechStopped"]
    (heard,) = [e for e in events if isinstance(e, rt.InputTranscribed)]
    assert heard.transcript == "What is the weather like in Paris today?"
    words = "".join(e.delta for e in events if isinstance(e, rt.TextDelta))
    (done,) = [e for e in events if isinstance(e, rt.ResponseDone)]
    assert words == done.transcript == "It is sunny in Paris today."
    assert done.status == "completed" and done.error is None
    pcm = b"".join(e.pcm for e in events if isinstance(e, rt.AudioDelta))
    assert len(pcm) == 2 * 24000 * 360 // 1000  # 100 + 100 + 100 + 60 ms at 24 kHz
    (item,) = [e for e in events if isinstance(e, rt.OutputItemAdded)]
    assert item.role == "assistant" and item.response_id == done.response_id


def test_barge_in_recording() -> None:
    events = [rt.parse_server_event(json.dumps(d)) for d in recording("barge_in.jsonl")]
    (done,) = [e for e in events if isinstance(e, rt.ResponseDone)]
    assert (done.status, done.reason) == ("cancelled", "turn_detected")
    (truncated,) = [e for e in events if isinstance(e, rt.ItemTruncated)]
    assert truncated.audio_end_ms == 180 and truncated.content_index == 0
    (error,) = [e for e in events if isinstance(e, rt.ServerError)]
    assert error.error.code == "response_cancel_not_active"
    assert error.error.event_id == "event_5fc0b3d2a1e94c7d8e01"


def test_failure_recording() -> None:
    events = [rt.parse_server_event(json.dumps(d)) for d in recording("failures.jsonl")]
    first = events[0]
    assert isinstance(first, rt.ServerError)
    assert first.error.param == "session.audio.input.format.type"
    assert not first.error.rate_limited
    failed = next(e for e in events if isinstance(e, rt.InputTranscriptionFailed))
    assert failed.message == "The audio could not be transcribed."
    limits = next(e for e in events if isinstance(e, rt.RateLimitsUpdated))
    assert [(r.name, r.remaining, r.reset_seconds) for r in limits.rate_limits] == [
        ("requests", 0, 1.5), ("tokens", 0, 12.25)]
    done = next(e for e in events if isinstance(e, rt.ResponseDone))
    assert done.status == "failed" and done.error is not None and done.error.rate_limited
    last = events[-1]
    assert isinstance(last, rt.ServerError) and last.error.code is None


def test_text_reply_recording() -> None:
    events = [rt.parse_server_event(json.dumps(d)) for d in recording("text_response.jsonl")]
    deltas = [e for e in events if isinstance(e, rt.TextDelta)]
    assert [d.audio for d in deltas] == [False, False]
    assert "".join(d.delta for d in deltas) == "Hello! How can I help?"
    done = next(e for e in events if isinstance(e, rt.ResponseDone))
    assert done.transcript == "Hello! How can I help?"


@pytest.mark.parametrize("message, complaint", [
    ("not json", "not JSON"),
    ("[1, 2]", "JSON object"),
    ('{"type": 3}', "JSON object"),
    ('{"type": "input_audio_buffer.speech_started", "event_id": "e", "item_id": "i"}',
     "'audio_start_ms' must be an integer"),
    ('{"type": "response.output_audio.delta", "event_id": "e", "response_id": "r", '
     '"item_id": "i", "output_index": 0, "content_index": 0, "delta": "@@@"}', "not base64"),
    ('{"type": "response.done", "event_id": "e", "response": []}',
     "'response' must be an object"),
    ('{"type": "error", "event_id": "e", "error": {"message": 5}}', "'message' must be"),
])
def test_malformed_server_events_raise_one_typed_error(message: str, complaint: str) -> None:
    with pytest.raises(ProtocolError, match=complaint):
        rt.parse_server_event(message)


def test_an_unknown_event_type_is_kept_not_dropped() -> None:
    event = rt.parse_server_event('{"type": "response.future_thing", "event_id": "e1"}')
    assert event == rt.OtherEvent(event_id="e1", type="response.future_thing", known=False)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4), max_leaves=20)


@settings(max_examples=cases(2000), deadline=None, database=None)
@given(kind=st.sampled_from(sorted(rt.SERVER_EVENT_TYPES)),
       fields=st.dictionaries(st.sampled_from([
           "event_id", "item_id", "response_id", "delta", "audio_start_ms", "audio_end_ms",
           "content_index", "transcript", "response", "error", "rate_limits", "session", "item"]),
           json_values, max_size=8))
def test_any_json_either_parses_or_raises_protocol_error(kind: str, fields: dict[str, Any]) -> None:
    try:
        rt.parse_server_event(json.dumps({**fields, "type": kind}))
    except ProtocolError:
        pass


@pytest.mark.parametrize("detection", ["server_vad", "semantic_vad", "local"])
def test_session_update_is_a_valid_ga_client_event(detection: rt.TurnDetection) -> None:
    event = ce.session_update("Be brief.", "marin", detection, 250, "en")
    model = CLIENT.validate_python(event)
    assert model.type == "session.update"
    audio = event["session"]["audio"]
    assert audio["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert audio["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert audio["input"]["transcription"]["language"] == "en"
    turn_detection = audio["input"]["turn_detection"]
    if detection == "local":
        assert turn_detection is None
    else:
        assert turn_detection["type"] == detection
        assert turn_detection["interrupt_response"] is True


def test_other_client_events_are_valid_ga_client_events() -> None:
    pcm = bytes(range(10))
    events = [ce.input_audio_append(pcm), ce.input_audio_commit(), ce.input_audio_clear(),
              ce.response_create(), ce.response_cancel("resp_1", ce.new_event_id()),
              ce.item_truncate("item_1", 1234, ce.new_event_id()),
              ce.text_item_create("user", "hi"), ce.text_item_create("assistant", "hello")]
    for event in events:
        assert CLIENT.validate_python(event).type == event["type"]
    assert base64.b64decode(events[0]["audio"]) == pcm
    assert events[5]["audio_end_ms"] == 1234 and events[5]["content_index"] == 0


@pytest.mark.parametrize("url, expected", [
    ("wss://api.openai.com/v1/realtime", "wss://api.openai.com/v1/realtime?model=gpt-realtime"),
    ("ws://127.0.0.1:8000/v1/realtime?model=x", "ws://127.0.0.1:8000/v1/realtime?model=x"),
    ("ws://h/v1/realtime?a=1", "ws://h/v1/realtime?a=1&model=gpt-realtime"),
])
def test_provider_url_names_the_model_once(url: str, expected: str) -> None:
    assert ce.provider_url(url, "gpt-realtime") == expected
