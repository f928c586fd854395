"""The cascade over WebRTC: the Python aiortc client against the real service, two real
aiortc peers over loopback (the service's `--rtc-allow-loopback`), real models."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import soundfile
import websockets

from clients.rtc_client import RtcClient, signalling_url
from latency_tests.llm_server import LLMServer
from pipelines.providers.stt import WhisperSTT
from tests.conftest import word_recall
from tests.e2e.conftest import (
    SERVICE_ENV,
    RunningService,
    call_record,
    converse,
    speak,
    start_service,
    stop_service,
    transcribe_back,
)
from transports.webrtc.peer import Peer
from voice.clock import MONOTONIC
from wire.rtc_signalling import SignalError, encode_offer, parse_server_signal

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

PEER_TIMEOUT_S = 3
STAGES = ("endpointing_ms", "stt_ms", "llm_ms", "tts_ms", "transport_ms", "voice_to_voice_ms")
LONG_REPLY = (
    "Here is a long story about a lighthouse keeper. Every evening he climbed the tower "
    "and lit the lamp for the ships at sea. One night a storm came in from the west and "
    "the waves rose higher than the rocks. He kept the light burning until the morning."
)


@pytest.fixture(scope="module")
def rtc_service(llm: LLMServer, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[RunningService]:
    folder = tmp_path_factory.mktemp("rtc")
    running = start_service(folder, {
        "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "test-key-123",
        "VOICE_RTC_ALLOW_LOOPBACK": "1", "VOICE_RTC_PEER_TIMEOUT_S": str(PEER_TIMEOUT_S),
        "VOICE_CALL_RECORDS_DIR": str(folder / "records")}, name="rtc")
    yield running
    stop_service(running)



async def wait_no_sessions(service: RunningService, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            if (await asyncio.to_thread(service.health))["sessions"] == 0:
                return
            await asyncio.sleep(0.2)


def webrtc_resources(pid: int) -> dict[str, int]:
    """What a WebRTC call holds in the service process: UDP sockets (ICE) and aiortc's
    decoder threads."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    udp = 0
    for table in ("udp", "udp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            udp += sum(line.split()[9] in inodes for line in list(f)[1:])
    threads = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/comm") as f:
            threads += f.read().strip().endswith("-decoder")
    return {"udp_sockets": udp, "decoder_threads": threads}


async def test_turn_over_webrtc_is_transcribed_answered_and_heard(
        rtc_service: RunningService, fresh_llm: LLMServer, whisper: WhisperSTT,
        utterances: dict[str, dict[str, str]]) -> None:
    reply = "It is sunny and warm in London today."
    fresh_llm.behaviour.reply = reply
    async with RtcClient(rtc_service.url, 16000) as client:
        assert client.session["sample_rate"] == 48000  # the pipeline gets Opus's rate
        done = await converse(client, utterances["weather"]["path"])

    (transcript,) = client.events_of("transcript.final")
    assert word_recall(utterances["weather"]["text"], transcript["text"]) >= 0.8
    assert done["type"] == "response.done" and done["text"] == reply
    assert "".join(e["delta"] for e in client.events_of("response.text.delta")) == reply
    heard = transcribe_back(whisper, client.reply_audio(), 16000)
    assert word_recall(reply, heard) >= 0.8, heard
    (latency,) = client.events_of("turn.latency")
    assert set(STAGES) <= set(latency["stages"])
    assert client.first_audible_ns(0) is not None


async def test_barge_in_over_webrtc_stops_the_voice_and_keeps_what_was_heard(
        rtc_service: RunningService, fresh_llm: LLMServer,
        utterances: dict[str, dict[str, str]]) -> None:
    fresh_llm.behaviour.reply = lambda messages: (
        "Okay, Tuesday it is." if "tuesday" in messages[-1]["content"].lower() else LONG_REPLY)
    async with RtcClient(rtc_service.url, 16000) as client:
        await speak(client, utterances["weather"]["path"])
        await client.wait_for("turn.latency", timeout=15)
        while len(client.reply_audio()) < 16000 * 2:  # two seconds of the story heard
            await client.stream_silence(0.1)
        await speak(client, utterances["stop"]["path"])
        interrupted = await client.wait_for("response.interrupted", timeout=10)
        cut_ns = interrupted["_received_ns"]
        while not client.events_of("response.done"):
            await client.stream_silence(0.1)

    assert interrupted["reason"] == "barge_in"
    assert interrupted["played_ms"] >= 1500
    assert LONG_REPLY.startswith(interrupted["played_text"].split(" ...")[0][:20])
    next_transcript = client.events_of("transcript.final")[1]["_received_ns"]
    stray = [c for c in client.record.audio if cut_ns < c.arrival_ns < next_transcript]
    assert sum(len(c.samples) for c in stray) <= 16000 * 0.25  # only what was in flight
    history = fresh_llm.requests[-1]["messages"]
    assert [m["content"] for m in history if m["role"] == "assistant"][0] == \
        interrupted["played_text"]
    assert client.events_of("response.done")[0]["text"] == "Okay, Tuesday it is."
    # the call record marks what the caller did not hear of the story
    record = await call_record(rtc_service.log_path.parent / "records",
                               client.session["session_id"])
    assert record["transport"] == "webrtc"
    story, answer = (t for t in record["transcript"] if t["speaker"] == "assistant")
    assert story["heard"] is False and story["heard_text"] == interrupted["played_text"]
    assert story["text"] == LONG_REPLY and story["interrupted_by"] == "barge_in"
    assert answer["text"] == "Okay, Tuesday it is." and answer["heard"] is True
    assert [t["text"] for t in record["transcript"] if t["speaker"] == "caller"] == \
        [e["text"] for e in client.events_of("transcript.final")]


async def test_event_channel_takes_client_messages_and_session_end(
        rtc_service: RunningService) -> None:
    async with RtcClient(rtc_service.url) as client:
        await client.send_json({"type": "ping"})
        await client.wait_for("pong")
        await client.send_json({"type": "launch"})
        error = await client.wait_for("error")
        await client.send_json({"type": "dtmf", "digit": "7"})
        await client.wait_for("dtmf.received", digit="7")
        await client.send_json({"type": "session.end"})
        await client.wait_closed()
    assert error["code"] == "unknown_type"
    assert client.close_code == 1000


CHILD = """
import asyncio, signal, sys
from clients.rtc_client import RtcClient
from clients.audiofile import load_audio

async def main(url, path):
    client = RtcClient(url)
    await client.connect()
    await client.stream(load_audio(path, 16000))
    while not client.events_of("turn.latency"):
        await client.stream_silence(0.1)
    print("replying", flush=True)
    await client.stream_silence(60)

asyncio.run(main(*sys.argv[1:]))
"""


async def test_concurrent_offers_never_exceed_the_session_cap(
        rtc_service: RunningService) -> None:
    """Offers arriving together once all passed the capacity check before any of them
    was counted (six against a cap of three made six sessions): the cap is now taken in
    one step with the check."""
    cap = int(SERVICE_ENV["VOICE_MAX_SESSIONS"])
    clients = [RtcClient(rtc_service.url) for _ in range(cap + 3)]
    outcomes = await asyncio.gather(*(c.connect() for c in clients), return_exceptions=True)
    try:
        connected = [c for c, o in zip(clients, outcomes, strict=True) if o is None]
        assert len(connected) == cap, outcomes
        health = await asyncio.to_thread(rtc_service.health)
        assert health["sessions"] == cap
        refused = [o for o in outcomes if o is not None]
        assert all(isinstance(o, ConnectionError | websockets.InvalidStatus) for o in refused)
    finally:
        for client in clients:
            await client.close()
    await wait_no_sessions(rtc_service)


async def test_a_peer_that_vanishes_mid_reply_is_cleaned_up(
        rtc_service: RunningService, fresh_llm: LLMServer,
        utterances: dict[str, dict[str, str]]) -> None:
    fresh_llm.behaviour.reply = LONG_REPLY
    await wait_no_sessions(rtc_service)
    pid = rtc_service.process.pid
    before = webrtc_resources(pid)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, rtc_service.url, utterances["weather"]["path"],
        stdout=asyncio.subprocess.PIPE)
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 30)
        assert line.strip() == b"replying"
        assert rtc_service.health()["sessions"] == 1
        assert webrtc_resources(pid)["udp_sockets"] > before["udp_sockets"]
        child.send_signal(signal.SIGSTOP)  # gone from the network, its sockets still open
        await wait_no_sessions(rtc_service, timeout=PEER_TIMEOUT_S + 10)
    finally:
        child.kill()
        await child.wait()
    log = rtc_service.log()
    assert f"closed (no audio from the peer for {PEER_TIMEOUT_S} s)" in log
    assert webrtc_resources(pid) == before == {"udp_sockets": 0, "decoder_threads": 0}


async def test_a_peer_that_never_completes_ice_is_cleaned_up(
        rtc_service: RunningService) -> None:
    await wait_no_sessions(rtc_service)
    before = webrtc_resources(rtc_service.process.pid)
    peer = Peer((), lambda: None, MONOTONIC)
    try:
        async with websockets.connect(signalling_url(rtc_service.url)) as ws:
            parse_server_signal(await ws.recv())
            await ws.send(encode_offer(await peer.offer()))
            parse_server_signal(await ws.recv())  # the answer, which we never apply
            assert rtc_service.health()["sessions"] == 1
            error = parse_server_signal(await asyncio.wait_for(ws.recv(), PEER_TIMEOUT_S + 5))
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            close_code = ws.close_code
    finally:
        await peer.close()
    assert error == SignalError("ice_timeout", f"ICE did not complete within {PEER_TIMEOUT_S} s")
    assert close_code == 4008
    await wait_no_sessions(rtc_service)
    assert webrtc_resources(rtc_service.process.pid) == before


@pytest.mark.parametrize("message, code", [
    ("hello", "invalid_json"),
    (json.dumps({"type": "offer", "sdp": "v=0\r\nm=video 9 RTP/AVP 96\r\n"}), "invalid_offer"),
    (json.dumps({"type": "offer", "sdp": "v=0\r\nm=audio 9 nonsense\r\n"}), "invalid_offer"),
])
async def test_bad_offers_are_refused_with_a_reason(rtc_service: RunningService, message: str,
                                                    code: str) -> None:
    async with websockets.connect(signalling_url(rtc_service.url)) as ws:
        parse_server_signal(await ws.recv())
        await ws.send(message)
        error = json.loads(await ws.recv())
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
        assert (error["type"], error["code"], ws.close_code) == ("error", code, 1008)
    await wait_no_sessions(rtc_service)


NETNS_PEERS = """
import asyncio, json, sys
from transports.webrtc.ice import allow_loopback
from transports.webrtc.peer import Peer
from voice.clock import MONOTONIC

async def call() -> bool:
    caller, callee = (Peer((), lambda: None, MONOTONIC) for _ in range(2))
    try:
        answer = await callee.answer(await caller.offer())
        await caller.accept_answer(answer)
        waits = [asyncio.ensure_future(e.wait()) for e in (caller.connected, caller.failed)]
        await asyncio.wait(waits, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()
        return caller.connected.is_set()
    finally:
        await caller.close()
        await callee.close()

async def main():
    without = await call()
    allow_loopback()
    print(json.dumps({"without": without, "with": await call()}))

asyncio.run(main())
"""


def _unshare_works() -> bool:
    if sys.platform != "linux":
        return False
    try:
        return os.system("unshare -n true 2>/dev/null") == 0
    except OSError:
        return False


async def finish(process: asyncio.subprocess.Process, timeout: float) -> tuple[bytes, bytes]:
    """Its output; on a timeout, the whole process group (service included) is killed."""
    try:
        return await asyncio.wait_for(process.communicate(), timeout)
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


needs_netns = pytest.mark.skipif(
    not _unshare_works() and os.environ.get("CI") != "true",
    reason="needs `unshare -n` (root) to make a network namespace with only loopback")


@needs_netns
async def test_loopback_setting_is_what_connects_peers_with_no_network() -> None:
    """In a network namespace whose only interface is lo, two aiortc peers connect only
    once 127.0.0.1 is offered (the service's --rtc-allow-loopback)."""
    process = await asyncio.create_subprocess_exec(
        "unshare", "-n", "sh", "-c", f'ip link set lo up && exec "{sys.executable}" -c "$0"',
        NETNS_PEERS, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        start_new_session=True)
    out, err = await finish(process, 60)
    assert process.returncode == 0, err.decode()
    assert json.loads(out) == {"without": False, "with": True}


@needs_netns
async def test_voice_call_over_webrtc_on_a_machine_with_no_network(
        utterances: dict[str, dict[str, str]], tmp_path: Path, whisper: WhisperSTT) -> None:
    """What a developer does on one machine: `voice serve --rtc-allow-loopback`, then
    `voice call --transport webrtc`; here inside a namespace with only loopback."""
    out = tmp_path / "reply.wav"
    script = (
        'v="$0"; ip link set lo up || exit 1; '
        '"$v" -m service.cli serve --port 8765 --rtc-allow-loopback --llm echo > "$1" 2>&1 & '
        'service=$!; '
        'for i in $(seq 100); do "$v" -c "import urllib.request as u; '
        'u.urlopen(\'http://127.0.0.1:8765/healthz\')" 2>/dev/null && break; sleep 0.3; done; '
        '"$v" -m service.cli call --transport webrtc --url http://127.0.0.1:8765 "$2" --out "$3"; '
        'status=$?; kill $service; wait $service; exit $status')
    process = await asyncio.create_subprocess_exec(
        "unshare", "-n", "sh", "-c", script, sys.executable, str(tmp_path / "service.log"),
        utterances["train"]["path"], str(out),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")},
        start_new_session=True)
    output, _ = await finish(process, 120)
    text = output.decode()
    assert process.returncode == 0, text + (tmp_path / "service.log").read_text()
    said = next(line for line in text.splitlines() if line.startswith("you:"))
    assert word_recall(utterances["train"]["text"], said) >= 0.8
    assert "assistant: You said:" in text and "voice_to_voice" in text
    audio, rate = soundfile.read(out, dtype="int16")
    heard = transcribe_back(whisper, audio, rate)
    assert word_recall("you said what time does the next train to boston leave", heard) >= 0.6
