"""SDP and offer/answer (wire/sip/sdp.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.strategies import cases
from voice.errors import SipError
from wire.rtp import g711
from wire.sip.sdp import (
    LocalMedia,
    SessionDescription,
    answer_offer,
    make_offer,
    plan_from_answer,
)

pytestmark = pytest.mark.unit


def offer(media: str, session_extra: str = "", connection: str = "192.0.2.10") -> bytes:
    return (f"v=0\r\no=alice 2890844526 2890844526 IN IP4 host\r\ns=-\r\n"
            f"c=IN IP4 {connection}\r\nt=0 0\r\n{session_extra}{media}").encode()


def local() -> LocalMedia:
    return LocalMedia("127.0.0.1", 40000, 77)


def test_answer_picks_the_offerers_first_g711_and_keeps_its_event_type() -> None:
    body = offer("m=audio 49170 RTP/AVP 9 8 0 96\r\na=rtpmap:96 telephone-event/8000\r\n"
                 "a=fmtp:96 0-15\r\na=ptime:30\r\n")
    plan, answer = answer_offer(SessionDescription.parse(body), local())
    assert plan.codec == g711.PCMA and plan.payload_type == 8
    assert plan.dtmf_payload_type == 96 and plan.ptime == 30
    assert (plan.remote_host, plan.remote_port, plan.direction) == ("192.0.2.10", 49170,
                                                                     "sendrecv")
    parsed = SessionDescription.parse(answer.serialize())
    (audio,) = parsed.media
    assert audio.formats == ("8", "96") and audio.port == 40000
    assert audio.rtpmap() == {8: ("PCMA", 8000), 96: ("TELEPHONE-EVENT", 8000)}
    assert audio.attribute("ptime") == "30" and audio.direction() == "sendrecv"
    assert parsed.connection == "127.0.0.1"


def test_static_types_need_no_rtpmap_and_media_level_connection_wins() -> None:
    body = offer("m=audio 5004 RTP/AVP 0\r\nc=IN IP4 198.51.100.7\r\n")
    plan, _ = answer_offer(SessionDescription.parse(body), local())
    assert plan.codec == g711.PCMU and plan.remote_host == "198.51.100.7"
    assert plan.dtmf_payload_type is None and plan.ptime == 20


@pytest.mark.parametrize("direction, ours, sends, receives", [
    ("sendrecv", "sendrecv", True, True), ("sendonly", "recvonly", False, True),
    ("recvonly", "sendonly", True, False), ("inactive", "inactive", False, False)])
def test_hold_directions(direction: str, ours: str, sends: bool, receives: bool) -> None:
    body = offer(f"m=audio 5004 RTP/AVP 0\r\na={direction}\r\n")
    plan, answer = answer_offer(SessionDescription.parse(body), local())
    assert plan.direction == ours and plan.sends is sends and plan.receives is receives
    assert answer.media[0].direction() == ours


def test_old_style_hold_with_zero_address() -> None:
    plan, _ = answer_offer(SessionDescription.parse(offer("m=audio 5004 RTP/AVP 0\r\n",
                                                          connection="0.0.0.0")), local())
    assert plan.direction == "recvonly" and not plan.sends


def test_other_media_are_declined_with_port_zero() -> None:
    body = offer("m=video 5006 RTP/AVP 96\r\nm=audio 5004 RTP/AVP 0\r\n")
    _, answer = answer_offer(SessionDescription.parse(body), local())
    assert [(m.media, m.port) for m in answer.media] == [("video", 0), ("audio", 40000)]


@pytest.mark.parametrize("media", [
    "m=audio 5004 RTP/AVP 9 18\r\n",  # G.722, G.729 only
    "m=audio 5004 RTP/SAVP 0\r\n",  # SRTP
    "m=audio 0 RTP/AVP 0\r\n",  # declined stream
    "m=video 5004 RTP/AVP 0\r\n",
    "m=audio 5004 RTP/AVP 96\r\na=rtpmap:96 PCMU/16000\r\n",
])
def test_no_usable_audio_is_488(media: str) -> None:
    with pytest.raises(SipError) as caught:
        answer_offer(SessionDescription.parse(offer(media)), local())
    assert caught.value.status == 488


@pytest.mark.parametrize("body", [b"v=1\r\no=x\r\n", b"no equals", b"v=0\r\n",
                                  b"v=0\r\no=x\r\nm=audio x RTP/AVP 0\r\n",
                                  b"v=0\r\no=x\r\nc=IN\r\n", b"\xff\xfe"])
def test_malformed_sdp_is_400(body: bytes) -> None:
    with pytest.raises(SipError) as caught:
        SessionDescription.parse(body)
    assert caught.value.status == 400


def test_our_offer_and_the_peers_answer() -> None:
    ours = make_offer(LocalMedia("127.0.0.1", 41000, 5))
    parsed = SessionDescription.parse(ours.serialize())
    assert parsed.media[0].formats == ("0", "8", "101")
    answer = offer("m=audio 6000 RTP/AVP 8 101\r\na=rtpmap:101 telephone-event/8000\r\n")
    plan = plan_from_answer(SessionDescription.parse(answer))
    assert plan.codec == g711.PCMA and plan.dtmf_payload_type == 101


def test_origin_version_grows_with_each_answer() -> None:
    media = LocalMedia("127.0.0.1", 1, 9)
    assert media.origin().split()[2] == "1" and media.origin().split()[2] == "2"


@settings(database=None, deadline=None, max_examples=cases(2000))
@given(st.binary(max_size=400))
def test_arbitrary_sdp_raises_only_sip_error(data: bytes) -> None:
    try:
        answer_offer(SessionDescription.parse(data), local())
    except SipError:
        pass


# Numbers as a hostile peer writes them: Unicode digits that str.isdigit() accepts,
# infinities, signs, huge values, fractions, and the ordinary ones.
HOSTILE_NUMBERS = st.one_of(
    st.integers(0, 200).map(str), st.integers(0, 10**30).map(str),
    st.sampled_from(["inf", "-inf", "nan", "1e999", "²", "²0", "٣٠", "２０", "-20", "+20",
                     "20.5", "0x14", "", " ", "20 30", "9" * 400]),
    st.text(min_size=1, max_size=6))


@st.composite
def grammar_sdp(draw: st.DrawFn) -> bytes:
    """An SDP offer from its grammar (RFC 4566), with hostile values in every number."""
    n = draw(HOSTILE_NUMBERS)
    lines = ["v=0", f"o=- {draw(HOSTILE_NUMBERS)} {n} IN IP4 192.0.2.1", "s=-",
             f"c=IN {draw(st.sampled_from(['IP4', 'IP6', 'IPX']))} "
             f"{draw(st.sampled_from(['192.0.2.1', '0.0.0.0', '::1', '²²²', '']))}",
             f"t={draw(HOSTILE_NUMBERS)} 0"]
    for _ in range(draw(st.integers(1, 3))):
        formats = " ".join(draw(st.lists(HOSTILE_NUMBERS, min_size=1, max_size=4)))
        lines.append(f"m={draw(st.sampled_from(['audio', 'video', 'Audio']))} "
                     f"{draw(HOSTILE_NUMBERS)} {draw(st.sampled_from(['RTP/AVP', 'RTP/SAVP']))} "
                     f"{formats}")
        for _ in range(draw(st.integers(0, 4))):
            lines.append(draw(st.sampled_from([
                f"a=rtpmap:{draw(HOSTILE_NUMBERS)} "
                f"{draw(st.sampled_from(['PCMU', 'PCMA', 'telephone-event']))}/"
                f"{draw(HOSTILE_NUMBERS)}",
                f"a=ptime:{draw(HOSTILE_NUMBERS)}", f"a=fmtp:{draw(HOSTILE_NUMBERS)} 0-15",
                f"c=IN IP4 {draw(st.sampled_from(['198.51.100.7', '²', '']))}",
                "a=sendonly", "a=inactive"])))
    return ("\r\n".join(lines) + "\r\n").encode()


@settings(database=None, deadline=None, max_examples=cases(2000))
@given(grammar_sdp())
def test_sdp_from_its_grammar_with_hostile_numbers_raises_only_sip_error(body: bytes) -> None:
    try:
        plan, answer = answer_offer(SessionDescription.parse(body), local())
    except SipError as exc:
        assert exc.status in (400, 488)
        return
    assert 10 <= plan.ptime <= 60 and 0 < plan.remote_port <= 65535
    SessionDescription.parse(answer.serialize())  # what we answer parses


@pytest.mark.parametrize("media, ptime", [
    ("m=audio 5004 RTP/AVP 0\r\na=ptime:inf\r\n", 20),
    ("m=audio 5004 RTP/AVP 0\r\na=ptime:1e999\r\n", 20),
    ("m=audio 5004 RTP/AVP 0\r\na=ptime:²0\r\n", 20),
    ("m=audio 5004 RTP/AVP 0\r\na=ptime:30.5\r\n", 30),
])
def test_a_ptime_that_is_not_a_number_means_the_default(media: str, ptime: int) -> None:
    plan, _ = answer_offer(SessionDescription.parse(offer(media)), local())
    assert plan.ptime == ptime


@pytest.mark.parametrize("media, status", [
    ("m=audio ²000 RTP/AVP 0\r\n", 400),  # Unicode digits in the port
    ("m=audio 5004 RTP/AVP ²\r\n", 488),  # ... in a format
    ("m=audio 5004 RTP/AVP 96\r\na=rtpmap:96 PCMU/8000²\r\n", 488),  # ... in a rate
    ("m=audio 5004 RTP/AVP 96\r\na=rtpmap:９６ PCMU/8000\r\n", 488),
])
def test_unicode_digits_are_not_numbers(media: str, status: int) -> None:
    with pytest.raises(SipError) as caught:
        answer_offer(SessionDescription.parse(offer(media)), local())
    assert caught.value.status == status
