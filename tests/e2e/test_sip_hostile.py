"""A hostile SIP client beside a live call, against the real service: malformed
INVITEs (broken SIP, hostile SDP numbers), foreign RTP and keypad events injected into
the call from another port, and 10,000 datagrams from an address outside
`--sip-allow`. The call keeps its media (at least 45 RTP packets a second reach the
phone), is understood and answered and is not hung up; the next good INVITE gets 200;
the blocked address gets no answer and leaves no transaction; nothing is logged as
an error."""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

import tests.e2e.conftest as e2e
from clients.audiofile import load_audio
from clients.sip_client import SipPhone
from latency_tests.llm_server import LLMServer
from pipelines.providers.stt import WhisperSTT
from tests.conftest import word_recall
from tests.integration.test_sip_bridge import HOSTILE, SDP, invite
from wire.rtp.packet import RtpPacket

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

BLOCKED_HOST = "127.0.0.2"  # loopback too, but outside --sip-allow
FLOOD = 10_000
FORGED = "2026-01-01 00:00:00,000 ERROR   forged.by.the.caller [-]: a fake line"
HOSTILE_SDP = [SDP + b"a=ptime:inf\r\n", SDP.replace(b"40000", "4²000".encode()),
               SDP.replace(b"RTP/AVP 0", "RTP/AVP ٣".encode()),
               SDP + b"a=rtpmap:0 PCMU/1e999\r\n", SDP + b"a=ptime:99999999999999999999\r\n"]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def sip(llm: LLMServer, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[tuple[e2e.RunningService, int]]:
    port = free_udp_port()
    running = e2e.start_service(tmp_path_factory.mktemp("sip-hostile"), {
        "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "test-key-123",
        "VOICE_SIP_PORT": str(port), "VOICE_SIP_ALLOW": "127.0.0.1/32",
        "VOICE_MAX_SESSIONS": "8"},  # the hostile client's odd but valid INVITEs get calls
        name="sip-hostile")
    yield running, port
    e2e.stop_service(running)


class Counter(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answers: list[bytes] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.answers.append(data)


def dtmf_zero(ssrc: int, sequence: int) -> bytes:
    """An RFC 4733 "0" (event 0, end bit, volume 10) on payload type 101."""
    packet = RtpPacket(101, sequence, 8000 + sequence * 160, ssrc, bytes([0, 0x80 | 10, 3, 0xC0]))
    return packet.serialize()


async def test_a_live_call_survives_a_hostile_sip_client(
        sip: tuple[e2e.RunningService, int], fresh_llm: LLMServer, whisper: WhisperSTT,
        utterances: dict[str, dict[str, str]]) -> None:
    service, port = sip
    target = ("127.0.0.1", port)
    reply = "The weather is fine."
    fresh_llm.behaviour.reply = reply
    loop = asyncio.get_running_loop()
    blocked, blocked_counter = await loop.create_datagram_endpoint(
        Counter, local_addr=(BLOCKED_HOST, 0))
    hostile, _ = await loop.create_datagram_endpoint(Counter, local_addr=("127.0.0.1", 0))
    injector, _ = await loop.create_datagram_endpoint(Counter, local_addr=("127.0.0.1", 0))
    junk = [*HOSTILE, *[invite(body=body, call_id=f"sdp{i}") for i, body in
                        enumerate(HOSTILE_SDP)],
            invite(body=HOSTILE_SDP[0], call_id="cr-call").replace(  # once a forged log line
                b"Call-ID: cr-call", b"Call-ID: cr\r" + FORGED.encode())]
    small = [data for data in junk if len(data) <= 1500]  # a flood of big ones would
    # overflow the kernel's receive buffer, which drops them before anyone reads them
    sent_blocked = 0

    async def attack(rtp_to: tuple[str, int]) -> None:
        """The flood in steps of 100 datagrams, about 2,000 a second, with a round of
        malformed INVITEs and injected RTP every tenth step."""
        nonlocal sent_blocked
        for step in range(FLOOD // 100):
            for i in range(100):
                data = small[(step * 100 + i) % len(small)]
                blocked.sendto(data.replace(b"PORT", b"9"), target)
                sent_blocked += 1
            if step % 10 == 0:
                for data in junk:
                    hostile.sendto(data.replace(b"PORT", b"9"), target)
                for n in range(5):  # another socket on the caller's host speaks for it
                    sequence = step * 5 + n
                    injector.sendto(dtmf_zero(0x5EED, sequence), rtp_to)
                    injector.sendto(RtpPacket(0, sequence, 0, 0x5EED, b"\xff" * 160)
                                    .serialize(), rtp_to)
            await asyncio.sleep(0.05)

    try:
        async with SipPhone(f"127.0.0.1:{port}") as phone:
            assert phone.plan is not None
            await phone.stream_silence(0.3)
            began = time.monotonic()  # the phone stamps arrivals on this clock
            attacking = asyncio.create_task(
                attack((phone.plan.remote_host, phone.plan.remote_port)))
            await phone.stream(load_audio(utterances["weather"]["path"], 8000))
            async with asyncio.timeout(20):
                while not phone.events_of("response.done") or not attacking.done():
                    await phone.stream_silence(0.1)
            ended = time.monotonic()
            await attacking
            assert not phone.closed  # the injected "0" did not hang up on the caller
            arrivals = [chunk.arrival_ns / 1e9 for chunk in phone.record.audio]
        async with SipPhone(f"127.0.0.1:{port}", events=False) as again:
            assert again.plan is not None  # the next good INVITE got 200
        await asyncio.sleep(0.5)
    finally:
        for transport in (blocked, hostile, injector):
            transport.close()
    # media kept flowing: every whole second of the attack brought the phone >= 45 packets
    per_second = collections.Counter(int(t - began) for t in arrivals
                                     if 0 <= t - began < int(ended - began))
    assert per_second and min(per_second.values()) >= 45, sorted(per_second.items())
    print(f"RTP packets a second at the phone during the attack: {sorted(per_second.values())}")
    (transcript,) = phone.events_of("transcript.final")
    assert word_recall(utterances["weather"]["text"], transcript["text"]) >= 0.7
    heard = e2e.transcribe_back(whisper, phone.reply_audio(), 8000)
    assert word_recall(reply, heard) >= 0.7, heard
    assert sent_blocked == FLOOD and blocked_counter.answers == []
    health = _health(service)
    assert health["sip_blocked"] >= FLOOD * 0.99  # (loopback UDP may drop a few)
    assert health["sip_transactions"] < 100  # the flood stored none
    log = service.log()
    assert " ERROR " not in log.replace(FORGED, "") and "Traceback" not in log, log[-3000:]
    e2e.assert_one_event_per_line(log, FORGED)


def _health(service: e2e.RunningService) -> dict[str, Any]:
    with urllib.request.urlopen(f"{service.url}/healthz", timeout=5) as response:
        data: dict[str, Any] = json.load(response)
    return data
