"""`transfer_call` on a phone line, seen by a real SIP phone (sipp): the assistant says
it is transferring the caller, then sends REFER with the configured target; the phone
accepts (202), reports the new leg in NOTIFYs, and gets BYE. A phone that refuses the
REFER (603) keeps the call, and the assistant says the transfer did not happen."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import tests.e2e.conftest as e2e
from latency_tests.llm_server import CallTools, LLMServer, Message
from tests.e2e.test_sip_calls import free_udp_port
from tests.sip.sipp import g711_wav, run_sipp, scenario

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

TARGET = "sip:desk@pbx.example.com"
SAYING = "I am transferring you to a colleague now."


@pytest.fixture(scope="module")
def transferring(llm: LLMServer, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[tuple[e2e.RunningService, int]]:
    port = free_udp_port()
    running = e2e.start_service(tmp_path_factory.mktemp("sip-transfer"), {
        "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "test-key-123",
        "VOICE_SIP_PORT": str(port), "VOICE_CALL_TOOLS": "transfer_call,end_call",
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
