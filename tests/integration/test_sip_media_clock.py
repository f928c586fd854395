"""The media clock thread against a real UDP receiver over loopback: continuous RTP
numbering, reply audio from a `SharedPlayout`, barge-in, hold and resume, removal,
keypad digits pressed in the middle of a reply.
`RtpOut.tick` is also driven by hand, with chosen lateness, for the stall rules."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import cast

import numpy as np
import pytest

from transports.sip.media_clock import MediaClock, RtpOut, SharedPlayout
from voice.clock import MONOTONIC
from voice.errors import ProtocolError
from wire.rtp import g711
from wire.rtp.dtmf import DtmfEvent, DtmfReceiver
from wire.rtp.packet import RtpPacket
from wire.rtp.plan import MediaPlan

pytestmark = pytest.mark.integration
ASYNC = pytest.mark.asyncio(loop_scope="session")
LOUD = np.full(8000, 6000, np.int16).astype("<i2").tobytes()  # one second
PERIOD_NS = 20_000_000


class Receiver(asyncio.DatagramProtocol):
    """A UDP socket that keeps every RTP packet sent to it, in arrival order."""

    def __init__(self) -> None:
        self.packets: list[RtpPacket] = []
        self.arrived = asyncio.Event()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.packets.append(RtpPacket.parse(data))
        self.arrived.set()

    def error_received(self, exc: Exception) -> None:
        raise AssertionError(exc)

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    async def wait_packets(self, count: int, timeout: float = 5.0) -> list[RtpPacket]:
        async with asyncio.timeout(timeout):
            while len(self.packets) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.packets


def loud(packet: RtpPacket) -> bool:
    return bool(np.abs(g711.decode(packet.payload, g711.PCMU)).min() > 5000)


@asynccontextmanager
async def sending(dtmf_payload_type: int | None = None
                  ) -> AsyncIterator[tuple[Receiver, RtpOut, SharedPlayout, MediaClock]]:
    loop = asyncio.get_running_loop()
    receiver = Receiver()
    await loop.create_datagram_endpoint(lambda: receiver, local_addr=("127.0.0.1", 0))
    plan = MediaPlan(codec=g711.PCMU, payload_type=0, dtmf_payload_type=dtmf_payload_type,
                     remote_host="127.0.0.1", remote_port=receiver.port)
    playout = SharedPlayout(8000, MONOTONIC, 200, loop)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    out = RtpOut(sock, plan, playout.pull)
    clock = MediaClock()
    clock.add(out)
    try:
        yield receiver, out, playout, clock
    finally:
        clock.remove(out)
        out.close()
        await asyncio.to_thread(clock.close)
        assert receiver.transport is not None
        receiver.transport.close()


def assert_continuous(packets: list[RtpPacket]) -> None:
    for before, after in zip(packets, packets[1:], strict=False):
        assert after.sequence == (before.sequence + 1) & 0xFFFF
        assert after.timestamp == (before.timestamp + 160) & 0xFFFFFFFF
        assert after.ssrc == before.ssrc and not after.marker


@ASYNC
async def test_reply_audio_goes_out_numbered_continuously_then_silence() -> None:
    firsts: list[tuple[int, int]] = []
    async with sending() as (receiver, _, playout, _):
        playout.on_first_send = lambda now: firsts.append((now, threading.get_ident()))
        playout.enqueue(LOUD[:3200])  # 200 ms: ten packets
        packets = await receiver.wait_packets(30)
    assert packets[0].marker
    assert_continuous(packets)
    levels = [loud(p) for p in packets]
    start = levels.index(True)
    assert levels[start: start + 10] == [True] * 10 and not any(levels[start + 10:])
    assert len(firsts) == 1 and firsts[0][1] == threading.get_ident()  # run on the loop


@ASYNC
async def test_barge_in_sends_no_audio_queued_at_the_clear() -> None:
    async with sending() as (receiver, out, playout, _):
        playout.enqueue(LOUD)
        while sum(loud(p) for p in await receiver.wait_packets(len(receiver.packets) + 1)) < 5:
            pass
        playout.clear()  # what the pipeline does on barge-in
        taken = playout.sent_samples  # what the clock took before the clear: all it sends
        sent_at_clear = out.stats.packets
        await receiver.wait_packets(sent_at_clear + 10)
    loud_packets = [p for p in receiver.packets if loud(p)]
    assert len(loud_packets) * 160 == taken < 8000
    assert_continuous(receiver.packets)
    levels = [loud(p) for p in receiver.packets]
    assert levels.index(True) + len(loud_packets) == levels.index(False, levels.index(True))


@ASYNC
async def test_a_removed_call_sends_nothing_more_and_others_go_on() -> None:
    async with sending() as (receiver, out, _, clock):
        other = Receiver()
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: other, local_addr=("127.0.0.1", 0))
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        second = RtpOut(sock, replace(out.outbound.plan, remote_port=other.port), lambda: None)
        clock.add(second)
        await other.wait_packets(3)
        clock.remove(second)
        second.close()
        stopped = second.stats.packets
        count = len(receiver.packets)
        await receiver.wait_packets(count + 5)  # the first call's clock keeps ticking
        assert second.stats.packets == stopped and len(other.packets) == stopped
        assert sock.fileno() == -1
        assert other.transport is not None
        other.transport.close()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    receive = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receive.bind(("127.0.0.1", 0))
    receive.settimeout(1)
    send = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    yield send, receive
    receive.close()


def test_short_stalls_are_caught_up_and_long_ones_skipped(
        pair: tuple[socket.socket, socket.socket]) -> None:
    send, receive = pair
    plan = MediaPlan(0, 0, None, "127.0.0.1", receive.getsockname()[1])
    out = RtpOut(send, plan, lambda: None)
    out.due_ns = 1_000 * PERIOD_NS
    out.tick(out.due_ns)  # on time
    out.tick(1_003 * PERIOD_NS)  # 40 ms late: sent at once (the next is due already)
    assert out.due_ns == 1_002 * PERIOD_NS and out.stats.gaps == 1
    out.tick(1_012 * PERIOD_NS)  # 200 ms late: skip ahead to now
    packets = [RtpPacket.parse(receive.recv(2048)) for _ in range(3)]
    assert out.stats.packets == 3 and out.stats.gaps == 2 and out.stats.max_late_ms == 200
    assert out.due_ns == 1_013 * PERIOD_NS
    assert [p.sequence - packets[0].sequence for p in packets] == [0, 1, 2]
    assert [(p.timestamp - packets[0].timestamp) // 160 for p in packets] == [0, 1, 12]
    out.close()
    out.tick(out.due_ns)
    assert out.stats.packets == 3


def test_hold_sends_nothing_and_resume_continues_the_numbering(
        pair: tuple[socket.socket, socket.socket]) -> None:
    send, receive = pair
    plan = MediaPlan(0, 0, None, "127.0.0.1", receive.getsockname()[1])
    out = RtpOut(send, plan, lambda: None)
    ticks = iter(range(1_000, 2_000))

    def tick() -> None:
        out.tick(next(ticks) * PERIOD_NS)

    out.due_ns = 1_000 * PERIOD_NS
    tick()
    last = RtpPacket.parse(receive.recv(2048))
    out.update(replace(plan, direction="recvonly"))  # the caller put us on hold
    for _ in range(10):
        tick()
    assert out.stats.packets == 1
    out.update(plan)
    tick()
    resumed = RtpPacket.parse(receive.recv(2048))
    assert resumed.sequence == (last.sequence + 1) & 0xFFFF and not resumed.marker
    assert (resumed.timestamp - last.timestamp) & 0xFFFFFFFF == 11 * 160
    out.close()


@ASYNC
async def test_pressed_keys_go_out_as_rfc_4733_events_and_the_reply_audio_waits() -> None:
    async with sending(dtmf_payload_type=101) as (receiver, out, playout, _):
        playout.enqueue(LOUD[:3200])  # 200 ms: ten packets
        await receiver.wait_packets(len(receiver.packets) + 3)
        seconds = out.send_digits("1#")
        assert 0.2 < seconds < 0.6
        with pytest.raises(ProtocolError):
            out.send_digits("1x")  # nothing queued for a bad digit
        with pytest.raises(ProtocolError):
            out.send_digits("1" * 65)
        await asyncio.sleep(seconds)
        packets = list(await receiver.wait_packets(len(receiver.packets) + 12))
    events = [p for p in packets if p.payload_type == 101]
    audio = [p for p in packets if p.payload_type == 0]
    keys = DtmfReceiver()
    pressed = [d for p in events if (d := keys.receive(p.ssrc, p.timestamp, p.payload))]
    assert pressed == ["1", "#"]  # each key once, in order
    assert sum(loud(p) for p in audio) == 10  # the reply waited for the keys, lost nothing
    for key in (events[:7], events[7:]):  # 4 updates and 3 end packets per key
        assert len(key) == 7 and key[0].marker and not any(p.marker for p in key[1:])
        assert {p.timestamp for p in key} == {key[0].timestamp}
        ends = [DtmfEvent.parse(p.payload) for p in key[4:]]
        assert all(e.end and e.duration == 800 for e in ends)
    # one numbering for both kinds, and the audio clock ran on while the keys sounded
    assert all(b.sequence == (a.sequence + 1) & 0xFFFF
               for a, b in zip(packets, packets[1:], strict=False))
    first = packets.index(events[0])
    before, after = packets[first - 1], next(p for p in packets[first:] if p.payload_type == 0)
    ticks = packets.index(after) - (first - 1)
    assert after.timestamp == (before.timestamp + 160 * ticks) & 0xFFFFFFFF
    assert events[0].timestamp == (before.timestamp + 160) & 0xFFFFFFFF


@ASYNC
async def test_no_keys_for_a_phone_without_telephone_event() -> None:
    async with sending() as (_, out, _, _):
        with pytest.raises(ProtocolError) as refused:
            out.send_digits("1")
    assert refused.value.code == "dtmf_unsupported"
