"""Property tests for the parsers and tables hostile input reaches that the other
modules' tests do not: the SIP digest verifier, RFC 4733 keypad events, a call's RTP
source check, the SIP server-transaction table, and client-secret requests. Each runs
`cases(2000)` examples (x50 with `pytest --fuzz`); the invariant is always that the
input is answered (a verdict, a typed error, a status) and never escapes as an
exception, and that a stranger cannot speak for the caller."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apis.openai_realtime import client_secrets
from tests.strategies import HOSTILE_STRINGS, cases, hostile_json
from voice.auth import SCOPES, Credentials, Grant
from voice.errors import ProtocolError, SipError
from wire.rtp.dtmf import DtmfReceiver
from wire.rtp.packet import RtpPacket
from wire.rtp.plan import MediaPlan
from wire.rtp.stream import InboundStream
from wire.sip.auth import DigestVerifier, digest_response
from wire.sip.message import SipRequest, check_request, parse_message
from wire.sip.transaction import TransactionLayer

pytestmark = pytest.mark.unit
PROPERTY = settings(database=None, deadline=None, max_examples=cases(2000),
                    suppress_health_check=[HealthCheck.too_slow])

DIGEST_KEYS = ("username", "realm", "nonce", "uri", "response", "algorithm", "qop", "nc",
               "cnonce", "opaque")


def _quoted(value: str) -> str:
    return '"' + value.replace('"', "") + '"'


@st.composite
def digest_headers(draw: st.DrawFn, verifier: DigestVerifier) -> str:
    """An Authorization header from the digest grammar, its values hostile, its nonce
    often a real one (so that the checks behind the MAC are reached too)."""
    nonce_header = verifier.challenge(1000.0)
    real_nonce = nonce_header.split('nonce="', 1)[1].split('"', 1)[0]
    params: dict[str, str] = {}
    for key in draw(st.lists(st.sampled_from(DIGEST_KEYS), max_size=10, unique=True)):
        params[key] = draw(HOSTILE_STRINGS | st.text(max_size=20))
    if draw(st.booleans()):
        params["nonce"] = real_nonce
        params["username"], params["realm"] = "alice", "voice"
        if draw(st.booleans()):  # a correct answer, with hostile nc / qop around it
            params["response"] = digest_response(
                params.get("algorithm", "MD5").upper()
                if params.get("algorithm", "MD5").upper() in ("MD5", "SHA-256") else "MD5",
                "alice", "voice", "secret", "INVITE", params.get("uri", ""), real_nonce,
                params.get("qop"), params.get("nc", ""), params.get("cnonce", ""))
    joined = ", ".join(f"{k}={_quoted(v) if draw(st.booleans()) else v}"
                       for k, v in params.items())
    return draw(st.sampled_from(["Digest ", "digest ", "", "Basic "])) + joined


VERIFIER = DigestVerifier("voice", "alice", "secret")


@PROPERTY
@given(header=digest_headers(VERIFIER) | st.text(max_size=300))
def test_the_digest_verifier_gives_a_verdict_for_any_header(header: str) -> None:
    assert VERIFIER.verify(header, "INVITE", 1001.0) in ("ok", "stale", "bad")


@PROPERTY
@given(payload=st.binary(max_size=40), ssrc=st.integers(0, 2**32 - 1),
       timestamp=st.integers(0, 2**32 - 1))
def test_any_keypad_event_payload_is_a_digit_nothing_or_a_protocol_error(
        payload: bytes, ssrc: int, timestamp: int) -> None:
    try:
        digit = DtmfReceiver().receive(ssrc, timestamp, payload)
    except ProtocolError as exc:
        assert exc.code == "dtmf_malformed"
        return
    assert digit is None or digit in "0123456789*#ABCD"


PEER = ("10.0.0.5", 4000)
PLAN = MediaPlan(codec=0, payload_type=0, dtmf_payload_type=101, remote_host=PEER[0],
                 remote_port=PEER[1])
SOURCES = st.sampled_from([PEER, (PEER[0], 4002), (PEER[0], 5000), ("10.0.0.6", 4000),
                           ("192.0.2.1", 4000)])


@st.composite
def datagrams(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["audio", "digit", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    payload = (bytes([draw(st.integers(0, 15)), 0x80 | 10, 3, 0xC0]) if kind == "digit"
               else draw(st.binary(min_size=0, max_size=200)))
    return RtpPacket(101 if kind == "digit" else draw(st.sampled_from([0, 8, 13, 101, 127])),
                     draw(st.integers(0, 2**16 - 1)), draw(st.integers(0, 2**32 - 1)),
                     draw(st.integers(0, 2**32 - 1)), payload).serialize()


@PROPERTY
@given(traffic=st.lists(st.tuples(datagrams(), SOURCES), max_size=30))
def test_only_the_latched_peer_speaks_for_the_caller(
        traffic: list[tuple[bytes, tuple[str, int]]]) -> None:
    """After the caller's first packet, media and keypad events from any other port or
    host are counted as foreign and ignored, whatever they hold."""
    stream = InboundStream(PLAN, {PEER[0]}, 0.06)
    first = RtpPacket(0, 1, 160, 1234, b"\xff" * 160).serialize()
    stream.receive(first, PEER, 0.0)
    for n, (data, source) in enumerate(traffic, 1):
        foreign_before = stream.stats.foreign
        received = stream.receive(data, source, n * 0.02)
        if source != PEER:
            assert received.digits == [] and received.audio == []
            assert stream.stats.foreign == foreign_before + 1
        stream.handle_timeout(n * 0.02 + 0.01)


INVITE = (b"INVITE sip:assistant@127.0.0.1 SIP/2.0\r\n"
          b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKBRANCH\r\n"
          b"From: <sip:a@10.0.0.1>;tag=1\r\nTo: <sip:assistant@127.0.0.1>\r\n"
          b"Call-ID: CALLID\r\nCSeq: 1 METHOD\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")


@PROPERTY
@given(requests=st.lists(st.tuples(
    st.sampled_from([b"INVITE", b"OPTIONS", b"BYE", b"ACK", b"CANCEL", b"INFO", b"X"]),
    st.sampled_from([b"a", b"b", b"c"]) | st.binary(min_size=1, max_size=8),
    st.sampled_from([b"1", b"2"]) | st.binary(max_size=6),
    st.binary(max_size=4)), max_size=60))
def test_the_transaction_table_stays_within_its_cap_whatever_arrives(
        requests: list[tuple[bytes, bytes, bytes, bytes]]) -> None:
    layer = TransactionLayer(max_servers=16)
    for n, (method, branch, call_id, junk) in enumerate(requests):
        data = (INVITE.replace(b"INVITE sip", method + b" sip", 1)
                .replace(b"METHOD", method).replace(b"BRANCH", branch)
                .replace(b"CALLID", call_id + junk))
        try:  # as the endpoint does: parse, then check what headers are parsed on use
            request = parse_message(data)
            if isinstance(request, SipRequest):
                check_request(request)
        except SipError:
            continue
        if isinstance(request, SipRequest):
            layer.receive_request(request, ("10.0.0.1", 5060), float(n))
        assert len(layer.servers) <= 16
        layer.handle_timeout(float(n))
    assert all(isinstance(data, bytes) for data, _ in layer.outgoing)


class _Request:
    """What `client_secrets.mint` reads of an aiohttp request."""

    def __init__(self, body: bytes) -> None:
        self.content_length = len(body)
        self.content = self
        self._body = body

    async def read(self, limit: int) -> bytes:
        return self._body[:limit]


CREDENTIALS = Credentials({"k": SCOPES})
MINTER = Grant("key 1", SCOPES)


@PROPERTY
@given(body=hostile_json(["expires_after", "session", "seconds", "anchor", "type",
                          "instructions", "pipeline", "audio", "output", "voice",
                          "input", "turn_detection"])
       .map(lambda value: json.dumps(value).encode()) | st.binary(max_size=100))
def test_any_client_secret_request_gets_a_status_not_an_exception(body: bytes) -> None:
    response: Any = asyncio.run(client_secrets.mint(_Request(body), CREDENTIALS, MINTER, 600))
    assert response.status in (200, 400, 403, 413, 429)
    answer = json.loads(response.body)
    assert ("value" in answer) == (response.status == 200)
