"""The WebRTC signalling contract (wire/rtc_signalling.py), ICE settings, the
no-delay jitter buffer and the static files, on text and bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiortc.rtp import RtpPacket
from hypothesis import given, settings
from hypothesis import strategies as st

from service.static import StaticFiles
from tests.strategies import cases
from transports.webrtc.ice import ice_servers_from
from transports.webrtc.receive_buffer import ImmediateAudioBuffer, seq_newer
from voice.errors import ConfigError, MessageTooLarge, ProtocolError
from wire.rtc_signalling import (
    Answer,
    Config,
    IceServer,
    Offer,
    SignalError,
    encode_answer,
    encode_config,
    encode_error,
    encode_offer,
    parse_offer,
    parse_server_signal,
)

pytestmark = pytest.mark.unit

SDP = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
       "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n")


def test_offer_round_trips() -> None:
    assert parse_offer(encode_offer(SDP), 65536) == Offer(SDP)


@pytest.mark.parametrize("message, code", [
    ("not json", "invalid_json"),
    ("[1, 2]", "invalid_message"),
    ('{"sdp": "v=0"}', "invalid_message"),
    ('{"type": "answer", "sdp": "v=0"}', "unknown_type"),
    ('{"type": "offer"}', "invalid_offer"),
    ('{"type": "offer", "sdp": 5}', "invalid_offer"),
    ('{"type": "offer", "sdp": "hello"}', "invalid_offer"),
    ('{"type": "offer", "sdp": "v=0\\r\\nm=video 9 RTP/AVP 96\\r\\n"}', "invalid_offer"),
])
def test_bad_offers_are_named(message: str, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_offer(message, 65536)
    assert info.value.code == code


def test_binary_and_oversize_offers_are_refused() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_offer(encode_offer(SDP).encode(), 65536)
    assert info.value.code == "invalid_message"
    with pytest.raises(MessageTooLarge):
        parse_offer(encode_offer(SDP + "a=x\r\n" * 2000), 4096)


@settings(database=None, deadline=None, max_examples=cases(2000))
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                              lambda c: st.lists(c, max_size=4)
                              | st.dictionaries(st.text(max_size=8), c, max_size=4),
                              max_leaves=12).map(json.dumps)))
def test_any_input_is_an_offer_or_a_protocol_error(message: str | bytes) -> None:
    for parse in (lambda m: parse_offer(m, 65536), parse_server_signal):
        try:
            parse(message)
        except ProtocolError:
            pass


def test_server_messages_round_trip() -> None:
    servers = (IceServer(("stun:stun.example.org:3478",)),
               IceServer(("turn:turn.example.org:3478?transport=udp",), "user", "secret"))
    assert parse_server_signal(encode_config(servers)) == Config(servers)
    assert parse_server_signal(encode_config(())) == Config(())
    assert parse_server_signal(encode_answer(SDP)) == Answer(SDP)
    assert parse_server_signal(encode_error("capacity", "full")) == SignalError("capacity",
                                                                                 "full")


def test_ice_servers_come_from_the_settings_and_default_to_none() -> None:
    assert ice_servers_from("", "") == ()
    servers = ice_servers_from("stun:stun.example.org:3478",
                               "turns:turn.example.org:5349", "u", "p")
    assert servers == (IceServer(("stun:stun.example.org:3478",)),
                       IceServer(("turns:turn.example.org:5349",), "u", "p"))


@pytest.mark.parametrize("stun, turn", [
    ("stun.example.org:3478", ""),
    ("turn:turn.example.org:3478", ""),
    ("", "stun:stun.example.org:3478"),
    ("", "turn:turn.example.org:3478?transport=sctp"),
    ("", "turn: spaced"),
])
def test_malformed_ice_server_settings_are_config_errors(stun: str, turn: str) -> None:
    with pytest.raises(ConfigError):
        ice_servers_from(stun, turn)


def packet(seq: int, timestamp: int) -> RtpPacket:
    p = RtpPacket(payload_type=111, sequence_number=seq, timestamp=timestamp,
                  payload=bytes([seq % 256]) * 3)
    p._data = p.payload  # type: ignore[attr-defined]  # what aiortc's receiver sets
    return p


def test_each_audio_packet_is_released_at_once() -> None:
    buffer = ImmediateAudioBuffer()
    for seq in range(65530, 65536 + 6):  # across the wrap-around
        flag, frame = buffer.add(packet(seq % 65536, seq * 960))
        assert not flag and frame is not None
        assert frame.timestamp == seq * 960 and frame.data == bytes([seq % 65536 % 256]) * 3


def test_late_and_duplicate_packets_are_dropped() -> None:
    buffer = ImmediateAudioBuffer()
    assert buffer.add(packet(10, 9600))[1] is not None
    assert buffer.add(packet(12, 11520))[1] is not None  # 11 lost or late
    assert buffer.add(packet(11, 10560))[1] is None  # late: its moment has passed
    assert buffer.add(packet(12, 11520))[1] is None  # duplicate
    assert buffer.dropped == 2


def test_sequence_order_follows_rfc3550_wrap_around() -> None:
    assert seq_newer(1, 0) and seq_newer(0, 65535) and seq_newer(100, 65500)
    assert not seq_newer(0, 1) and not seq_newer(5, 5) and not seq_newer(65500, 100)


def test_static_files_serve_only_the_widget_folder(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<h1>demo</h1>")
    (tmp_path / "voice-widget.js").write_text("export {}")
    (tmp_path / "notes.txt").write_text("private")
    (tmp_path.parent / "secret.js").write_text("secret")
    files = StaticFiles(tmp_path)
    page = files.lookup("/")
    assert page is not None and page.body == b"<h1>demo</h1>"
    assert page.content_type.startswith("text/html")
    script = files.lookup("/widget/voice-widget.js")
    assert script is not None and script.content_type.startswith("text/javascript")
    for path in ("/widget/notes.txt", "/widget/../secret.js", "/widget/", "/index.html",
                 "/widget/%2e%2e/secret.js", "/healthz"):
        assert files.lookup(path) is None, path


def test_the_shipped_widget_files_are_served() -> None:
    files = StaticFiles()
    for path in ("/", "/widget/voice-widget.js", "/widget/audio-worklets.js"):
        assert files.lookup(path) is not None, path
