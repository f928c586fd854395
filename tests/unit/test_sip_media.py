"""RTP, RFC 4733 events, G.711, the jitter buffer and the media streams, on bytes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.strategies import cases
from voice.errors import ProtocolError
from wire.rtp import g711
from wire.rtp.dtmf import DtmfEvent, DtmfReceiver, event_payloads
from wire.rtp.jitter import Concealer, JitterBuffer
from wire.rtp.packet import RtpPacket, RtpSender, seq_newer
from wire.rtp.plan import MediaPlan
from wire.rtp.stream import InboundStream, OutboundStream

pytestmark = pytest.mark.unit
PROPERTY = settings(database=None, deadline=None, max_examples=cases(2000))


# --- RTP -----------------------------------------------------------------------------

def test_rtp_parses_a_captured_pcmu_packet() -> None:
    data = bytes.fromhex("80 00 1f 40 00 00 a0 00 12 34 56 78") + b"\xff" * 160
    packet = RtpPacket.parse(data)
    assert (packet.payload_type, packet.sequence, packet.timestamp, packet.ssrc) == (
        0, 8000, 40960, 0x12345678)
    assert packet.payload == b"\xff" * 160 and not packet.marker
    assert packet.serialize() == data


def test_rtp_csrc_extension_and_padding_round_trip() -> None:
    packet = RtpPacket(payload_type=8, sequence=65535, timestamp=2**32 - 1, ssrc=1,
                       payload=b"abc", marker=True, csrcs=(5, 6), extension=(0xBEDE, b"1234"),
                       padding=4)
    parsed = RtpPacket.parse(packet.serialize())
    assert parsed == packet


@pytest.mark.parametrize("data", [b"", b"\x80\x00", bytes([0x40]) + bytes(11),
                                  bytes([0x8F]) + bytes(11), bytes([0x90]) + bytes(13),
                                  bytes([0xA0]) + bytes(11) + b"\x00",
                                  bytes([0xA0]) + bytes(11) + b"\x20"])
def test_rtp_malformed_raises(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        RtpPacket.parse(data)


@PROPERTY
@given(st.binary(max_size=300))
def test_rtp_arbitrary_bytes_raise_only_protocol_error(data: bytes) -> None:
    try:
        packet = RtpPacket.parse(data)
    except ProtocolError:
        return
    assert RtpPacket.parse(packet.serialize()) == packet


def test_sender_numbers_packets_and_wraps() -> None:
    sender = RtpSender(ssrc=7, sequence=65535, timestamp=2**32 - 80)
    first = sender.packet(0, b"x" * 160, 160)
    second = sender.packet(0, b"x" * 160, 160)
    assert first.marker and not second.marker
    assert (first.sequence, second.sequence) == (65535, 0)
    assert second.timestamp == 80
    assert seq_newer(0, 65535) and not seq_newer(65535, 0)


# --- RFC 4733 ----------------------------------------------------------------------------

def test_dtmf_payload_and_receiver_reports_each_event_once() -> None:
    assert DtmfEvent.parse(bytes.fromhex("0b8a0320")) == DtmfEvent(11, True, 10, 800)
    receiver = DtmfReceiver()
    digits = []
    for payload, _ in event_payloads("#"):
        digits.append(receiver.receive(1, 1000, payload))
    for payload, _ in event_payloads("5"):  # a new event: a new timestamp
        digits.append(receiver.receive(1, 2000, payload))
    assert [d for d in digits if d] == ["#", "5"]
    assert receiver.receive(2, 1000, event_payloads("#")[0][0]) == "#"  # other SSRC
    with pytest.raises(ProtocolError):
        receiver.receive(1, 3000, b"\x01")


def test_sipp_pcap_payload_layout() -> None:
    packets = event_payloads("0")
    assert len(packets) == 7 and packets[0][1] and not packets[1][1]
    assert [DtmfEvent.parse(p).end for p, _ in packets][-3:] == [True] * 3


# --- G.711 -------------------------------------------------------------------------------

@pytest.mark.parametrize("codec", [g711.PCMU, g711.PCMA])
def test_g711_matches_audioop_for_every_sample(codec: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")
    everything = np.arange(-32768, 32768, dtype=np.int16)
    encode = audioop.lin2ulaw if codec == g711.PCMU else audioop.lin2alaw
    decode = audioop.ulaw2lin if codec == g711.PCMU else audioop.alaw2lin
    assert g711.encode(everything, codec) == encode(everything.tobytes(), 2)
    codes = bytes(range(256))
    assert g711.decode(codes, codec).tobytes() == decode(codes, 2)


@pytest.mark.parametrize("codec", [g711.PCMU, g711.PCMA])
def test_g711_round_trip_is_close(codec: int) -> None:
    t = np.arange(800) / 8000
    tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    back = g711.decode(g711.encode(tone, codec), codec)
    error = np.abs(back.astype(np.int32) - tone)
    assert error.max() < 8000 * 0.04
    with pytest.raises(ProtocolError):
        g711.encode(tone, 9)


# --- jitter buffer ---------------------------------------------------------------------

def push_all(buffer: JitterBuffer, seqs: list[int], now: float = 0.0) -> list[int | None]:
    out = []
    for seq in seqs:
        out += [f.sequence & 0xFFFF if f.payload is not None else None
                for f in buffer.push(seq, seq * 160, bytes([seq & 0xFF]), now)]
    return out


def test_in_order_packets_pass_at_once() -> None:
    buffer = JitterBuffer(0.06)
    assert push_all(buffer, [10, 11, 12]) == [10, 11, 12]
    assert buffer.next_deadline() is None


def test_reordered_packets_come_out_in_order() -> None:
    buffer = JitterBuffer(0.06)
    assert push_all(buffer, [1, 3, 2, 4]) == [1, 2, 3, 4]
    assert buffer.stats.reordered == 1 and buffer.stats.lost == 0


def test_a_gap_is_concealed_after_the_wait_and_late_packets_are_dropped() -> None:
    buffer = JitterBuffer(0.06)
    assert push_all(buffer, [1, 2, 4, 5], now=1.0) == [1, 2]
    assert buffer.next_deadline() == pytest.approx(1.06)
    assert buffer.handle_timeout(1.03) == []
    frames = buffer.handle_timeout(1.06)
    assert [(f.sequence, f.payload is None) for f in frames] == [(3, True), (4, False),
                                                                  (5, False)]
    assert push_all(buffer, [3], now=1.1) == [] and buffer.stats.late == 1
    assert push_all(buffer, [5], now=1.1) == [] and buffer.stats.late == 2
    assert buffer.stats.lost == 1


def test_sequence_wrap_duplicates_and_resync() -> None:
    buffer = JitterBuffer(0.06)
    assert push_all(buffer, [65534, 65535, 0, 1]) == [65534, 65535, 0, 1]
    assert push_all(buffer, [1]) == [] and buffer.stats.late == 1
    assert push_all(buffer, [30000]) == [30000]  # a new stream, not 28000 losses


def test_too_many_held_packets_force_the_gap_closed() -> None:
    buffer = JitterBuffer(10.0, max_held=5)
    out = push_all(buffer, [1, *range(3, 10)])
    assert out[:3] == [1, None, 3]


@PROPERTY
@given(st.lists(st.integers(0, 60), max_size=80), st.integers(0, 65535))
def test_jitter_buffer_releases_each_packet_at_most_once_in_order(
        order: list[int], base: int) -> None:
    buffer = JitterBuffer(0.05)
    released: list[int] = []
    now = 0.0
    for offset in order:
        now += 0.02
        released += [f.sequence for f in buffer.push((base + offset) & 0xFFFF, 0, b"x", now)
                     if f.payload is not None]
        released += [f.sequence for f in buffer.handle_timeout(now) if f.payload is not None]
    released += [f.sequence for f in buffer.handle_timeout(now + 10) if f.payload is not None]
    assert released == sorted(set(released))


def test_concealer_fades_then_goes_silent() -> None:
    concealer = Concealer(max_repeats=2, frame_samples=4)
    concealer.good(np.full(4, 1000, np.int16))
    assert concealer.lost().tolist() == [500] * 4
    assert concealer.lost().tolist() == [250] * 4
    assert concealer.lost().tolist() == [0] * 4


# --- the media streams of a call ---------------------------------------------------------

PLAN = MediaPlan(codec=g711.PCMA, payload_type=8, dtmf_payload_type=101,
                 remote_host="127.0.0.1", remote_port=4000)


def test_outbound_stream_pads_short_chunks_and_counts_timestamps() -> None:
    out = OutboundStream(PLAN)
    first = RtpPacket.parse(out.packet(b"\x00\x01" * 100))
    second = RtpPacket.parse(out.packet(b""))
    assert len(first.payload) == 160 and first.payload_type == 8
    assert second.timestamp - first.timestamp == 160
    assert (second.sequence - first.sequence) & 0xFFFF == 1


def test_outbound_fill_splits_chunks_for_other_packet_times() -> None:
    out = OutboundStream(MediaPlan(0, 0, None, "h", 1, ptime=30))
    chunks = [b"\x01" * 320, b"\x02" * 320, None]
    pulled = iter(chunks)
    first = out.fill(lambda: next(pulled))
    assert len(first) == 480 and first[320:] == b"\x02" * 160
    assert out.fill(lambda: None) == b"\x02" * 160


PEER = ("127.0.0.1", 40000)


def test_inbound_stream_checks_source_payload_and_ssrc() -> None:
    inbound = InboundStream(PLAN, {"127.0.0.1"}, 0.06)
    tone = g711.encode(np.full(160, 2000, np.int16), g711.PCMA)
    audio = RtpPacket(8, 1, 160, 0xAA, tone).serialize()
    assert len(inbound.receive(audio, PEER, 0.0).audio) == 1
    assert inbound.receive(audio, ("10.9.9.9", 4000), 0.0).audio == []
    assert inbound.stats.foreign == 1
    other = RtpPacket(8, 2, 320, 0xBB, tone).serialize()
    assert inbound.receive(other, PEER, 0.01).audio == []
    assert inbound.stats.other_ssrc == 1
    unknown = RtpPacket(96, 2, 320, 0xAA, b"opus").serialize()
    assert inbound.receive(unknown, PEER, 0.02).audio == []
    assert inbound.stats.unknown_payload == 1
    foreign = RtpPacket(101, 9, 5, 0xCC, event_payloads("7")[0][0]).serialize()
    assert inbound.receive(foreign, PEER, 0.03).digits == []  # not the live audio's SSRC
    assert inbound.stats.other_ssrc == 2
    digit = RtpPacket(101, 9, 5, 0xAA, event_payloads("7")[0][0]).serialize()
    assert inbound.receive(digit, PEER, 0.03).digits == ["7"]
    later = RtpPacket(101, 10, 900, 0xCC, event_payloads("8")[0][0]).serialize()
    assert inbound.receive(later, PEER, 0.6).digits == ["8"]  # the audio fell silent
    assert inbound.receive(b"\x00garbage", PEER, 0.04).audio == []
    assert inbound.stats.malformed == 1


def test_media_and_digits_count_only_from_the_latched_port() -> None:
    """A second socket on the caller's host cannot inject a keypad press or audio."""
    inbound = InboundStream(PLAN, {"127.0.0.1"}, 0.06)
    tone = g711.encode(np.full(160, 2000, np.int16), g711.PCMA)
    assert len(inbound.receive(RtpPacket(8, 1, 160, 0xAA, tone).serialize(), PEER,
                               0.0).audio) == 1
    intruder = ("127.0.0.1", 40002)
    zero = RtpPacket(101, 50, 5, 0xAA, event_payloads("0")[0][0]).serialize()
    assert inbound.receive(zero, intruder, 0.01).digits == []
    assert inbound.receive(RtpPacket(8, 2, 320, 0xAA, tone).serialize(), intruder,
                           0.02).audio == []
    assert inbound.stats.foreign == 2 and inbound.stats.digits == 0
    inbound.update(PLAN, {"127.0.0.1"})  # a re-INVITE: the peer may move to a new port
    assert inbound.receive(zero, intruder, 0.03).digits == ["0"]


def test_dtmf_sharing_the_audio_sequence_is_no_loss() -> None:
    inbound = InboundStream(PLAN, {"127.0.0.1"}, 0.06)
    silence = g711.silence(g711.PCMA, 160)
    inbound.receive(RtpPacket(8, 1, 160, 5, silence).serialize(), PEER, 0.0)
    inbound.receive(RtpPacket(101, 2, 320, 5, event_payloads("1")[0][0]).serialize(),
                    PEER, 0.02)
    got = inbound.receive(RtpPacket(8, 3, 480, 5, silence).serialize(), PEER, 0.04)
    assert len(got.audio) == 1 and inbound.jitter.stats.lost == 0


def test_barge_in_turns_the_next_packet_silent() -> None:
    from voice.clock import MONOTONIC
    from voice.playout import Playout

    async def never(chunk: bytes) -> None:
        raise AssertionError("a pull-only playout pushes nothing")

    playout = Playout(never, 8000, MONOTONIC)
    playout.enqueue((np.full(8000, 6000, np.int16)).astype("<i2").tobytes())
    out = OutboundStream(PLAN)
    loud = [g711.decode(RtpPacket.parse(out.packet(out.fill(playout.pull))).payload, 8)
            for _ in range(3)]
    assert all(np.abs(frame).min() > 5000 for frame in loud)
    playout.clear()  # what the pipeline does on barge-in
    after = g711.decode(RtpPacket.parse(out.packet(out.fill(playout.pull))).payload, 8)
    assert np.abs(after).max() < 16
