"""Telephony media streams on bytes: the providers' documented messages parse into one
shape, ours serialize into theirs, hostile frames get a typed error, the Twilio
signature matches Twilio's published vector (wire/media_streams.py); and the playout
that learns from echoed marks what the caller heard (transports/media_streams/playout.py),
on a hand-driven clock."""

from __future__ import annotations

import asyncio
import base64
import json
import types
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import transports.media_streams.playout as playout_module
from tests.strategies import HOSTILE_SCALARS, cases, hostile_json
from tests.unit.test_playout import FakeTime, pcm, settle
from transports.media_streams.playout import MARK_GRACE_NS, MarkedPlayout
from voice.errors import MessageTooLarge, ProtocolError
from wire import media_streams as wire

pytestmark = pytest.mark.unit
PROPERTY = settings(database=None, deadline=None, max_examples=cases(2000),
                    suppress_health_check=[HealthCheck.too_slow])
LIMIT = 65536
PAYLOAD = base64.b64encode(bytes(range(256))[:160]).decode()

# As the providers' documents show them (Twilio's websocket-messages page, Telnyx's
# AsyncAPI page for media streaming)
TWILIO = {
    "connected": {"event": "connected", "protocol": "Call", "version": "1.0.0"},
    "start": {"event": "start", "sequenceNumber": "1", "start": {
        "accountSid": "AC123", "streamSid": "MZ18ad3ab5a668481ce02b83e7395059f0",
        "callSid": "CA123", "tracks": ["inbound", "outbound"],
        "customParameters": {"FirstName": "Jane"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
        "streamSid": "MZ18ad3ab5a668481ce02b83e7395059f0"},
    "media": {"event": "media", "sequenceNumber": "3", "media": {
        "track": "outbound", "chunk": "1", "timestamp": "5", "payload": PAYLOAD},
        "streamSid": "MZ18ad3ab5a668481ce02b83e7395059f0"},
    "dtmf": {"event": "dtmf", "streamSid": "MZ1", "sequenceNumber": "5",
             "dtmf": {"track": "inbound_track", "digit": "1"}},
    "mark": {"event": "mark", "sequenceNumber": "4", "streamSid": "MZ1",
             "mark": {"name": "my label"}},
    "stop": {"event": "stop", "sequenceNumber": "5", "stop": {
        "accountSid": "AC123", "callSid": "CA123"}, "streamSid": "MZ1"},
}
TELNYX = {
    "connected": {"event": "connected", "version": "1.0.0",
                  "connected": {"x-telnyx-streaming-auth-token": "tok"}},
    "start": {"event": "start", "sequence_number": "1",
              "stream_id": "32DE0DEA-53CB-4B21-89A4-9E1819C043BC", "start": {
                  "user_id": "3E6F995F", "call_control_id": "v2:T02llQxIyaRkhfRK",
                  "call_session_id": "ff55a038", "from": "+13122010094", "to": "+13122123456",
                  "tags": ["TAG1"], "client_state": "aGF2ZQ==",
                  "custom_parameters": {"customer_id": "customer_123"},
                  "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}}},
    "media": {"event": "media", "sequence_number": "4", "media": {
        "track": "inbound", "chunk": "2", "timestamp": "5", "payload": PAYLOAD},
        "stream_id": "32DE0DEA"},
    "dtmf": {"event": "dtmf", "stream_id": "32DE0DEA", "occurred_at": "2024-01-01T00:00:00Z",
             "sequence_number": "5", "dtmf": {"digit": "#"}},
    "mark": {"event": "mark", "sequence_number": "6", "stream_id": "32DE0DEA",
             "mark": {"name": "m1"}},
    "stop": {"event": "stop", "sequence_number": "7", "stop": {
        "user_id": "3E6F995F", "call_control_id": "v2:T02llQxIyaRkhfRK"},
        "stream_id": "32DE0DEA"},
    "error": {"event": "error", "sequence_number": "8", "stream_id": "32DE0DEA",
              "payload": {"code": 100003, "title": "malformed_frame",
                          "detail": "The frame could not be parsed"}},
}


def parse(provider: str, data: Any) -> wire.StreamMessage:
    return wire.parse_message(json.dumps(data), provider, LIMIT)


def test_twilio_documented_messages_parse_into_the_common_shape() -> None:
    assert parse("twilio", TWILIO["connected"]) == wire.StreamConnected("Call", "1.0.0")
    started = parse("twilio", TWILIO["start"])
    assert started == wire.StreamStarted("MZ18ad3ab5a668481ce02b83e7395059f0", "CA123",
                                         "AC123", "PCMU", ("inbound", "outbound"),
                                         {"FirstName": "Jane"})
    media = parse("twilio", TWILIO["media"])
    assert media == wire.MediaReceived("outbound", 1, 5, bytes(range(160)))
    assert parse("twilio", TWILIO["dtmf"]) == wire.KeyPressed("1")
    assert parse("twilio", TWILIO["mark"]) == wire.MarkPlayed("my label")
    assert isinstance(parse("twilio", TWILIO["stop"]), wire.StreamStopped)


def test_telnyx_documented_messages_parse_into_the_common_shape() -> None:
    assert parse("telnyx", TELNYX["connected"]) == wire.StreamConnected("", "1.0.0", "tok")
    started = parse("telnyx", TELNYX["start"])
    assert started == wire.StreamStarted("32DE0DEA-53CB-4B21-89A4-9E1819C043BC",
                                         "v2:T02llQxIyaRkhfRK", "3E6F995F", "PCMU", (),
                                         {"customer_id": "customer_123"})
    assert parse("telnyx", TELNYX["media"]) == wire.MediaReceived("inbound", 2, 5,
                                                                  bytes(range(160)))
    assert parse("telnyx", TELNYX["dtmf"]) == wire.KeyPressed("#")
    assert parse("telnyx", TELNYX["mark"]) == wire.MarkPlayed("m1")
    assert isinstance(parse("telnyx", TELNYX["stop"]), wire.StreamStopped)
    assert parse("telnyx", TELNYX["error"]) == wire.ProviderReported(
        "100003", "The frame could not be parsed")


def test_what_we_send_has_each_providers_shape() -> None:
    media = json.loads(wire.media_message("twilio", "MZ1", b"\xff\x7f"))
    assert media == {"event": "media", "streamSid": "MZ1", "media": {"payload": "/38="}}
    assert json.loads(wire.mark_message("twilio", "MZ1", "m1")) == {
        "event": "mark", "streamSid": "MZ1", "mark": {"name": "m1"}}
    assert json.loads(wire.clear_message("twilio", "MZ1")) == {"event": "clear",
                                                               "streamSid": "MZ1"}
    assert json.loads(wire.media_message("telnyx", "x", b"\x00")) == {
        "event": "media", "media": {"payload": "AA=="}}
    assert json.loads(wire.mark_message("telnyx", "x", "m2")) == {"event": "mark",
                                                                  "mark": {"name": "m2"}}
    assert json.loads(wire.clear_message("telnyx", "x")) == {"event": "clear"}


def test_the_twilio_signature_matches_twilios_published_vector() -> None:
    params = {"CallSid": "CA1234567890ABCDE", "Caller": "+14158675309", "Digits": "1234",
              "From": "+14158675309", "To": "+18005551212"}
    assert wire.twilio_signature("12345", "https://mycompany.com/myapp.php?foo=1&bar=2",
                                 params) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    assert wire.twilio_signature("12345", "wss://a.example/twilio") != \
        wire.twilio_signature("12345", "wss://b.example/twilio")


@pytest.mark.parametrize(("frame", "code"), [
    ("not json", "invalid_message"),
    (b'{"event": "media"}', "invalid_message"),  # a binary frame
    ("[1, 2]", "invalid_message"),
    ("[" * 20000 + "]" * 20000, "invalid_message"),  # nesting past the recursion limit
    ('{"event": "hello"}', "unknown_event"),
    ('{"event": 7}', "unknown_event"),
    ('{"event": "media", "media": {"payload": "!!notbase64"}}', "invalid_audio"),
    ('{"event": "media", "media": {"payload": "AAA"}}', "invalid_audio"),  # bad padding
    ('{"event": "media", "media": {"payload": ""}}', "invalid_audio"),
    ('{"event": "media", "media": {"payload": "AA==", "chunk": "²"}}', "invalid_field"),
    ('{"event": "media", "media": "AA=="}', "invalid_field"),
    ('{"event": "dtmf", "dtmf": {"digit": "x"}}', "invalid_field"),
    ('{"event": "mark", "mark": {"name": 5}}', "invalid_field"),
])
def test_malformed_frames_get_a_typed_error(frame: str | bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as raised:
        wire.parse_message(frame, "twilio", LIMIT)
    assert raised.value.code == code


def test_frames_over_the_limit_and_other_media_formats_are_refused() -> None:
    huge = json.dumps({"event": "media", "media": {"payload": "A" * LIMIT}})
    with pytest.raises(MessageTooLarge):
        wire.parse_message(huge, "twilio", LIMIT)
    too_much_audio = {"event": "media", "media": {"payload": "AAAA" * 6000}}
    with pytest.raises(ProtocolError, match="payload"):
        parse("telnyx", too_much_audio)
    for fmt in ({"encoding": "L16", "sample_rate": 16000, "channels": 1},
                {"encoding": "PCMU", "sample_rate": 8000.0, "channels": 1},
                {"encoding": "PCMU", "sample_rate": 8000, "channels": 2}):
        start = json.loads(json.dumps(TELNYX["start"]))
        start["start"]["media_format"] = fmt
        with pytest.raises(ProtocolError) as raised:
            parse("telnyx", start)
        assert raised.value.code == "unsupported_media_format"


FIELDS = ["event", "start", "media", "mark", "dtmf", "stop", "payload", "name", "digit",
          "track", "chunk", "timestamp", "streamSid", "stream_id", "mediaFormat",
          "media_format", "encoding", "sampleRate", "sample_rate", "channels", "tracks",
          "customParameters", "custom_parameters", "connected", "code", "detail"]
EVENTS = st.sampled_from(["connected", "start", "media", "mark", "dtmf", "stop", "error",
                          "clear"]) | HOSTILE_SCALARS


@st.composite
def hostile_frames(draw: st.DrawFn) -> str | bytes:
    """Mostly objects with a real event and hostile values under the names read."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=200) | st.text(max_size=200))
    body = draw(st.dictionaries(st.sampled_from(FIELDS), hostile_json(FIELDS), max_size=6))
    body["event"] = draw(EVENTS)
    if kind == 2:  # a valid envelope around hostile insides
        event = body["event"] if body["event"] in TWILIO else "media"
        body = {**json.loads(json.dumps(TWILIO[event])), **body, "event": event}
    return json.dumps(body) if kind != 3 else json.dumps(body)[: draw(st.integers(0, 300))]


@PROPERTY
@given(frame=hostile_frames(), provider=st.sampled_from(wire.PROVIDERS))
def test_any_frame_is_a_message_or_a_protocol_error(frame: str | bytes, provider: str) -> None:
    try:
        message = wire.parse_message(frame, provider, 4096)
    except ProtocolError as exc:
        assert exc.code in ("message_too_large", "invalid_message", "unknown_event",
                            "invalid_field", "invalid_audio", "unsupported_media_format")
        return
    if isinstance(message, wire.MediaReceived):
        assert 0 < len(message.payload) <= wire.MAX_PAYLOAD_BYTES
    if isinstance(message, wire.KeyPressed):
        assert message.digit in wire.DTMF_DIGITS
    if isinstance(message, wire.StreamStarted):
        assert message.encoding in ("PCMU", "PCMA") and len(message.stream_id) <= 128


# -- the playout ------------------------------------------------------------------------
RATE = 8000
CHUNK = RATE * 20 // 1000 * 2


class Sink:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []

    def media(self, pcm: bytes) -> None:
        self.sent.append(("media", pcm))

    def mark(self, name: str) -> None:
        self.sent.append(("mark", name))

    def clear(self) -> None:
        self.sent.append(("clear", None))

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.sent]

    def marks(self) -> list[str]:
        return [value for kind, value in self.sent if kind == "mark"]

    def audio(self) -> bytes:
        return b"".join(value for kind, value in self.sent if kind == "media")


@pytest.fixture
async def marked(monkeypatch: pytest.MonkeyPatch
                 ) -> AsyncIterator[tuple[MarkedPlayout, FakeTime, Sink]]:
    clock = FakeTime(auto_advance=False)
    monkeypatch.setattr(playout_module, "asyncio",
                        types.SimpleNamespace(sleep=clock.sleep, Event=asyncio.Event))
    sink = Sink()
    playout = MarkedPlayout(sink, RATE, clock, lead_ms=200, segment_ms=100)
    task = asyncio.get_running_loop().create_task(playout.run(), name="marked-under-test")
    try:
        yield playout, clock, sink
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_reply_audio_goes_out_lead_ahead_of_the_marks_echoed(
        marked: tuple[MarkedPlayout, FakeTime, Sink]) -> None:
    playout, clock, sink = marked
    heard: list[int] = []
    playout.on_first_send = heard.append
    playout.enqueue(pcm(1000, RATE))
    await settle()
    # a mark after the first chunk, then one per 100 ms; no more than 200 ms unheard
    assert sink.kinds()[:2] == ["media", "mark"]
    assert len(sink.audio()) <= CHUNK * 11
    assert playout.played_samples() == 0 and heard == []
    clock.advance_ms(150)  # the provider played the first chunk; its mark comes back
    playout.on_mark(sink.marks()[0], clock.now_ns())
    assert heard == [130 * 1_000_000]  # the echo, less the 20 ms chunk before the mark
    assert playout.played_samples() == 160
    for name in sink.marks()[1:]:  # and then all of it as it plays
        clock.advance_ms(100)
        playout.on_mark(name, clock.now_ns())
        await settle()
    assert len(sink.audio()) > CHUNK * 11


async def test_barge_in_sends_clear_and_counts_only_what_was_heard(
        marked: tuple[MarkedPlayout, FakeTime, Sink]) -> None:
    playout, clock, sink = marked
    playout.on_first_send = [].append  # as a reply does: a mark after its first chunk
    playout.enqueue(pcm(1000, RATE))
    await settle()
    clock.advance_ms(20)
    playout.on_mark(sink.marks()[0], clock.now_ns())
    clock.advance_ms(50)  # 20 ms confirmed, 50 ms played since
    playout.clear()
    assert sink.kinds()[-1] == "clear"
    assert playout.played_samples() == playout.sent_samples == 70 * RATE // 1000
    assert playout.enqueued_samples == playout.sent_samples and not playout.speaking
    echoed_late = sink.marks()[1]  # the provider echoes the dropped marks: ignored
    playout.on_mark(echoed_late, clock.now_ns())
    assert playout.played_samples() == 70 * RATE // 1000


async def test_pause_clears_the_provider_and_resume_goes_on_from_what_was_heard(
        marked: tuple[MarkedPlayout, FakeTime, Sink]) -> None:
    playout, clock, sink = marked
    audio = pcm(1000, RATE)
    playout.on_first_send = [].append
    playout.enqueue(audio)
    await settle()
    clock.advance_ms(20)
    playout.on_mark(sink.marks()[0], clock.now_ns())
    clock.advance_ms(40)
    playout.pause()
    assert sink.kinds()[-1] == "clear"
    before = len(sink.sent)
    playout.resume()
    await settle()
    resent = b"".join(v for k, v in sink.sent[before:] if k == "media")
    heard_bytes = 60 * RATE // 1000 * 2
    assert resent == audio[heard_bytes: heard_bytes + len(resent)] and resent


async def test_a_provider_that_never_echoes_marks_still_gets_the_whole_reply(
        marked: tuple[MarkedPlayout, FakeTime, Sink]) -> None:
    playout, clock, sink = marked
    playout.enqueue(pcm(600, RATE))
    for _ in range(60):
        await settle()
        clock.advance_ms(100)
    await settle()
    assert sink.audio() == pcm(600, RATE)
    clock.advance_ms(MARK_GRACE_NS / 1e6 + 600)
    assert not playout.speaking and playout.played_samples() == 600 * RATE // 1000
