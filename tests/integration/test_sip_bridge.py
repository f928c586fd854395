"""The SIP bridge against real SIP programs over loopback (sipp; the Python phone for
what sipp cannot check), with a recording stub in place of the speech pipeline: call
setup and teardown, CANCEL, OPTIONS, hold, rejections, limits, authentication,
registration, RTP timeout and hostile input. No speech models are loaded here."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from clients.sip_client import SipPhone
from tests.sip.sipp import SIPP, g711_wav, run_sipp, scenario
from transports.sip.bridge import SipBridge
from voice.admission import Admission
from voice.audio import Int16Array
from voice.clock import MONOTONIC
from voice.errors import ProtocolError, SipError
from voice.session import PipelineFactory, Session
from voice.settings import Settings
from wire.rtp.dtmf import event_payloads
from wire.rtp.packet import RtpPacket
from wire.sip.message import SipResponse, parse_message

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session"),
              pytest.mark.skipif(SIPP is None, reason="sipp (sip-tester) is not installed")]


class StubPipeline:
    """Records what the caller sent; the keypad's 0 hangs up, 9 speaks a tone."""

    name = "stub"

    def __init__(self, session: Session) -> None:
        self.session = session
        self.samples = 0
        self.digits: list[str] = []

    def push_audio(self, samples: Int16Array, arrival_ns: int) -> None:
        self.samples += len(samples)

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def interrupt(self, reason: str) -> None:
        self.session.playout.clear()

    async def announce(self, text: str) -> None:
        tone = (6000 * np.sin(np.arange(8000) * 2 * np.pi * 440 / 8000)).astype("<i2")
        self.session.playout.enqueue(tone.tobytes())

    async def handle_dtmf(self, digit: str) -> None:
        self.digits.append(digit)
        if digit == "9":
            await self.announce("tone")
        if digit == "0":
            await self.session.hangup("caller pressed 0")


class Stubs:
    def __init__(self) -> None:
        self.made: list[StubPipeline] = []

    def lookup(self, name: str | None) -> tuple[str, PipelineFactory]:
        if name not in (None, "stub"):
            raise ProtocolError(f"unknown pipeline {name!r}", code="invalid_pipeline")

        def build(session: Session) -> StubPipeline:
            self.made.append(StubPipeline(session))
            return self.made[-1]

        return "stub", build


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def running_bridge(admission: Admission | None = None,
                         **overrides: object) -> AsyncIterator[tuple[SipBridge, Stubs]]:
    values: dict[str, object] = {"sip_rtp_timeout_s": 30.0, **overrides}
    settings = replace(Settings(), **values)  # type: ignore[arg-type]
    stubs = Stubs()
    bridge = SipBridge(settings, stubs.lookup, MONOTONIC, admission)
    await bridge.start(port=0)
    try:
        yield bridge, stubs
    finally:
        await bridge.stop()


def target(bridge: SipBridge) -> str:
    return f"127.0.0.1:{bridge.endpoint.local_address[1]}"


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


async def exchange(bridge: SipBridge, data: bytes, wait: float = 0.5) -> list[SipResponse]:
    """Send one raw datagram to the bridge; the responses that come back in `wait` s."""
    loop = asyncio.get_running_loop()
    responses: list[SipResponse] = []

    class Catcher(asyncio.DatagramProtocol):
        def datagram_received(self, payload: bytes, addr: object) -> None:
            message = parse_message(payload)
            assert isinstance(message, SipResponse)
            responses.append(message)

    transport, _ = await loop.create_datagram_endpoint(Catcher, local_addr=("127.0.0.1", 0))
    try:
        port = transport.get_extra_info("sockname")[1]
        transport.sendto(data.replace(b"PORT", str(port).encode()),
                         ("127.0.0.1", bridge.endpoint.local_address[1]))
        await asyncio.sleep(wait)
    finally:
        transport.close()
    return responses


def invite(content_type: str = "application/sdp", body: bytes = b"", method: str = "INVITE",
           extra: str = "", call_id: str = "raw-1") -> bytes:
    head = (f"{method} sip:assistant@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:PORT;branch=z9hG4bK{call_id}\r\n"
            f"From: <sip:t@127.0.0.1>;tag=a\r\nTo: <sip:assistant@127.0.0.1>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 {method}\r\nContact: <sip:t@127.0.0.1:PORT>\r\n"
            f"Max-Forwards: 70\r\nContent-Type: {content_type}\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


SDP = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
       b"m=audio 40000 RTP/AVP 0\r\n")


# --- signalling with sipp ------------------------------------------------------------

async def test_options_gets_200_with_allow(folder: Path) -> None:
    async with running_bridge() as (bridge, _):
        result = await run_sipp(scenario("options", folder), target(bridge), folder, timeout=10)
    assert result.ok, result.errors


async def test_cancel_before_answer_gets_487(folder: Path) -> None:
    async with running_bridge(sip_ring_ms=3000) as (bridge, stubs):
        result = await run_sipp(scenario("cancel", folder), target(bridge), folder, timeout=10)
        assert result.ok, result.errors
        assert bridge.calls == {} and stubs.made == []


async def test_hold_and_resume_by_reinvite(folder: Path) -> None:
    async with running_bridge() as (bridge, stubs):
        result = await run_sipp(scenario("hold", folder), target(bridge), folder, timeout=15)
        assert result.ok, result.errors
        assert len(stubs.made) == 1


async def test_inbound_digest_authentication(folder: Path) -> None:
    async with running_bridge(sip_inbound_user="trunk", sip_inbound_password="s3cret") as (
            bridge, stubs):
        good = await run_sipp(scenario("auth_invite", folder), target(bridge), folder,
                              timeout=10, extra=("-au", "trunk", "-ap", "s3cret"))
        assert good.ok, good.errors
        bad = await run_sipp(scenario("auth_invite", folder), target(bridge), folder,
                             timeout=5, extra=("-au", "trunk", "-ap", "wrong"))
        assert not bad.ok
        assert len(stubs.made) == 1  # only the authenticated call reached a pipeline


async def test_register_with_digest_and_refresh(folder: Path) -> None:
    port = free_udp_port()
    registrar = scenario("registrar", folder, user="assistant", password="pw123", expires=2,
                         refresh_timeout_ms=5000)
    sipp = asyncio.create_task(run_sipp(registrar, None, folder, timeout=15,
                                        extra=("-p", str(port))))
    await asyncio.sleep(0.5)  # let sipp bind its port
    async with running_bridge(sip_register=f"sip:127.0.0.1:{port}", sip_user="assistant",
                              sip_password="pw123") as (bridge, _):
        result = await sipp
        assert bridge.registration is not None and bridge.registration.refreshes >= 1
    assert result.ok, result.errors + result.output


@pytest.mark.parametrize("encoding", ["PCMU", "PCMA"])
async def test_sipp_audio_and_pcap_digits_reach_the_pipeline(folder: Path, encoding: str,
                                                              utterances: dict[str, dict[str, str]]
                                                              ) -> None:
    """sipp sends its audio from its media port and the RFC 4733 pcap from another."""
    wav = g711_wav(utterances["weather"]["path"], folder / "caller.wav", encoding)
    path = scenario("uac_speak", folder, payload_type=0 if encoding == "PCMU" else 8,
                    encoding=encoding, wav=wav, speak_ms=3000, digit=7, listen_ms=800)
    async with running_bridge() as (bridge, stubs):
        result = await run_sipp(path, target(bridge), folder, timeout=20)
    assert result.ok, result.errors
    (pipeline,) = stubs.made
    assert pipeline.digits == ["7"]
    assert pipeline.samples >= 8000 * 2.5  # the whole prompt, and silence after it


# --- rejections and limits (raw datagrams: they are about the bytes on the wire) --------

@pytest.mark.parametrize("data, status", [
    (invite("text/plain", b"hello"), 415),
    (invite(body=b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            b"m=audio 4000 RTP/AVP 18\r\n"), 488),
    (invite(method="SUBSCRIBE", call_id="raw-2"), 501),
    (invite(method="PRACK", call_id="raw-3"), 501),
    (invite(body=SDP, extra="Require: 100rel\r\n", call_id="raw-4"), 420),
    (invite(body=SDP, call_id="raw-5").replace(b"CSeq: 1 INVITE", b"CSeq: x"), 400),
    (invite(method="BYE", call_id="raw-6"), 481),
])
async def test_requests_it_cannot_serve_get_the_right_status(data: bytes, status: int) -> None:
    async with running_bridge() as (bridge, _):
        responses = await exchange(bridge, data)
    finals = [r.status for r in responses if r.status >= 200]
    assert finals and set(finals) == {status}, [r.status for r in responses]


async def test_sources_outside_the_allow_list_are_ignored() -> None:
    async with running_bridge(sip_allow="10.0.0.0/8") as (bridge, _):
        assert await exchange(bridge, invite(method="OPTIONS")) == []


async def test_a_flood_from_a_blocked_address_is_never_read(
        caplog: pytest.LogCaptureFixture) -> None:
    """10,000 datagrams from outside the allow-list (requests, garbage, Unicode digits)
    get no response, leave no transaction and log no error: they are dropped before
    any parsing."""
    flood = [invite(method="OPTIONS", call_id=f"f{i}") for i in range(4)] + [
        invite(body=SDP, call_id="f-invite"), b"\xff" * 200, b"INVITE",
        invite(call_id="f-len").replace(b"Content-Length: 0", "Content-Length: ²".encode())]
    async with running_bridge(sip_allow="10.0.0.0/8") as (bridge, _):
        loop = asyncio.get_running_loop()
        answers: list[bytes] = []

        class Catcher(asyncio.DatagramProtocol):
            def datagram_received(self, payload: bytes, addr: object) -> None:
                answers.append(payload)

        transport, _ = await loop.create_datagram_endpoint(Catcher,
                                                           local_addr=("127.0.0.1", 0))
        try:
            port = str(transport.get_extra_info("sockname")[1]).encode()
            for i in range(10_000):
                transport.sendto(flood[i % len(flood)].replace(b"PORT", port),
                                 ("127.0.0.1", bridge.endpoint.local_address[1]))
                await asyncio.sleep(0)  # the bridge reads one datagram a loop turn
            await asyncio.sleep(0.5)
        finally:
            transport.close()
        stats = bridge.endpoint.stats
        assert answers == [] and bridge.endpoint.layer.servers == {}
        assert stats.blocked == stats.received >= 9_900  # (loopback UDP may drop a few)
        assert stats.malformed == stats.failed == 0
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


@pytest.mark.parametrize("per_address, status", [(0, 503), (1, 486)])
async def test_calls_count_among_the_workers_sessions(per_address: int, status: int) -> None:
    """A call takes its place among all the worker's sessions: at capacity the INVITE
    gets 503 with Retry-After (a dispatcher tries another worker), over the caller
    address's own limit 486; the place is given back when the call ends."""
    admission = Admission(max_sessions=2 if per_address else 1, per_address=per_address)
    async with running_bridge(admission) as (bridge, _):
        async with SipPhone(target(bridge), events=False):
            assert admission.open == 1
            with pytest.raises(SipError) as caught:
                async with SipPhone(target(bridge), events=False):
                    pass
            assert caught.value.status == status
        for _ in range(50):
            if admission.open == 0:
                break
            await asyncio.sleep(0.05)
        assert admission.open == 0
        async with SipPhone(target(bridge), events=False):
            pass


async def test_calls_beyond_the_limit_get_486() -> None:
    async with running_bridge(sip_max_calls=1) as (bridge, _):
        async with SipPhone(target(bridge), events=False):
            with pytest.raises(SipError) as caught:
                async with SipPhone(target(bridge), events=False):
                    pass
    assert caught.value.status == 486


# --- media and teardown --------------------------------------------------------------------

async def test_digits_from_the_phone_and_bye_from_the_bridge() -> None:
    async with running_bridge() as (bridge, stubs):
        phone = SipPhone(target(bridge), codec="PCMA")
        await phone.connect()
        await phone.stream_silence(0.4)
        await phone.send_digit("9")  # the stub answers with a tone
        await phone.stream_silence(1.4)
        await phone.send_digit("0")  # ... and hangs up on 0
        await phone.wait_closed(5)
        await phone.close()
    (pipeline,) = stubs.made
    assert pipeline.digits == ["9", "0"] and pipeline.samples >= 8000 * 1.5
    assert [e["digit"] for e in phone.events_of("dtmf.received")] == ["9", "0"]
    assert phone.close_code == 1000  # BYE came from the bridge
    heard = phone.reply_audio()
    assert np.abs(heard).max() > 3000  # the tone reached the phone
    stats = phone.rtp_stats
    assert stats.packets > 50 and stats.lost == stats.reordered == 0


async def test_a_caller_that_vanishes_is_hung_up_on_rtp_timeout() -> None:
    async with running_bridge(sip_rtp_timeout_s=1.0) as (bridge, _):
        phone = SipPhone(target(bridge), events=False)
        await phone.connect()  # and then sends no RTP at all
        await phone.wait_closed(8)
        assert phone.close_code == 1000
        for _ in range(50):
            if not bridge.calls:
                break
            await asyncio.sleep(0.05)
        assert bridge.calls == {}
        await phone.close()


HOSTILE = [
    b"\x00" * 100, b"\xff" * 3000, b"INVITE", b"INVITE sip:x SIP/2.0\r\n\r\n",
    b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKnope\r\nCSeq: 1 INVITE\r\n"
    b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: ghost\r\n\r\n",
    invite(body=b"v=0\r\n" + b"a=x\r\n" * 4000, call_id="huge"),  # oversized datagram
    invite(body=b"\xc3\x28 not sdp", call_id="h1"),
    invite(body=SDP, call_id="h2").replace(b"Via: SIP/2.0/UDP 127.0.0.1:PORT", b"Via: garbage"),
    invite(body=SDP, call_id="h3").replace(b"Content-Length: ", b"Content-Length: 9"),
    invite(body=SDP, call_id="h4").replace(b"From: <sip:t@127.0.0.1>;tag=a", b"From: <sip:"),
    invite(body=SDP, call_id="h5").replace(b"sip:assistant@127.0.0.1 SIP", b"http://x SIP"),
    invite(method="ACK", call_id="h6"), invite(method="CANCEL", call_id="h7"),
    b"\r\n\r\n", b"OPTIONS sip:a@b SIP/2.0\r\n" + b"X-A: b\r\n" * 500 + b"\r\n",
]


async def test_hostile_datagrams_do_not_disturb_a_call_in_progress() -> None:
    async with running_bridge() as (bridge, stubs):
        phone = SipPhone(target(bridge))
        await phone.connect()
        streaming = asyncio.create_task(phone.stream_silence(1.5))
        for data in HOSTILE * 3:
            await exchange(bridge, data, wait=0.01)
        await streaming
        await phone.send_digit("5")
        await phone.wait_for("dtmf.received", digit="5", timeout=5)
        options = await exchange(bridge, invite(method="OPTIONS", call_id="after"))
        await phone.close()
    assert [r.status for r in options] == [200]
    assert bridge.endpoint.stats.oversized >= 3 and bridge.endpoint.stats.malformed >= 10
    assert stubs.made[0].digits == ["5"]
    assert phone.rtp_stats.lost == phone.rtp_stats.reordered == 0


def sdp_with(media: bytes) -> bytes:
    return b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n" + media


async def test_hostile_sdp_and_unicode_digits_do_not_kill_the_bridge(
        caplog: pytest.LogCaptureFixture) -> None:
    """An INVITE whose SDP says `a=ptime:inf` or writes numbers in Unicode digits used to
    raise out of the answer path and take down the bridge's task group: every live call
    dropped, every later INVITE got only 100 Trying."""
    hostile = [
        (invite(body=sdp_with(b"m=audio 40000 RTP/AVP 0\r\na=ptime:inf\r\n"), call_id="p1"),
         {200}),  # a ptime that is no number: the default 20 ms
        (invite(body=sdp_with(b"m=audio \xc2\xb2000 RTP/AVP 0\r\n"), call_id="p2"), {400}),
        (invite(body=sdp_with(b"m=audio 40000 RTP/AVP \xc2\xb2\r\n"), call_id="p3"), {488}),
        (invite(body=sdp_with(b"m=audio 40000 RTP/AVP 96\r\n"
                              b"a=rtpmap:96 PCMU/8000\xc2\xb2\r\n"), call_id="p4"), {488}),
    ]
    async with running_bridge() as (bridge, stubs):
        phone = SipPhone(target(bridge))
        await phone.connect()
        streaming = asyncio.create_task(phone.stream_silence(1.5))
        answered = [await exchange(bridge, data, wait=0.3) for data, _ in hostile]
        unicode_length = invite(body=SDP, call_id="p5").replace(
            b"Content-Length: ", b"Content-Length: \xc2\xb2")
        assert await exchange(bridge, unicode_length, wait=0.2) == []  # dropped, unparseable
        await streaming
        await phone.send_digit("5")  # the call in progress carries on
        await phone.wait_for("dtmf.received", digit="5", timeout=5)
        async with SipPhone(target(bridge), events=False):  # and a new call is answered
            pass
        await phone.close()
        assert bridge.failure is None and bridge.endpoint.stats.failed == 0
    for (_, status), responses in zip(hostile, answered, strict=True):
        assert {r.status for r in responses if r.status >= 200} == status, responses
    assert stubs.made[0].digits == ["5"]
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_a_second_socket_on_the_callers_host_cannot_press_keys() -> None:
    """RTP and RFC 4733 events count only from the address and port the caller's media
    came from: another socket on the same host sending "0" used to hang up the call."""
    async with running_bridge() as (bridge, stubs):
        phone = SipPhone(target(bridge))
        await phone.connect()
        assert phone.plan is not None and phone.plan.dtmf_payload_type is not None
        streaming = asyncio.create_task(phone.stream_silence(1.2))
        await asyncio.sleep(0.3)  # the call's media has latched on the phone's port
        intruder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for i, (payload, marker) in enumerate(event_payloads("0")):
                packet = RtpPacket(phone.plan.dtmf_payload_type, 7000 + i, 80000, 0x1234,
                                   payload, marker=marker)
                intruder.sendto(packet.serialize(), (phone.plan.remote_host,
                                                     phone.plan.remote_port))
                await asyncio.sleep(0.02)
        finally:
            intruder.close()
        await streaming
        await phone.send_digit("5")  # the caller's own keys still work
        await phone.wait_for("dtmf.received", digit="5", timeout=5)
        (call,) = bridge.calls.values()
        foreign = call.media.inbound.stats.foreign
        await phone.close()
    assert stubs.made[0].digits == ["5"] and foreign >= 1


async def test_a_worker_without_headroom_answers_503() -> None:
    """The worker's headroom (its inference queues, voice/scheduler.py) refuses a call
    the way capacity does: 503 (with Retry-After), so a dispatcher tries another
    worker; once there is room again, calls are taken."""
    why: list[str | None] = ["tts would be 91% busy with one more session (limit 85%)"]
    admission = Admission(max_sessions=100, pressure=lambda: why[0])
    async with running_bridge(admission) as (bridge, _):
        phone = SipPhone(target(bridge), events=False)
        with pytest.raises(SipError) as caught:
            await phone.connect()
        assert caught.value.status == 503 and admission.open == 0
        why[0] = None
        async with SipPhone(target(bridge), events=False):
            assert admission.open == 1


async def test_a_bridge_whose_task_died_answers_503_and_says_so_once(
        caplog: pytest.LogCaptureFixture) -> None:
    """If a bridge task ever dies (a bug), the worker stops looking healthy at once:
    OPTIONS probes get 503 and /readyz fails, so Kamailio and HAProxy send calls
    elsewhere, and the error is logged once."""
    from service.health import readiness
    from voice.metrics import WorkerLoad

    async with running_bridge() as (bridge, _):
        probe = invite(method="OPTIONS", call_id="probe-1")
        assert [r.status for r in await exchange(bridge, probe)] == [200]

        async def bug() -> None:
            raise RuntimeError("a bug")

        assert bridge._tg is not None
        bridge._tg.create_task(bug())
        await asyncio.sleep(0.2)
        assert bridge.failure is not None
        probe = invite(method="OPTIONS", call_id="probe-2")
        assert [r.status for r in await exchange(bridge, probe)] == [503]
        ready, body = readiness(WorkerLoad(0, 10, False, 1.0), Admission(max_sessions=10),
                                bridge)
        assert not ready and "SIP bridge task failed" in str(body["reason"])
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "answering 503" in errors[0].getMessage()
