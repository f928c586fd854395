"""The WebSocket wire contract (wire/websocket.py), on bytes and text."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.strategies import cases, hostile_events
from voice.errors import MessageTooLarge, ProtocolError
from voice.events import (
    ErrorOccurred,
    Event,
    Pong,
    SessionCreated,
    TranscriptFinal,
    TurnLatency,
)
from wire.websocket import (
    CLIENT_MESSAGE_TYPES,
    DEFAULT_SAMPLE_RATE,
    AudioMessage,
    ControlMessage,
    encode_event,
    parse_client_message,
    parse_sample_rate,
)

pytestmark = pytest.mark.unit

MAX = 131072
PROPERTY = settings(database=None, deadline=None, max_examples=cases(2000))


# --- sample_rate query parameter -------------------------------------------------------


@pytest.mark.parametrize("query", ["", "foo=bar", "other=1&x=2"])
def test_sample_rate_defaults_to_16000_when_absent(query: str) -> None:
    assert parse_sample_rate(query) == DEFAULT_SAMPLE_RATE == 16000


@pytest.mark.parametrize("rate", [8000, 16000, 24000, 48000])
def test_each_supported_sample_rate_is_accepted(rate: int) -> None:
    assert parse_sample_rate(f"sample_rate={rate}") == rate
    assert parse_sample_rate(f"token=x&sample_rate={rate}&lang=en") == rate


@pytest.mark.parametrize("value", ["44100", "abc", "", "-16000", "16000.0", " 16000", "0",
                                   "9" * 40, "16000abc"])
def test_unsupported_sample_rate_is_a_protocol_error(value: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_sample_rate(f"sample_rate={value}")
    assert info.value.code == "invalid_sample_rate"
    assert "sample_rate" in info.value.message


def test_the_last_sample_rate_wins() -> None:
    assert parse_sample_rate("sample_rate=8000&sample_rate=48000") == 48000
    with pytest.raises(ProtocolError):
        parse_sample_rate("sample_rate=8000&sample_rate=44100")


# ASCII without '%': percent-escapes can smuggle in non-ASCII digits (see the xfail below).
_ASCII_NO_ESCAPES = st.characters(codec="ascii", exclude_characters="%")


@PROPERTY
@given(value=st.text(alphabet=_ASCII_NO_ESCAPES))
def test_sample_rate_query_never_raises_anything_but_protocol_error(value: str) -> None:
    try:
        rate = parse_sample_rate(f"sample_rate={value}")
    except ProtocolError as exc:
        assert exc.code == "invalid_sample_rate"
    else:
        assert rate in (8000, 16000, 24000, 48000)


def test_huge_sample_rate_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        parse_sample_rate("sample_rate=" + "9" * 5000)


@pytest.mark.parametrize("value", ["²", "%C2%B2", "①⑥"])
def test_non_decimal_digit_sample_rate_is_a_protocol_error(value: str) -> None:
    with pytest.raises(ProtocolError):
        parse_sample_rate(f"sample_rate={value}")


# --- client messages: audio ------------------------------------------------------------


def test_even_length_binary_is_little_endian_int16_audio() -> None:
    data = bytes([0x01, 0x00, 0xFF, 0x7F, 0x00, 0x80, 0xFF, 0xFF])
    message = parse_client_message(data, MAX)
    assert isinstance(message, AudioMessage)
    assert message.samples.dtype == np.int16
    assert message.samples.tolist() == [1, 32767, -32768, -1]


def test_audio_round_trips_samples() -> None:
    samples = np.array([0, 1, -1, 1000, -1000, 32767, -32768], dtype=np.int16)
    message = parse_client_message(samples.astype("<i2").tobytes(), MAX)
    assert isinstance(message, AudioMessage)
    assert np.array_equal(message.samples, samples)


def test_empty_binary_is_empty_audio() -> None:
    message = parse_client_message(b"", MAX)
    assert isinstance(message, AudioMessage)
    assert message.samples.size == 0


@pytest.mark.parametrize("size", [1, 3, 641])
def test_odd_length_binary_is_invalid_audio(size: int) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client_message(b"\x00" * size, MAX)
    assert info.value.code == "invalid_audio"
    assert str(size) in info.value.message


@pytest.mark.parametrize("message", [b"\x00" * 1026, "x" * 1025, "é" * 513])
def test_oversize_message_is_message_too_large(message: bytes | str) -> None:
    with pytest.raises(MessageTooLarge) as info:
        parse_client_message(message, 1024)
    assert info.value.code == "message_too_large"
    assert isinstance(info.value, ProtocolError)


def test_message_exactly_at_the_limit_is_accepted() -> None:
    assert isinstance(parse_client_message(b"\x00" * 1024, 1024), AudioMessage)
    text = json.dumps({"type": "ping", "pad": "x" * 100})
    assert isinstance(parse_client_message(text, len(text.encode())), ControlMessage)


# --- client messages: control ----------------------------------------------------------


@pytest.mark.parametrize("text", ["not json", "{", "", "{'type': 'ping'}", "ping"])
def test_non_json_text_is_invalid_json(text: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client_message(text, MAX)
    assert info.value.code == "invalid_json"


@pytest.mark.parametrize("text", ['["ping"]', '"ping"', "42", "null", "true",
                                  "{}", '{"kind": "ping"}', '{"type": 1}', '{"type": null}',
                                  '{"type": ["ping"]}'])
def test_json_without_a_string_type_is_invalid_message(text: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client_message(text, MAX)
    assert info.value.code == "invalid_message"


@pytest.mark.parametrize("kind", ["pong", "PING", "session.start", "response.create", ""])
def test_unknown_type_is_unknown_type(kind: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client_message(json.dumps({"type": kind}), MAX)
    assert info.value.code == "unknown_type"


@pytest.mark.parametrize("kind", ["ping", "response.cancel", "session.end"])
def test_known_control_types_parse(kind: str) -> None:
    message = parse_client_message(json.dumps({"type": kind, "id": 7}), MAX)
    assert message == ControlMessage(type=kind, data={"type": kind, "id": 7})


def test_deeply_nested_json_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        parse_client_message("[" * 100_000, MAX)


def test_json_with_a_huge_integer_is_a_protocol_error() -> None:
    # json.loads raises a plain ValueError (no .msg) for integers over Python's digit limit
    with pytest.raises(ProtocolError) as info:
        parse_client_message('{"type": "ping", "n": 1' + "0" * 5000 + "}", MAX)
    assert info.value.code == "invalid_json"


@PROPERTY
@given(data=st.binary(max_size=4096))
def test_arbitrary_bytes_give_audio_or_protocol_error(data: bytes) -> None:
    try:
        message = parse_client_message(data, 2048)
    except ProtocolError as exc:
        assert exc.code in {"invalid_audio", "message_too_large"}
        assert len(data) % 2 == 1 or len(data) > 2048
    else:
        assert isinstance(message, AudioMessage)
        assert message.samples.size * 2 == len(data)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10,
)


@settings(database=None, deadline=None, max_examples=cases(2000))
@given(text=st.text() | _json_values.map(json.dumps)
       | st.fixed_dictionaries({"type": st.sampled_from(["ping", "session.end", "x"])},
                               optional={"data": _json_values}).map(json.dumps)
       | hostile_events(sorted(CLIENT_MESSAGE_TYPES), ["digit", "data", "type"]))
@example(text='{"type": "ping"}')
@example(text='{"type": "dtmf", "digit": [1]}')
@example(text='{"type": "dtmf", "digit": {"a": 1}}')
@example(text='{"type": "session.update", "session": {"tools": [1e999]}}')
@example(text='{"type": "session.update", "session": {"instructions": "Be brief."}}')
def test_any_text_gives_a_control_message_or_protocol_error(text: str) -> None:
    """Arbitrary text, and hostile JSON (inf, NaN, lists where strings go) under the
    names the parser reads."""
    try:
        message = parse_client_message(text, MAX)
    except ProtocolError as exc:
        assert exc.code in {"invalid_json", "invalid_message", "unknown_type",
                            "message_too_large", "invalid_session_update"}
        return
    assert isinstance(message, ControlMessage)
    assert message.type in CLIENT_MESSAGE_TYPES
    assert json.dumps(message.data) == json.dumps(json.loads(text))  # NaN-safe equality
    if message.type == "dtmf":
        assert message.data["digit"] in "0123456789*#ABCD"


# --- server events ---------------------------------------------------------------------


@pytest.mark.parametrize("event, wire_object", [
    (SessionCreated(session_id="abc", sample_rate=24000),
     {"type": "session.created", "session_id": "abc", "sample_rate": 24000,
      "pipeline": "cascade"}),
    (TranscriptFinal(turn_id=3, text="Zürich? \"quoted\"\n", audio_ms=1200),
     {"type": "transcript.final", "turn_id": 3, "text": "Zürich? \"quoted\"\n",
      "audio_ms": 1200}),
    (TurnLatency(turn_id=1, stages={"stt_ms": 12.5}, speculative=True),
     {"type": "turn.latency", "turn_id": 1, "stages": {"stt_ms": 12.5}, "stamps_ms": {},
      "speculative": True, "speculations_discarded": 0, "provider": "",
      "fallback": "", "trace_id": ""}),
    (ErrorOccurred(code="invalid_audio", message="odd"),
     {"type": "error", "code": "invalid_audio", "message": "odd"}),
    (Pong(), {"type": "pong"}),
])
def test_encode_event_round_trips_through_json(event: Event, wire_object: dict[str, object]
                                               ) -> None:
    wire = encode_event(event)
    assert "\n" not in wire  # one compact line per event
    assert json.loads(wire) == wire_object


def test_encoded_transcript_keeps_its_text() -> None:
    decoded = json.loads(encode_event(TranscriptFinal(turn_id=2, text="héllo ✓")))
    assert decoded == {"type": "transcript.final", "turn_id": 2, "text": "héllo ✓",
                       "audio_ms": 0}
