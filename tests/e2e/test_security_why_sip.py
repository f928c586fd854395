"""Issue #18's "Why", against the real service: the SIP bridge's items, and /rtc's TURN
credentials, on the service as an operator would run it (keys, a TURN server, a SIP
allow-list). Each test names the old behaviour it would catch. The routes and the LLM's
broken output: test_security_why."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import websockets

import tests.e2e.conftest as e2e
from clients.audiofile import load_audio
from clients.sip_client import SipPhone
from latency_tests.llm_server import LLMServer
from tests.conftest import word_recall
from tests.e2e.test_security_why import error_lines, get, ws_url
from tests.integration.test_sip_bridge import SDP, free_udp_port, invite
from wire.rtp import g711
from wire.rtp.dtmf import event_payloads
from wire.rtp.packet import RtpPacket
from wire.sip.message import SipResponse, parse_message

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]


KEY = "why-key-0123456789"
TURN_PASSWORD = "turn-password-never-for-strangers"
BLOCKED_HOST = "127.0.0.2"  # loopback too, but outside --sip-allow


@pytest.fixture(scope="module")
def guarded(llm: LLMServer, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[e2e.RunningService, int]]:
    """Keys, a TURN server with credentials, and a SIP bridge that only 127.0.0.1 may
    use: the service as an operator would run it."""
    port = free_udp_port()
    running = e2e.start_service(tmp_path_factory.mktemp("why-guarded"), {
        "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "test-key-123",
        "VOICE_API_KEYS": KEY, "VOICE_RTC_TURN_SERVER": "turn:127.0.0.1:3478",
        "VOICE_RTC_TURN_USERNAME": "operator", "VOICE_RTC_TURN_PASSWORD": TURN_PASSWORD,
        "VOICE_SIP_PORT": str(port), "VOICE_SIP_ALLOW": "127.0.0.1/32",
        "VOICE_SIP_RTP_TIMEOUT_S": "30", "VOICE_IDLE_TIMEOUT_S": "30"}, name="why-guarded")
    yield running, port
    e2e.stop_service(running)


class Catcher(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.responses: list[SipResponse] = []
        self.final = asyncio.Event()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        message = parse_message(data)
        assert isinstance(message, SipResponse)
        self.responses.append(message)
        if message.status >= 200:
            self.final.set()


async def exchange(sip_port: int, data: bytes, wait: float = 0.3) -> list[SipResponse]:
    """One raw datagram to the service's SIP port; the responses that come back within
    `wait` s (or at once after a final one)."""
    loop = asyncio.get_running_loop()
    transport, catcher = await loop.create_datagram_endpoint(
        Catcher, local_addr=("127.0.0.1", 0))
    try:
        port = transport.get_extra_info("sockname")[1]
        transport.sendto(data.replace(b"PORT", str(port).encode()), ("127.0.0.1", sip_port))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await catcher.final.wait()
    finally:
        transport.close()
    return catcher.responses


def options(call_id: str) -> bytes:
    return invite(method="OPTIONS", call_id=call_id)


def sdp_with(media: bytes) -> bytes:
    return SDP.replace(b"m=audio 40000 RTP/AVP 0\r\n", media)


HOSTILE_SDP = {  # what each got once: a dead bridge, every later INVITE only 100 Trying
    "ptime:inf": (SDP + b"a=ptime:inf\r\n", 200),  # no number: the default 20 ms
    "Unicode digit in the m-line's port": (sdp_with("m=audio 4²000 RTP/AVP 0\r\n".encode()),
                                           400),
    "Unicode digit as the format": (sdp_with("m=audio 40000 RTP/AVP ٣\r\n".encode()), 488),
    "Unicode digit in an rtpmap rate": (sdp_with(
        "m=audio 40000 RTP/AVP 96\r\na=rtpmap:96 PCMU/8000²\r\n".encode()), 488),
}


async def test_hostile_sdp_is_answered_and_leaves_the_worker_serving(
        guarded: tuple[e2e.RunningService, int]) -> None:
    """An INVITE whose SDP had `a=ptime:inf` or Unicode digits raised out of the answer
    path: every live call dropped with no BYE, later INVITEs got only 100 Trying, while
    OPTIONS and /readyz said healthy. Now: each gets its final status, the call in
    progress carries on, and the worker still answers everything."""
    service, sip_port = guarded
    async with SipPhone(f"127.0.0.1:{sip_port}") as live:
        streaming = asyncio.create_task(live.stream_silence(0.5 * len(HOSTILE_SDP) + 2))
        statuses = {}
        for i, (name, (body, _)) in enumerate(HOSTILE_SDP.items()):
            responses = await exchange(sip_port, invite(body=body, call_id=f"sdp-{i}"), 3.0)
            statuses[name] = [r.status for r in responses if r.status >= 200]
            probe = await exchange(sip_port, options(f"probe-{i}"))
            assert [r.status for r in probe] == [200], (name, probe)
        await streaming
        received = len(live.record.audio)
        await live.stream_silence(1.0)
        assert not live.closed and len(live.record.audio) > received  # media still flows
        async with SipPhone(f"127.0.0.1:{sip_port}", events=False) as again:
            assert again.plan is not None  # a new call is answered
    assert statuses == {name: [status] for name, (_, status) in HOSTILE_SDP.items()}
    status, ready = await asyncio.to_thread(get, f"{service.url}/readyz")
    assert status == 200 and ready["ready"] is True, ready
    assert error_lines(service.log()) == []


async def test_a_blocked_address_gets_nothing_and_leaves_nothing(
        guarded: tuple[e2e.RunningService, int]) -> None:
    """The allow-list was checked after parsing: a blocked address got `400 missing
    CSeq`, each of its datagrams made a transaction that never expired, and a
    Unicode-digit Content-Length wrote an ERROR traceback."""
    service, sip_port = guarded
    before = await asyncio.to_thread(service.health)
    unicode_length = options("u-len").replace(b"Content-Length: ", "Content-Length: ²".encode())
    no_cseq = options("no-cseq").replace(b"CSeq: 1 OPTIONS\r\n", b"")
    loop = asyncio.get_running_loop()
    transport, catcher = await loop.create_datagram_endpoint(
        Catcher, local_addr=(BLOCKED_HOST, 0))
    try:
        for i in range(300):
            data = (no_cseq, unicode_length, options(f"blocked-{i}"))[i % 3]
            transport.sendto(data.replace(b"PORT", b"9"), ("127.0.0.1", sip_port))
            if i % 50 == 49:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
    finally:
        transport.close()
    after = await asyncio.to_thread(service.health)
    assert catcher.responses == []
    assert 297 <= after["sip_blocked"] - before["sip_blocked"] <= 300  # loopback may drop one
    assert after["sip_transactions"] <= before["sip_transactions"]
    # from an allowed address: the missing CSeq is answered, the Unicode length dropped
    assert [r.status for r in await exchange(sip_port, no_cseq)] == [400]
    assert await exchange(sip_port, unicode_length) == []
    assert [r.status for r in await exchange(sip_port, options("after"))] == [200]
    assert error_lines(service.log()) == []


def spoofed_udp(source_port: int, target_port: int, payload: bytes) -> None:
    """A UDP datagram to 127.0.0.1:`target_port` that claims to come from 127.0.0.1:
    `source_port` (a raw socket writes the UDP header; a zero checksum means none)."""
    header = struct.pack("!HHHH", source_port, target_port, 8 + len(payload), 0)
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP) as raw:
        raw.sendto(header + payload, ("127.0.0.1", target_port))


async def test_keypad_events_count_only_from_the_callers_own_stream(
        guarded: tuple[e2e.RunningService, int]) -> None:
    """Keypad events were taken from any port and SSRC of the caller's host: a "0"
    hung up on the real caller. test_sip_hostile sends it from another port; here it
    comes from the caller's very address and port (a spoofed source), under another
    SSRC, while the caller's own audio stream is running."""
    _, sip_port = guarded
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP).close()
    except PermissionError:
        pytest.skip("a spoofed source needs a raw socket (CAP_NET_RAW)")
    async with SipPhone(f"127.0.0.1:{sip_port}") as phone:
        assert phone.call is not None and phone.plan is not None
        assert phone.plan.dtmf_payload_type is not None
        found = re.search(rb"m=audio (\d+)", phone.call.invite.body)
        assert found is not None
        phone_port = int(found[1])
        streaming = asyncio.create_task(phone.stream_silence(2.0))
        await asyncio.sleep(0.5)  # the call has latched on the phone's stream
        for i, (payload, marker) in enumerate(event_payloads("0")):
            packet = RtpPacket(phone.plan.dtmf_payload_type, 9000 + i, 80000, 0x5EED,
                               payload, marker=marker)
            spoofed_udp(phone_port, phone.plan.remote_port, packet.serialize())
            await asyncio.sleep(0.02)
        await streaming
        await phone.send_digit("5")  # the caller's own keys still count
        await phone.wait_for("dtmf.received", digit="5", timeout=5)
        assert not phone.closed
        assert [e["digit"] for e in phone.events_of("dtmf.received")] == ["5"]


async def test_speech_from_another_port_of_the_callers_host_is_not_heard(
        guarded: tuple[e2e.RunningService, int],
        utterances: dict[str, dict[str, str]]) -> None:
    """Media was accepted by source host only: once the caller's stream paused, another
    socket on its host could speak for it (test_sip_hostile injects silence only)."""
    _, sip_port = guarded
    speech = load_audio(utterances["joke"]["path"], 8000)
    async with SipPhone(f"127.0.0.1:{sip_port}") as phone:
        assert phone.plan is not None
        await phone.stream_silence(0.3)  # the call latches on the phone's port
        await asyncio.sleep(1.0)  # long enough for another SSRC to take over
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as intruder:
            intruder.bind(("127.0.0.1", 0))
            padded = np.concatenate([speech, np.zeros(8000 * 2, np.int16)])
            for n, start in enumerate(range(0, len(padded) - 159, 160)):
                payload = g711.encode(padded[start:start + 160], g711.PCMU)
                intruder.sendto(RtpPacket(0, n, n * 160, 0xBAD, payload).serialize(),
                                (phone.plan.remote_host, phone.plan.remote_port))
                await asyncio.sleep(0.02)
        assert phone.events_of("transcript.final") == []
        await phone.stream(load_audio(utterances["weather"]["path"], 8000))
        async with asyncio.timeout(15):
            while not phone.events_of("transcript.final"):
                await phone.stream_silence(0.1)
    (heard,) = phone.events_of("transcript.final")
    assert word_recall(utterances["weather"]["text"], heard["text"]) >= 0.7, heard
    assert "joke" not in heard["text"].lower()


async def test_rtc_hands_its_turn_credentials_only_to_callers_with_a_key(
        guarded: tuple[e2e.RunningService, int]) -> None:
    """/rtc sent its TURN username and password to anyone who opened it."""
    service, _ = guarded
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(ws_url(service, "/rtc"), open_timeout=5):
            pass
    assert refused.value.response.status_code == 401
    assert TURN_PASSWORD.encode() not in (refused.value.response.body or b"")
    async with websockets.connect(ws_url(service, "/rtc"), open_timeout=5,
                                  additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
        config = json.loads(await ws.recv())
    assert config["type"] == "config"
    assert TURN_PASSWORD in json.dumps(config["ice_servers"])  # the credentials a key buys
    assert TURN_PASSWORD not in service.log()


# --- the bridge's own task dies ------------------------------------------------------

PLANTED_BUG = '''
"""A bug planted by tests/e2e/test_security_why.py: the SIP transaction timers fail
once a request with Call-ID "plant-a-bug" is held, ending the bridge's own task."""
from wire.sip import transaction

_handle_timeout = transaction.TransactionLayer.handle_timeout


def handle_timeout(self, now):
    if any(t.request.call_id == "plant-a-bug" for t in self.servers.values()):
        raise RuntimeError("a planted bug")
    return _handle_timeout(self, now)


transaction.TransactionLayer.handle_timeout = handle_timeout
'''


@pytest.fixture
def buggy(llm: LLMServer, tmp_path: Path) -> Iterator[tuple[e2e.RunningService, int]]:
    """The real service with one planted bug in its SIP bridge (a `sitecustomize`)."""
    plant = tmp_path / "plant"
    plant.mkdir()
    (plant / "sitecustomize.py").write_text(PLANTED_BUG)
    repo = Path(__file__).resolve().parents[2]
    port = free_udp_port()
    running = e2e.start_service(tmp_path, {
        "OPENAI_BASE_URL": llm.base_url, "VOICE_SIP_PORT": str(port),
        "PYTHONPATH": f"{plant}:{repo}"}, name="why-buggy")
    yield running, port
    e2e.stop_service(running)


async def test_a_dead_bridge_task_fails_readiness_health_and_options_and_says_so_once(
        buggy: tuple[e2e.RunningService, int]) -> None:
    """When the bridge's task group died, OPTIONS, /healthz and /readyz kept saying
    healthy and nothing was logged: Kamailio kept routing calls to a dead worker."""
    service, sip_port = buggy
    assert [r.status for r in await exchange(sip_port, options("before"))] == [200]
    assert (await asyncio.to_thread(get, f"{service.url}/readyz"))[0] == 200
    await exchange(sip_port, options("plant-a-bug"))  # sets the bug off
    deadline = time.monotonic() + 1.0
    probes: list[int] = []
    attempts: list[list[int]] = []
    ready: tuple[int, dict[str, Any]] = (0, {})
    while time.monotonic() < deadline:  # each probe a new transaction
        probes = [r.status for r in
                  await exchange(sip_port, options(f"probe-{len(attempts)}"), wait=0.1)]
        attempts.append(probes)
        ready = await asyncio.to_thread(get, f"{service.url}/readyz")
        if probes == [503] and ready[0] == 503:
            break
    assert probes == [503] and ready[0] == 503, (probes, ready)
    assert "SIP bridge task failed" in str(ready[1]["reason"])
    health = await asyncio.to_thread(get, f"{service.url}/healthz")
    assert health[1]["status"] == "degraded" and "SIP bridge task failed" in str(
        health[1]["sip_failure"])
    for i in range(3):  # more probes, more INVITEs: still one ERROR in the log
        assert [r.status for r in await exchange(sip_port, options(f"later-{i}"))] == [503]
        invited = await exchange(sip_port, invite(body=SDP, call_id=f"call-{i}"), 1.0)
        assert [r.status for r in invited if r.status >= 200] == [503]
    await asyncio.sleep(0.2)
    errors = [line for line in service.log().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "answering 503" in errors[0], errors
    assert "RuntimeError: a planted bug" in service.log()
