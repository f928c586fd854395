"""Telephony media streams into the real service (/twilio, /telnyx), with the bundled
models: a client playing the provider (clients/media_stream_client.py, written from
the providers' documents) says a clip as 20 ms base64 μ-law frames and plays what
comes back at real time, as the provider's buffer does, echoing marks and obeying
`clear`. The reply's words are transcribed back from what it played; a barge-in
produces a `clear` and the reply stops, with the truncation counting what the
provider had buffered; malformed frames get typed errors and end nothing else. The
service requires Twilio's signature and a key for Telnyx, so every test crosses the
door as a provider would. A Telnyx call the service ends is hung up through Call
Control (a stand-in for the API, tests/telnyx_api.py); one the caller ends is not."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import pytest_asyncio
from websockets.exceptions import InvalidStatus

from clients.audiofile import load_audio
from clients.media_stream_client import MediaStreamCaller, TelnyxCaller, TwilioCaller
from latency_tests.llm_server import LLMServer
from pipelines.providers.stt import WhisperSTT
from tests.conftest import word_recall
from tests.e2e.conftest import RunningService, start_service, stop_service, transcribe_back
from tests.e2e.test_cascade_ws import LONG_REPLY
from tests.telnyx_api import TelnyxApi

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session")]

TWILIO_TOKEN = "twilio-auth-token-for-tests"
API_KEY = "telnyx-stream-key-123"
TELNYX_API_KEY = "KEY-telnyx-call-control-456"
PROVIDER_BUFFER_MS = 400  # how long the simulated provider holds audio before playing it


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def telnyx_api() -> AsyncIterator[TelnyxApi]:
    api = await TelnyxApi(TELNYX_API_KEY).start()
    yield api
    await api.stop()


@pytest.fixture(scope="module")
def streams_service(llm: LLMServer, telnyx_api: TelnyxApi,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    running = start_service(tmp_path_factory.mktemp("media-streams"), {
        "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "test-key-123",
        "VOICE_API_KEYS": API_KEY, "VOICE_TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
        "VOICE_TELNYX_API_KEY": TELNYX_API_KEY, "VOICE_TELNYX_API_URL": telnyx_api.url,
        "VOICE_IDLE_TIMEOUT_S": "10"}, name="media-streams")
    yield running
    stop_service(running)


def caller(service: RunningService, provider: str, delay_ms: int = 0) -> MediaStreamCaller:
    if provider == "twilio":
        return TwilioCaller(service.url, auth_token=TWILIO_TOKEN, playout_delay_ms=delay_ms)
    client = TelnyxCaller(service.url)
    client.token = API_KEY
    return client


async def say(client: MediaStreamCaller, path: str) -> None:
    await client.stream(load_audio(path, client.sample_rate))


async def until(client: MediaStreamCaller, done: Callable[[], object],
                timeout: float = 20.0) -> None:
    """Silence, as a live line sends, until `done()` holds."""
    async with asyncio.timeout(timeout):
        while not done():
            await client.stream_silence(0.1)


@pytest.mark.parametrize("provider", ["twilio", "telnyx"])
async def test_a_caller_is_understood_and_hears_the_reply(
        streams_service: RunningService, fresh_llm: LLMServer, whisper: WhisperSTT,
        utterances: dict[str, dict[str, str]], provider: str) -> None:
    reply = "It is sunny and warm in Paris today."
    fresh_llm.behaviour.reply = reply
    client = caller(streams_service, provider)
    await client.connect()
    try:
        await say(client, utterances["weather"]["path"])
        await until(client, lambda: client.events_of("response.done"))
        await client.stream_silence(0.5)  # the marks of the reply's end come back
        await client.press("5")
        await client.wait_for("dtmf.received", digit="5")
    finally:
        await client.close()
    heard_by_llm = fresh_llm.requests[-1]["messages"][-1]["content"]
    assert word_recall(utterances["weather"]["text"], heard_by_llm) >= 0.7, heard_by_llm
    heard = transcribe_back(whisper, client.reply_audio(), client.sample_rate)
    assert word_recall(reply, heard) >= 0.7, heard
    assert client.violations == []
    sent_marks = [m["mark"]["name"] for m in client.received if m["event"] == "mark"]
    assert sent_marks and client.marks_echoed == sent_marks  # every mark, in order
    latency = client.events_of("turn.latency")[0]
    assert latency["stages"]["voice_to_voice_ms"] > 0


async def test_barge_in_sends_clear_and_the_reply_stops_where_the_caller_was(
        streams_service: RunningService, fresh_llm: LLMServer,
        utterances: dict[str, dict[str, str]]) -> None:
    def reply(messages: list[dict[str, str]]) -> str:
        said = messages[-1]["content"].lower()
        return "Okay, Tuesday it is." if "tuesday" in said else LONG_REPLY

    fresh_llm.behaviour.reply = reply
    client = caller(streams_service, "twilio", delay_ms=PROVIDER_BUFFER_MS)
    await client.connect()
    try:
        await say(client, utterances["weather"]["path"])
        await until(client, lambda: len(client.reply_audio()) > client.sample_rate * 2)
        await say(client, utterances["stop"]["path"])
        interrupted = await client.wait_for("response.interrupted", timeout=10)
        await until(client, lambda: client.events_of("response.done"))
    finally:
        await client.close()
    assert client.violations == []
    assert interrupted["reason"] == "barge_in"
    assert client.clears, "no clear reached the provider"
    cut_ns = client.clears[0]
    # what the provider played of the long reply before the clear: the rest was dropped
    played = [c for c in client.record.audio if c.arrival_ns < cut_ns]
    played_ms = sum(len(c.samples) for c in played) * 1000 // client.sample_rate
    assert played_ms < 15_000  # LONG_REPLY takes far longer: it was cut
    # the service's figure of what was heard counts the provider's buffer (from the
    # marks): not what it sent, nor its own clock since the first audio went out, which
    # runs PROVIDER_BUFFER_MS ahead of the provider's playback
    clear_at = next(i for i, m in enumerate(client.received) if m["event"] == "clear")
    sent_before_cut = sum(m["event"] == "media" for m in client.received[:clear_at]) * 20
    assert sent_before_cut > played_ms
    assert abs(interrupted["played_ms"] - played_ms) <= 150, (interrupted, played_ms)


async def test_malformed_frames_get_typed_errors_and_end_no_other_call(
        streams_service: RunningService, fresh_llm: LLMServer, whisper: WhisperSTT,
        utterances: dict[str, dict[str, str]]) -> None:
    fresh_llm.behaviour.reply = "The next train leaves at nine."
    hostile, other = caller(streams_service, "telnyx"), caller(streams_service, "twilio")
    await hostile.connect()
    await other.connect()
    try:
        for frame in ("not json", '{"event": "ring"}', '{"event": "media", "media": '
                      '{"payload": "@@@"}}', '{"event": "dtmf", "dtmf": {"digit": "z"}}',
                      "[" * 5000):
            await hostile.send_raw(frame)
        await until(hostile, lambda: len(hostile.events_of("error")) >= 5, timeout=10)
        codes = [e["code"] for e in hostile.events_of("error")]
        assert not hostile.closed
        talk = asyncio.create_task(say(other, utterances["train"]["path"]))
        await hostile.send_raw('{"event": "media", "media": {"payload": "'
                               + "A" * 70_000 + '"}}')
        await hostile.wait_closed()
        await talk
        await until(other, lambda: other.events_of("response.done"))
    finally:
        await hostile.close()
        await other.close()
    errors = [e["code"] for e in hostile.events_of("error")]
    assert codes == ["invalid_message", "unknown_event", "invalid_audio", "invalid_field",
                     "invalid_message"]
    assert "message_too_large" in errors and hostile.close_code == 1009
    heard = transcribe_back(whisper, other.reply_audio(), other.sample_rate)
    assert word_recall("The next train leaves at nine.", heard) >= 0.7, heard


async def test_the_door_wants_twilios_signature_and_telnyx_a_key(
        streams_service: RunningService) -> None:
    forged = TwilioCaller(streams_service.url, auth_token="not-the-token")
    with pytest.raises(InvalidStatus) as refused:
        await forged.connect()
    assert refused.value.response.status_code == 403
    keyless = TelnyxCaller(streams_service.url)
    with pytest.raises(InvalidStatus) as refused:
        await keyless.connect()
    assert refused.value.response.status_code == 401
    by_path = TwilioCaller(streams_service.url)  # no signature: a key in the path is not
    by_path.token = API_KEY                    # enough once Twilio signs
    with pytest.raises(InvalidStatus) as refused:
        await by_path.connect()
    assert refused.value.response.status_code == 403


async def test_a_telnyx_call_the_service_ends_is_hung_up_through_call_control(
        streams_service: RunningService, telnyx_api: TelnyxApi, whisper: WhisperSTT) -> None:
    before = len(telnyx_api.requests)
    left = caller(streams_service, "telnyx")  # the caller hangs up: nothing to do
    await left.connect()
    await left.stream_silence(0.3)
    await left.close()
    client = caller(streams_service, "telnyx")
    await client.connect()
    try:
        await client.stream_silence(0.3)
        await client.press("0")  # the hang-up digit: a goodbye, then the service ends it
        await until(client, lambda: client.closed)
    finally:
        await client.close()
    await telnyx_api.wait_for_requests(before + 1)
    await asyncio.sleep(0.3)  # nothing more comes
    (request,) = telnyx_api.requests[before:]
    assert request.call_control_id == "v3:" + client.call_id, request
    assert request.authorization == f"Bearer {TELNYX_API_KEY}" and request.status == 200
    assert str(request.body["command_id"]).endswith("-hangup"), request
    assert client.close_code == 1000
    heard = transcribe_back(whisper, client.reply_audio(), client.sample_rate)
    assert word_recall("connecting you to a person goodbye", heard) >= 0.6, heard
    assert "hung up through Call Control" in streams_service.log()
