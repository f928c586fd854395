"""SIP transactions, dialogs and digest authentication (sans-I/O), with a fake `now`."""

from __future__ import annotations

import pytest

from transports.sip.register import granted_expires, refresh_after
from transports.sip.uac import with_credentials
from voice.errors import SipError
from wire.sip.auth import DigestChallenge, DigestVerifier, digest_response
from wire.sip.dialog import Dialog
from wire.sip.headers import SipUri
from wire.sip.message import SipRequest, SipResponse, parse_message, response_to
from wire.sip.transaction import T1, T2, UNANSWERED_INVITE_S, TransactionLayer

pytestmark = pytest.mark.unit
PEER = ("192.0.2.1", 5060)


def request(method: str = "INVITE", branch: str = "z9hG4bKabc", cseq: int = 1,
            to_tag: str = "") -> SipRequest:
    to = "<sip:a@b>" + (f";tag={to_tag}" if to_tag else "")
    data = (f"{method} sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch={branch}\r\n"
            f"From: <sip:c@d>;tag=ft\r\nTo: {to}\r\nCall-ID: cid\r\nCSeq: {cseq} {method}\r\n"
            f"Contact: <sip:c@192.0.2.1:5060>\r\nMax-Forwards: 70\r\n\r\n").encode()
    parsed = parse_message(data)
    assert isinstance(parsed, SipRequest)
    return parsed


def sent(layer: TransactionLayer) -> list[bytes]:
    out, layer.outgoing = [d for d, _ in layer.outgoing], []
    return out


def status_of(data: bytes) -> int:
    parsed = parse_message(data)
    assert isinstance(parsed, SipResponse)
    return parsed.status


def test_invite_retransmission_gets_the_last_response_again() -> None:
    layer = TransactionLayer()
    transaction = layer.receive_request(request(), PEER, 0.0)
    assert transaction is not None
    layer.respond(transaction, response_to(transaction.request, 180, to_tag="t"), 0.0)
    assert [status_of(d) for d in sent(layer)] == [180]
    assert layer.receive_request(request(), PEER, 0.1) is None
    assert [status_of(d) for d in sent(layer)] == [180]


def test_2xx_is_retransmitted_until_acked() -> None:
    layer = TransactionLayer()
    transaction = layer.receive_request(request(), PEER, 0.0)
    assert transaction is not None
    layer.respond(transaction, response_to(transaction.request, 200, to_tag="t"), 0.0)
    sent(layer)
    times = []
    now = 0.0
    for _ in range(4):
        deadline = layer.next_deadline()
        assert deadline is not None
        now = deadline
        layer.handle_timeout(now)
        times.append(round(now, 3))
        assert [status_of(d) for d in sent(layer)] == [200]
    assert times == [T1, 3 * T1, 7 * T1, 7 * T1 + T2]  # T1 doubling, capped at T2
    assert layer.acknowledge_2xx("cid", 1, now)
    layer.handle_timeout(now + 1)
    assert sent(layer) == [] and layer.servers == {}


def test_unacknowledged_2xx_times_out_for_the_tu() -> None:
    layer = TransactionLayer()
    transaction = layer.receive_request(request(), PEER, 0.0)
    assert transaction is not None
    layer.respond(transaction, response_to(transaction.request, 200, to_tag="t"), 0.0)
    timed_out = []
    for _ in range(40):
        deadline = layer.next_deadline()
        if deadline is None:
            break
        timed_out += layer.handle_timeout(deadline)
    assert timed_out == [transaction] and transaction.timed_out


def test_error_response_is_acked_in_the_transaction() -> None:
    layer = TransactionLayer()
    transaction = layer.receive_request(request(), PEER, 0.0)
    assert transaction is not None
    layer.respond(transaction, response_to(transaction.request, 486, to_tag="t"), 0.0)
    sent(layer)
    assert layer.receive_request(request("ACK", cseq=1, to_tag="t"), PEER, 0.2) is None
    assert transaction.state == "confirmed"
    layer.handle_timeout(10.0)
    assert layer.servers == {}


def test_ack_of_a_2xx_and_cancel_reach_the_tu() -> None:
    layer = TransactionLayer()
    invite = layer.receive_request(request(), PEER, 0.0)
    cancel = layer.receive_request(request("CANCEL"), PEER, 0.1)
    assert cancel is not None and layer.invite_for_cancel(cancel.request) is invite
    ack = layer.receive_request(request("ACK", branch="z9hG4bKother", to_tag="t"), PEER, 1.0)
    assert ack is not None and ack.request.method == "ACK"


def test_non_invite_server_transaction_absorbs_retransmissions_then_ends() -> None:
    layer = TransactionLayer()
    bye = layer.receive_request(request("BYE", cseq=2, to_tag="t"), PEER, 0.0)
    assert bye is not None
    layer.respond(bye, response_to(bye.request, 200), 0.0)
    sent(layer)
    assert layer.receive_request(request("BYE", cseq=2, to_tag="t"), PEER, 1.0) is None
    assert [status_of(d) for d in sent(layer)] == [200]
    layer.handle_timeout(64 * T1)
    assert layer.servers == {}


def test_requests_never_answered_are_forgotten() -> None:
    """A request the TU ignores (a source outside the allow-list, say) does not stay in
    the table for ever: 64*T1 for a non-INVITE, Timer C's 3 minutes for an INVITE."""
    layer = TransactionLayer()
    assert layer.receive_request(request("OPTIONS", branch="z9hG4bKo"), PEER, 0.0) is not None
    invite = layer.receive_request(request("INVITE", branch="z9hG4bKi"), PEER, 0.0)
    assert invite is not None
    layer.respond(invite, response_to(invite.request, 180), 1.0)  # ringing, never answered
    assert layer.next_deadline() == 64 * T1
    assert layer.handle_timeout(64 * T1) == [] and len(layer.servers) == 1
    assert layer.handle_timeout(UNANSWERED_INVITE_S) == [] and layer.servers == {}
    assert layer.next_deadline() is None


def test_a_full_table_answers_503_and_keeps_no_more() -> None:
    layer = TransactionLayer(max_servers=3)
    for i in range(5):
        layer.receive_request(request("OPTIONS", branch=f"z9hG4bK{i}"), PEER, 0.0)
    assert len(layer.servers) == 3 and layer.refused == 2
    assert [status_of(d) for d in sent(layer)] == [503, 503]
    layer.handle_timeout(64 * T1)
    assert layer.servers == {}
    assert layer.receive_request(request("OPTIONS", branch="z9hG4bK9"), PEER, 40.0) is not None


def test_client_retransmits_then_gives_up_with_a_timeout() -> None:
    layer = TransactionLayer()
    transaction = layer.send_request(request("OPTIONS"), PEER, 0.0)
    assert len(sent(layer)) == 1
    retransmissions, timed_out = 0, []
    while (deadline := layer.next_deadline()) is not None:
        timed_out += layer.handle_timeout(deadline)
        retransmissions += len(sent(layer))
    assert retransmissions == 10 and timed_out == [transaction]  # E: .5 1 2 4 4 ... < 32 s


def test_client_invite_error_is_acked_and_passed_up_once() -> None:
    layer = TransactionLayer()
    invite = request()
    layer.send_request(invite, PEER, 0.0)
    sent(layer)
    busy = response_to(invite, 486, to_tag="x")
    assert layer.receive_response(busy, 0.1) is not None
    (ack,) = sent(layer)
    parsed = parse_message(ack)
    assert isinstance(parsed, SipRequest) and parsed.method == "ACK"
    assert parsed.vias[0].branch == invite.vias[0].branch and parsed.to.tag == "x"
    assert layer.receive_response(busy, 0.2) is None  # a retransmission: ACK again only
    assert len(sent(layer)) == 1


def test_dialog_requests_and_cseq_order() -> None:
    invite = request()
    dialog = Dialog.as_uas(invite, "mine", "<sip:me@127.0.0.1:5070>", PEER)
    bye = dialog.request("BYE", ("127.0.0.1", 5070))
    assert bye.uri == "sip:c@192.0.2.1:5060" and bye.to.tag == "ft" and bye.from_.tag == "mine"
    assert dialog.destination() == ("192.0.2.1", 5060)
    assert dialog.accept_cseq(request("BYE", cseq=2, to_tag="mine"))
    assert not dialog.accept_cseq(request("BYE", cseq=2, to_tag="mine"))
    assert dialog.matches(request("BYE", cseq=3, to_tag="mine"))


# --- digest --------------------------------------------------------------------------

def test_rfc_2617_and_7616_vectors() -> None:
    assert digest_response("MD5", "Mufasa", "testrealm@host.com", "Circle Of Life", "GET",
                           "/dir/index.html", "dcd98b7102dd2f0e8b11d0f600bfb0c093", "auth",
                           "00000001", "0a4f113b") == "6629fae49393a05397450978507c4ef1"
    nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
    cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
    assert digest_response("SHA-256", "Mufasa", "http-auth@example.org", "Circle of Life",
                           "GET", "/dir/index.html", nonce, "auth", "00000001", cnonce) == (
        "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1")


def test_client_prefers_sha256_and_the_verifier_accepts_its_answer() -> None:
    verifier = DigestVerifier("voice", "alice", "s3cret", algorithm="SHA-256")
    md5 = 'Digest realm="voice", nonce="abc", algorithm=MD5, qop="auth"'
    challenge = DigestChallenge.best([md5, verifier.challenge(100.0)])
    assert challenge.algorithm == "SHA-256" and challenge.qop == "auth"
    header = challenge.authorization("alice", "s3cret", "INVITE", "sip:a@b")
    assert verifier.verify(header, "INVITE", 101.0) == "ok"
    assert verifier.verify(header, "INVITE", 100.0 + 301) == "stale"
    wrong = challenge.authorization("alice", "wrong", "INVITE", "sip:a@b")
    assert verifier.verify(wrong, "INVITE", 101.0) == "bad"
    assert verifier.verify(None, "INVITE", 101.0) == "bad"
    assert verifier.verify("Digest nonce=\"forged.000\"", "INVITE", 101.0) == "bad"
    with pytest.raises(SipError):
        DigestChallenge.parse('Digest realm="x", nonce="y", algorithm=SHA-512')


def test_the_verifier_offers_sha256_beside_md5_and_refuses_a_replayed_answer() -> None:
    verifier = DigestVerifier("voice", "alice", "s3cret")
    offered = verifier.challenges(100.0)
    assert [DigestChallenge.parse(c).algorithm for c in offered] == ["MD5", "SHA-256"]
    challenge = DigestChallenge.best(offered)
    assert challenge.algorithm == "SHA-256"  # a client that knows both takes the stronger
    first = challenge.authorization("alice", "s3cret", "INVITE", "sip:a@b", nc=1)
    assert verifier.verify(first, "INVITE", 101.0) == "ok"
    assert verifier.verify(first, "INVITE", 102.0) == "bad"  # the same answer again
    second = challenge.authorization("alice", "s3cret", "INVITE", "sip:a@b", nc=2)
    assert verifier.verify(second, "INVITE", 103.0) == "ok"  # counting up is fine
    assert verifier.verify(first, "INVITE", 104.0) == "bad"  # counting down is not


def test_a_client_without_qop_answers_once_per_nonce() -> None:
    """RFC 2069 clients send no qop and no count: each nonce serves them once."""
    verifier = DigestVerifier("voice", "alice", "s3cret")
    challenge = DigestChallenge.parse(verifier.challenge(100.0).replace(', qop="auth"', ""))
    assert challenge.qop is None
    answer = challenge.authorization("alice", "s3cret", "INVITE", "sip:a@b")
    assert "nc=" not in answer
    assert verifier.verify(answer, "INVITE", 101.0) == "ok"
    assert verifier.verify(answer, "INVITE", 102.0) == "bad"  # replayed


@pytest.mark.parametrize("header", [
    'Digest username="alice", realm="voice", nonce="1².x", uri="sip:a@b", response="é"',
    'Digest username="alice", realm="voice", nonce="ab.cd", uri="sip:a@b", response="1"',
])
def test_hostile_authorization_headers_are_bad_not_errors(header: str) -> None:
    assert DigestVerifier("voice", "alice", "s3cret").verify(header, "INVITE", 1.0) == "bad"


def test_a_challenged_request_is_resent_with_credentials() -> None:
    register = request("REGISTER")
    challenge = response_to(register, 401, headers=(
        ("WWW-Authenticate", 'Digest realm="pbx", nonce="n1", opaque="o", qop="auth,auth-int"'),))
    from transports.sip.uac import Credentials

    again = with_credentials(register, challenge, Credentials("bob", "pw"))
    assert again.cseq.number == 2 and again.vias[0].branch != register.vias[0].branch
    authorization = again.headers.get("Authorization") or ""
    assert 'username="bob"' in authorization and 'opaque="o"' in authorization


def test_registration_refresh_timing() -> None:
    assert refresh_after(3600) == 2880 and refresh_after(20) == 15 and refresh_after(3) == 1
    contact = SipUri(host="127.0.0.1", user="bob", port=5070)
    ok = response_to(request("REGISTER"), 200, headers=(
        ("Contact", "<sip:bob@127.0.0.1:5070>;expires=120"), ("Expires", "600")))
    assert granted_expires(ok, contact, 300) == 120
    assert granted_expires(response_to(request("REGISTER"), 200), contact, 300) == 300
