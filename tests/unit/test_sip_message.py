"""SIP message parsing and serialising (wire/sip/message.py, headers.py), on bytes."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.strategies import cases
from voice.errors import SipError
from wire.sip.headers import CSeq, NameAddr, SipUri, Via, split_list
from wire.sip.message import (
    Headers,
    SipRequest,
    SipResponse,
    canonical_name,
    check_request,
    parse_message,
    response_to,
    with_received,
)

pytestmark = pytest.mark.unit
PROPERTY = settings(database=None, deadline=None, max_examples=cases(2000),
                    suppress_health_check=[HealthCheck.too_slow])

INVITE = (
    b"INVITE sip:assistant@127.0.0.1:5070 SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"To: Assistant <sip:assistant@127.0.0.1>\r\n"
    b"From: \"Alice\" <sip:alice@example.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710@pc33.example.com\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@10.0.0.1:5060>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: 4\r\n\r\n"
    b"v=0\nEXTRA"
)


def test_parses_an_invite() -> None:
    message = parse_message(INVITE)
    assert isinstance(message, SipRequest)
    assert message.method == "INVITE" and message.uri == "sip:assistant@127.0.0.1:5070"
    assert message.call_id == "a84b4c76e66710@pc33.example.com"
    assert message.cseq == CSeq(314159, "INVITE")
    assert message.from_.tag == "1928301774" and message.from_.display == "Alice"
    assert message.to.tag is None
    assert message.vias[0].branch == "z9hG4bK776asdhds" and message.vias[0].port == 5060
    assert message.body == b"v=0\n"  # framed by Content-Length, the rest ignored
    check_request(message)


def test_compact_forms_case_and_folding() -> None:
    data = (b"BYE sip:a@b SIP/2.0\r\n"
            b"v: SIP/2.0/UDP h:1;branch=z9hG4bKx\r\n"
            b"f: <sip:x@y>;tag=1\r\nt: <sip:a@b>;tag=2\r\ni: abc\r\n"
            b"cseq: 2 BYE\r\nSUBJECT: a long\r\n  folded\tsubject\r\nl: 0\r\n\r\n")
    message = parse_message(data)
    assert isinstance(message, SipRequest)
    assert message.call_id == "abc" and message.headers.get("From") == "<sip:x@y>;tag=1"
    assert message.headers.get("subject") == "a long folded\tsubject"
    check_request(message)


def test_several_headers_and_comma_lists() -> None:
    data = (b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a:1;branch=z9hG4bK1, SIP/2.0/UDP b:2\r\n"
            b"Via: SIP/2.0/UDP c\r\nRecord-Route: <sip:p1;lr>,<sip:p2;lr>\r\n"
            b"From: <sip:x@y>;tag=1\r\nTo: <sip:a@b>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n"
            b"\r\n")
    message = parse_message(data)
    assert isinstance(message, SipResponse) and message.status == 200
    assert [v.host for v in message.vias] == ["a", "b", "c"]
    assert message.headers.get_all("Record-Route") == ["<sip:p1;lr>", "<sip:p2;lr>"]


def test_missing_content_length_means_rest_of_datagram() -> None:
    message = parse_message(b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: x\r\n\r\nhello")
    assert message.body == b"hello"


@pytest.mark.parametrize("data, what", [
    (b"", "no blank line"),
    (b"INVITE sip:a@b SIP/2.0\r\nVia: x\r\n", "no blank line"),
    (b"INVITE sip:a@b\r\n\r\n", "bad request line"),
    (b"INVITE  sip:a@b SIP/2.0\r\n\r\n", "bad request line"),
    (b"SIP/2.0 99 Odd\r\n\r\n", "bad status line"),
    (b"SIP/2.0 2000 OK\r\n\r\n", "bad status line"),
    (b"OPTIONS sip:a@b SIP/2.0\r\nNoColon\r\n\r\n", "bad header line"),
    (b"OPTIONS sip:a@b SIP/2.0\r\n folded-first\r\n\r\n", "continuation"),
    (b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 10\r\n\r\nshort", "Content-Length 10"),
    (b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: -1\r\n\r\n", "bad Content-Length"),
    (b"OPTIONS sip:a@b SIP/2.0\r\nX: \xff\xfe\r\n\r\n", "not UTF-8"),
    ("OPTIONS sip:a@b SIP/2.0\r\nContent-Length: ²\r\n\r\n".encode(), "bad Content-Length"),
    ("OPTIONS sip:a@b SIP/2.0\r\nl: ٣\r\n\r\nabc".encode(), "bad Content-Length"),
    ("SIP/2.0 ２００ OK\r\n\r\n".encode(), "bad status line"),
])
def test_malformed_messages_raise_400_naming_the_problem(data: bytes, what: str) -> None:
    with pytest.raises(SipError) as caught:
        parse_message(data)
    assert caught.value.status == 400 and what in caught.value.message


def test_other_sip_versions_get_505() -> None:
    with pytest.raises(SipError) as caught:
        parse_message(b"OPTIONS sip:a@b SIP/3.0\r\n\r\n")
    assert caught.value.status == 505


@pytest.mark.parametrize("drop, status", [
    ("Via", 400), ("From", 400), ("To", 400), ("Call-ID", 400), ("CSeq", 400)])
def test_check_request_needs_the_mandatory_headers(drop: str, status: int) -> None:
    message = parse_message(INVITE)
    assert isinstance(message, SipRequest)
    broken = SipRequest(headers=message.headers.without(drop), body=b"", method="INVITE",
                        uri=message.uri)
    with pytest.raises(SipError) as caught:
        check_request(broken)
    assert caught.value.status == status and drop in caught.value.message


@pytest.mark.parametrize("header, value", [("CSeq", "² INVITE"), ("Max-Forwards", "７０")])
def test_unicode_digits_are_not_numbers(header: str, value: str) -> None:
    text = INVITE.decode().replace(f"{header}: ", f"{header}: {value}\r\nX-Old-{header}: ")
    with pytest.raises(SipError) as caught:
        check_request(parse_message(text.encode()))  # type: ignore[arg-type]
    assert caught.value.status == 400


def test_check_request_cseq_method_max_forwards_and_scheme() -> None:
    message = parse_message(INVITE)
    assert isinstance(message, SipRequest)
    bad_cseq = SipRequest(headers=message.headers.replaced("CSeq", "1 BYE"), method="INVITE",
                          uri=message.uri, body=b"")
    with pytest.raises(SipError, match="does not match"):
        check_request(bad_cseq)
    zero = SipRequest(headers=message.headers.replaced("Max-Forwards", "0"), method="INVITE",
                      uri=message.uri, body=b"")
    with pytest.raises(SipError) as caught:
        check_request(zero)
    assert caught.value.status == 483
    tel = SipRequest(headers=message.headers, method="INVITE", uri="tel:+123", body=b"")
    with pytest.raises(SipError) as caught:
        check_request(tel)
    assert caught.value.status == 416


def test_response_copies_dialog_headers_and_adds_the_to_tag() -> None:
    request = parse_message(INVITE)
    assert isinstance(request, SipRequest)
    response = response_to(request, 180, to_tag="abc")
    parsed = parse_message(response.serialize())
    assert isinstance(parsed, SipResponse) and parsed.status == 180
    assert parsed.reason == "Ringing"
    assert parsed.to.tag == "abc" and parsed.from_.tag == "1928301774"
    assert parsed.call_id == request.call_id and parsed.cseq == request.cseq
    assert parsed.headers.get("Content-Length") == "0"
    assert response_to(request, 100, to_tag="abc").to.tag is None  # 100 carries no tag


def test_a_response_that_sets_up_a_dialog_keeps_the_proxys_record_route() -> None:
    routed = INVITE.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards: 69\r\n"
                            b"Record-Route: <sip:10.0.0.9:5060;lr>, <sip:10.0.0.8;lr>\r\n")
    request = parse_message(routed)
    assert isinstance(request, SipRequest)
    for status in (180, 200):
        parsed = parse_message(response_to(request, status, to_tag="abc").serialize())
        assert parsed.headers.get_all("Record-Route") == ["<sip:10.0.0.9:5060;lr>",
                                                          "<sip:10.0.0.8;lr>"]
    for status in (100, 486):  # no dialog: nothing to route
        assert response_to(request, status, to_tag="abc").headers.get_all("Record-Route") == []


def test_received_and_rport_are_stamped_on_the_top_via() -> None:
    request = parse_message(INVITE)
    assert isinstance(request, SipRequest)
    stamped = with_received(request, "192.0.2.9", 40000)
    top = stamped.vias[0]
    assert dict(top.params)["received"] == "192.0.2.9" and dict(top.params)["rport"] == "40000"


def test_round_trip_keeps_everything() -> None:
    message = parse_message(INVITE)
    assert parse_message(message.serialize()) == message


def test_header_values() -> None:
    uri = SipUri.parse("sip:alice:secret@[2001:db8::1]:5070;transport=udp?subject=x")
    assert (uri.user, uri.password, uri.host, uri.port) == ("alice", "secret",
                                                             "[2001:db8::1]", 5070)
    assert uri.address() == ("2001:db8::1", 5070)
    addr = NameAddr.parse("sip:bob@host;tag=7")  # addr-spec: params belong to the header
    assert addr.tag == "7" and addr.uri.params == ()
    via = Via.parse("SIP/2.0/UDP host.example:5060 ;branch=z9hG4bKa; received=1.2.3.4")
    assert via.host == "host.example" and via.branch == "z9hG4bKa"
    assert split_list('"a, b" <sip:x>, <sip:y;a=b,c>') == ['"a, b" <sip:x>', "<sip:y;a=b,c>"]
    assert canonical_name("WWW-AUTHENTICATE") == "WWW-Authenticate"
    assert canonical_name("x-voice-events") == "X-Voice-Events"
    with pytest.raises(SipError):
        CSeq.parse("99999999999 INVITE")
    with pytest.raises(SipError):
        Via.parse("SIP/2.0 host")


# --- properties and fuzzing ------------------------------------------------------------

token = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789-.!%*_+`'~", min_size=1,
                max_size=12)
value = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(
    str.strip)


@PROPERTY
@given(method=token, user=token, headers=st.lists(st.tuples(token, value), max_size=8),
       body=st.binary(max_size=200))
def test_serialise_then_parse_is_identity(method: str, user: str,
                                          headers: list[tuple[str, str]], body: bytes) -> None:
    headers = [(n, v) for n, v in headers if n.lower() not in ("content-length", "l")]
    request = SipRequest(headers=Headers.of(*headers), body=body, method=method,
                         uri=f"sip:{user}@example.com")
    parsed = parse_message(request.serialize())
    assert isinstance(parsed, SipRequest)
    assert parsed.headers.get("Content-Length") == str(len(body))
    assert (parsed.method, parsed.uri, parsed.body) == (method, request.uri, body)
    assert parsed.headers.without("Content-Length") == request.headers


@PROPERTY
@given(st.binary(max_size=600))
@example(b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP [::1\r\n\r\n")
@example(b"SIP/2.0 200 OK\r\nCSeq: x\r\nVia: ;;;\r\n\r\n")
def test_arbitrary_bytes_raise_only_sip_error(data: bytes) -> None:
    try:
        message = parse_message(data)
    except SipError:
        return
    if isinstance(message, SipRequest):  # the checks the endpoint runs next
        try:
            check_request(message)
        except SipError:
            pass


MUTATIONS = st.lists(st.tuples(st.integers(0, len(INVITE) - 1), st.binary(max_size=4)),
                     min_size=1, max_size=6)


@PROPERTY
@given(MUTATIONS)
def test_mutated_invites_raise_only_sip_error(edits: list[tuple[int, bytes]]) -> None:
    data = bytearray(INVITE)
    for position, replacement in edits:
        data[position: position + len(replacement)] = replacement
    try:
        message = parse_message(bytes(data))
        if isinstance(message, SipRequest):
            check_request(message)
            _ = (message.from_.tag, message.to.tag, message.cseq, message.vias)
    except SipError:
        pass
