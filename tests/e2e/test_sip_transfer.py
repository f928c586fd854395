"""Call control on a phone line, seen by real SIP phones. `transfer_call` (sipp): the
assistant says it is transferring the caller, then sends REFER with the configured
target; the phone accepts (202), reports the new leg in NOTIFYs, and gets BYE. A phone
that refuses the REFER (603) keeps the call, and the assistant says the transfer did
not happen. `send_dtmf` (baresip): the keys the model asks for reach the phone as RFC
4733 events, in order, and the assistant's words after them are heard."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import tests.e2e.conftest as e2e
from latency_tests.llm_server import CallTools, LLMServer, Message
from pipelines.providers.stt import WhisperSTT
from tests.conftest import word_recall
from tests.e2e.test_sip_calls import audio_then_silence, decode_rtp, free_udp_port, poll
from tests.sip.baresip import Baresip, pcm_wav
from tests.sip.relay import SipRelay
from tests.sip.sipp import g711_wav, run_sipp, scenario
from wire.rtp.dtmf import DtmfReceiver
from wire.rtp.packet import RtpPacket

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

TARGET = "sip:desk@pbx.example.com"
SAYING = "I am transferring you to a colleague now."


@pytest.fixture(scope="module")
def transferring(llm: LLMServer, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[tuple[e2e.RunningService, int]]:
    port = free_udp_port()
    running = e2e.start_service(tmp_path_factory.mktemp("sip-transfer"), {
        "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "test-key-123",
        "VOICE_SIP_PORT": str(port), "VOICE_CALL_TOOLS": "transfer_call,end_call,send_dtmf",
        "VOICE_TRANSFER_TARGET": TARGET}, name="sip-transfer")
    yield running, port
    e2e.stop_service(running)


def asks_for_a_person(messages: list[Message]) -> str | CallTools:
    if any(m["role"] == "tool" for m in messages):
        return SAYING
    return CallTools((("transfer_call", "{}"),))


@pytest.mark.parametrize("phone", ["uac_transfer", "uac_transfer_refused"])
async def test_transfer_call_sends_refer_to_a_real_phone(
        transferring: tuple[e2e.RunningService, int], fresh_llm: LLMServer,
        utterances: dict[str, dict[str, str]], tmp_path: Path, phone: str) -> None:
    service, port = transferring
    fresh_llm.behaviour.reply = asks_for_a_person
    wav = g711_wav(utterances["weather"]["path"], tmp_path / "caller.wav", "PCMU")
    path = scenario(phone, tmp_path, payload_type=0, encoding="PCMU", wav=wav,
                    target=TARGET, refer_timeout_ms=20000, listen_ms=6000)
    result = await run_sipp(path, f"127.0.0.1:{port}", tmp_path, timeout=45)
    assert result.ok, result.errors + service.log()[-3000:]
    log = service.log()
    assert f"REFER to {TARGET}" in log
    if phone == "uac_transfer":
        assert f"BYE sent (transferred to {TARGET})" in log
    else:
        assert "transfer to sip:desk@pbx.example.com did not happen" in log
        assert "603" in log


async def test_send_dtmf_presses_keys_a_real_phone_receives(
        transferring: tuple[e2e.RunningService, int], fresh_llm: LLMServer,
        whisper: WhisperSTT, utterances: dict[str, dict[str, str]], tmp_path: Path) -> None:
    service, port = transferring
    said = "Done, I have entered your extension number."

    def presses_keys(messages: list[Message]) -> str | CallTools:
        if any(m["role"] == "tool" for m in messages):
            return said
        return CallTools((("send_dtmf", '{"digits": "42#"}'),))

    fresh_llm.behaviour.reply = presses_keys
    relay = SipRelay(("127.0.0.1", port))
    await relay.start()
    phone = Baresip(tmp_path / "baresip", pcm_wav(utterances["name"]["path"],
                                                  tmp_path / "mic.wav"))
    await phone.start()
    try:
        await phone.command("dial", f"sip:assistant@127.0.0.1:{relay.sip_port}")
        await poll(lambda: "pressing 42#" in service.log(), 30)
        # the words after the keys (a slow machine may first say the filler while the
        # keys go out: what counts is audio after the last key, then silence)
        await poll(lambda: spoke_after_the_keys(relay), 20)
        await phone.command("hangup")
        await poll(lambda: "terminated" in phone.log(), 10)
    finally:
        await phone.stop()
        relay.close()
    keys = DtmfReceiver()
    pressed = []
    for _, data in relay.stats.downlink:
        packet = RtpPacket.parse(data)
        if packet.payload_type not in (0, 8):
            digit = keys.receive(packet.ssrc, packet.timestamp, packet.payload)
            pressed += [digit] if digit else []
    assert pressed == ["4", "2", "#"], pressed
    heard = e2e.transcribe_back(whisper, decode_rtp(relay.stats.downlink), 8000)
    assert word_recall(said, heard) >= 0.6, heard
    # and the phone itself says it received them
    started = [e["param"] for e in phone.events if e.get("type") == "CALL_DTMF_START"]
    assert started == ["4", "2", "#"], phone.events



def spoke_after_the_keys(relay: SipRelay) -> bool:
    """Telephone events went to the phone, then audible audio, then 0.8 s of silence."""
    packets = [RtpPacket.parse(data) for _, data in relay.stats.downlink]
    keys = [i for i, p in enumerate(packets) if p.payload_type not in (0, 8)]
    return bool(keys) and audio_then_silence(relay.stats.downlink[keys[-1] + 1:])
