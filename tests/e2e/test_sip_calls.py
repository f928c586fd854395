"""Phone calls into the real service over the SIP bridge, with real SIP phones (sipp,
baresip) and the bundled models: the caller's words reach the LLM, the reply's words
reach the caller (captured RTP, decoded and transcribed back), digits arrive, calls
end cleanly from either side, and loss, reordering, jitter and hostile datagrams do
not spoil a call. `voice dial` calls a baresip phone."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile

from clients.audiofile import load_audio
from clients.sip_client import SipPhone
from latency_tests.llm_server import LLMServer
from pipelines.providers.stt import WhisperSTT
from tests.conftest import word_recall
from tests.e2e.conftest import (
    RunningService,
    call_record,
    start_service,
    stop_service,
    transcribe_back,
)
from tests.integration.test_sip_bridge import HOSTILE
from tests.sip.baresip import BARESIP, Baresip, pcm_wav
from tests.sip.relay import Impairment, SipRelay
from tests.sip.sipp import SIPP, g711_wav, run_sipp, scenario
from voice.audio import Int16Array
from wire.rtp import g711
from wire.rtp.packet import RtpPacket

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session"),
              pytest.mark.skipif(SIPP is None or BARESIP is None,
                                 reason="sipp and baresip are needed (scripts/setup.sh --test)")]

GOODBYE = "Connecting you to a person. Goodbye."


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SipService:
    def __init__(self, running: RunningService, sip_port: int) -> None:
        self.running = running
        self.sip_port = sip_port
        self.address = ("127.0.0.1", sip_port)

    def log(self) -> str:
        return self.running.log()


@pytest.fixture(scope="module")
def sip_service(llm: LLMServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SipService]:
    port = free_udp_port()
    folder = tmp_path_factory.mktemp("sip")
    running = start_service(folder, {
        "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "test-key-123",
        "VOICE_SIP_PORT": str(port), "VOICE_SIP_RTP_TIMEOUT_S": "10",
        "VOICE_CALL_RECORDS_DIR": str(folder / "records"), "VOICE_RECORD_CALLS": "1"},
        name="sip-service")
    yield SipService(running, port)
    stop_service(running)


async def poll(condition: Callable[[], bool], timeout: float) -> None:
    """Wait for a condition that no event signals (another process's state)."""
    async with asyncio.timeout(timeout):
        for _ in range(int(timeout * 10) + 1):
            if condition():
                return
            await asyncio.sleep(0.1)


def decode_rtp(packets: list[tuple[int, bytes]]) -> Int16Array:
    parts = []
    for _, data in packets:
        packet = RtpPacket.parse(data)
        if packet.payload_type in (g711.PCMU, g711.PCMA):
            parts.append(g711.decode(packet.payload, packet.payload_type))
    return np.concatenate(parts) if parts else np.zeros(0, np.int16)


def user_turns(llm: LLMServer) -> list[str]:
    """The caller's turns in the last LLM request (speculative requests come before it)."""
    return [str(m["content"]) for m in llm.requests[-1]["messages"] if m["role"] == "user"]


def last_user_message(llm: LLMServer) -> str:
    return user_turns(llm)[-1]


def reply_has_played(relay: SipRelay) -> bool:
    """Audible reply audio reached the caller and 0.8 s of silence followed it."""
    return audio_then_silence(relay.stats.downlink)


def audio_then_silence(downlink: list[tuple[int, bytes]]) -> bool:
    """Audible audio in these packets, and 0.8 s of silence after it."""
    frames = [decode_rtp([packet]) for packet in downlink]
    loud = [i for i, f in enumerate(frames) if f.size and np.abs(f).max() > 1000]
    return bool(loud) and loud[-1] < len(frames) - 40


async def sipp_call(service: SipService, folder: Path, utterance: str, encoding: str,
                    impairment: Impairment | None = None, digit: int = 5
                    ) -> tuple[SipRelay, bool, str]:
    relay = SipRelay(service.address, impairment)
    await relay.start()
    try:
        wav = g711_wav(utterance, folder / f"caller-{encoding}.wav", encoding)
        path = scenario("uac_speak", folder, payload_type=0 if encoding == "PCMU" else 8,
                        encoding=encoding, wav=wav, speak_ms=4500, digit=digit,
                        listen_ms=5500)
        result = await run_sipp(path, f"127.0.0.1:{relay.sip_port}", folder, timeout=40)
    finally:
        relay.close()
    return relay, result.ok, result.errors


@pytest.mark.parametrize("encoding", ["PCMU", "PCMA"])
async def test_sipp_call_is_understood_answered_and_hung_up_by_the_caller(
        sip_service: SipService, fresh_llm: LLMServer, whisper: WhisperSTT,
        utterances: dict[str, dict[str, str]], tmp_path: Path, encoding: str) -> None:
    reply = "It is sunny and warm in London today."
    fresh_llm.behaviour.reply = reply
    requests_before = len(fresh_llm.requests)
    utterance = utterances["weather"]
    relay, ok, errors = await sipp_call(sip_service, tmp_path, utterance["path"], encoding)
    assert ok, errors
    assert len(fresh_llm.requests) > requests_before
    assert len(user_turns(fresh_llm)) == 1
    heard_by_llm = last_user_message(fresh_llm)
    assert word_recall(utterance["text"], heard_by_llm) >= 0.7, (
        heard_by_llm, sip_service.log()[-4000:])
    packets = [RtpPacket.parse(d) for _, d in relay.stats.downlink]
    assert {p.payload_type for p in packets} == {0 if encoding == "PCMU" else 8}
    heard = transcribe_back(whisper, decode_rtp(relay.stats.downlink), 8000)
    assert word_recall(reply, heard) >= 0.7, heard
    log = sip_service.log()
    assert "DTMF 5" in log and "caller hung up (BYE)" in log


async def test_baresip_call_ends_with_the_assistants_goodbye_and_bye(
        sip_service: SipService, fresh_llm: LLMServer, whisper: WhisperSTT,
        utterances: dict[str, dict[str, str]], tmp_path: Path) -> None:
    reply = "The next train to Boston leaves at nine."
    fresh_llm.behaviour.reply = reply
    requests_before = len(fresh_llm.requests)
    relay = SipRelay(sip_service.address)
    await relay.start()
    phone = Baresip(tmp_path / "baresip", pcm_wav(utterances["name"]["path"],
                                                  tmp_path / "mic.wav"))
    await phone.start()
    try:
        await phone.command("dial", f"sip:assistant@127.0.0.1:{relay.sip_port}")
        await poll(lambda: len(fresh_llm.requests) > requests_before, 30)
        await poll(lambda: reply_has_played(relay), 20)
        await phone.command("sndcode", "0")
        await poll(lambda: "terminated" in phone.log(), 30)
    finally:
        await phone.stop()
        relay.close()
    assert word_recall(utterances["name"]["text"], last_user_message(fresh_llm)) >= 0.7
    heard = transcribe_back(whisper, decode_rtp(relay.stats.downlink), 8000)
    assert word_recall(reply, heard) >= 0.7, heard
    assert word_recall(GOODBYE, heard) >= 0.6, heard
    log = sip_service.log()
    assert "DTMF 0" in log and "BYE sent (caller pressed 0)" in log
    # the call record: the phone's words as the LLM got them, the reply, why it ended
    session_id = re.findall(r"session (sess_[0-9a-f]+): hanging up \(caller pressed 0\)",
                            log)[-1]
    record = await call_record(sip_service.running.log_path.parent / "records", session_id)
    assert record["transport"] == "sip" and record["end_reason"] == "caller pressed 0"
    said = [t["text"] for t in record["transcript"] if t["speaker"] == "caller"]
    assert said and said[0] == last_user_message(fresh_llm)
    assert [t["text"] for t in record["transcript"] if t["speaker"] == "assistant"][0] == reply
    assert record["usage"]["stt_seconds"] > 1 and record["usage"]["llm_requests"] >= 1
    # its recording: the phone's words on the left, the reply and goodbye on the right
    audio, _ = soundfile.read(record["recording"]["path"], dtype="int16")
    left = transcribe_back(whisper, np.ascontiguousarray(audio[:, 0]), 16000)
    right = transcribe_back(whisper, np.ascontiguousarray(audio[:, 1]), 16000)
    assert word_recall(utterances["name"]["text"], left) >= 0.7, left
    assert word_recall(reply + " " + GOODBYE, right) >= 0.6, right


async def test_loss_reordering_and_jitter_still_give_a_correct_transcript(
        sip_service: SipService, fresh_llm: LLMServer, whisper: WhisperSTT,
        utterances: dict[str, dict[str, str]], tmp_path: Path) -> None:
    fresh_llm.behaviour.reply = "Noted."
    requests_before = len(fresh_llm.requests)
    concealed_before = frames_counted(sip_service, "concealed")
    # 2 % loss (whisper tiny.en degrades fast beyond it), reordering, 0-30 ms jitter
    impairment = Impairment(loss=0.02, reorder=0.06, jitter_ms=30, seed=11)
    relay, ok, errors = await sipp_call(sip_service, tmp_path, utterances["weather"]["path"],
                                        "PCMU", impairment)
    assert ok, errors
    assert relay.stats.dropped >= 1 and relay.stats.reordered >= 3
    assert len(fresh_llm.requests) > requests_before
    assert len(user_turns(fresh_llm)) == 1  # one turn, not cut in pieces by the impairment
    assert word_recall(utterances["weather"]["text"], last_user_message(fresh_llm)) >= 0.7
    # the lost packets were concealed, and /metrics says so
    await poll(lambda: frames_counted(sip_service, "concealed") > concealed_before, 5)


def frames_counted(service: SipService, kind: str) -> float:
    with urllib.request.urlopen(f"{service.running.url}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.search(rf'^voice_audio_frames_total{{kind="{kind}"}} (\S+)$', text, re.M)
    assert found, text
    return float(found.group(1))


async def test_hostile_datagrams_during_a_real_call(
        sip_service: SipService, fresh_llm: LLMServer, whisper: WhisperSTT,
        utterances: dict[str, dict[str, str]]) -> None:
    reply = "The weather is fine."
    fresh_llm.behaviour.reply = reply
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                       local_addr=("127.0.0.1", 0))
    rng = np.random.default_rng(3)
    junk = HOSTILE + [rng.bytes(int(n)) for n in rng.integers(1, 1400, 40)]

    async def attack() -> None:
        for _ in range(5):
            for data in junk:
                transport.sendto(data.replace(b"PORT", b"9"), sip_service.address)
            await asyncio.sleep(0.3)

    try:
        async with SipPhone(f"127.0.0.1:{sip_service.sip_port}") as phone:
            attacking = asyncio.create_task(attack())
            await phone.stream_silence(0.3)
            await phone.stream(load_audio(utterances["weather"]["path"], 8000))
            async with asyncio.timeout(20):
                while not phone.events_of("response.done"):
                    await phone.stream_silence(0.1)
            await attacking
    finally:
        transport.close()
    (transcript,) = phone.events_of("transcript.final")
    assert word_recall(utterances["weather"]["text"], transcript["text"]) >= 0.7
    assert word_recall(reply, transcribe_back(whisper, phone.reply_audio(), 8000)) >= 0.7
    assert phone.rtp_stats.lost == phone.rtp_stats.reordered == 0
    async with SipPhone(f"127.0.0.1:{sip_service.sip_port}", events=False) as again:
        assert again.plan is not None  # still answering calls
    assert "Traceback" not in sip_service.log()


async def test_voice_dial_calls_a_phone_and_speaks_on_it(
        llm: LLMServer, fresh_llm: LLMServer, whisper: WhisperSTT,
        utterances: dict[str, dict[str, str]], tmp_path: Path) -> None:
    fresh_llm.behaviour.reply = "Nice to meet you, Alice."
    phone = Baresip(tmp_path / "callee", pcm_wav(utterances["name"]["path"],
                                                 tmp_path / "mic.wav", lead_silence_s=3.0),
                    auto_answer=True)
    await phone.start()
    relay = SipRelay(("127.0.0.1", phone.sip_port))
    await relay.start()
    env = {**os.environ, "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "k",
           "VOICE_LOG_LEVEL": "WARNING"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.cli", "dial", f"sip:tester@127.0.0.1:{relay.sip_port}",
        "--greeting", "Hello, this is the assistant.", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        assert process.stdout is not None
        lines: list[str] = []
        async with asyncio.timeout(60):
            while not any(line.startswith("assistant: Nice") for line in lines):
                line = (await process.stdout.readline()).decode()
                assert line, "\n".join(lines)
                lines.append(line.strip())
            await phone.command("hangup")
            output, _ = await process.communicate()
        lines += output.decode().splitlines()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await phone.stop()
        relay.close()
    text = "\n".join(lines)
    assert process.returncode == 0, text
    callee = next(line for line in lines if line.startswith("callee:"))
    assert word_recall(utterances["name"]["text"], callee) >= 0.7, text
    assert "call ended: caller hung up (BYE)" in text
    heard = transcribe_back(whisper, decode_rtp(relay.stats.uplink), 8000)
    assert word_recall("Hello, this is the assistant. Nice to meet you, Alice.", heard) >= 0.7
