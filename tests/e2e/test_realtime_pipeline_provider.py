"""The realtime pipeline against a local provider that speaks the Realtime wire protocol
over a real WebSocket, and misbehaves on cue: an `error` event, a connection closed
mid-reply, a provider that never answers, refused handshakes, a rate limit. Recorded
event sequences in the real API's shape are replayed through it too. Each case checks
the documented behaviour (docs/realtime.md) and that no pipeline task outlives it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from pipelines.realtime.options import RealtimeOptions
from pipelines.realtime.pipeline import RealtimePipeline
from pipelines.realtime.provider import WebSocketProvider
from voice.audio import Int16Array
from voice.clock import MONOTONIC
from voice.events import (
    ErrorOccurred,
    Event,
    ResponseDone,
    ResponseInterrupted,
    ResponseTextDelta,
    SpeechStarted,
    SpeechStopped,
    TranscriptFinal,
    TurnLatency,
)
from voice.playout import Playout

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

RECORDINGS = Path(__file__).parents[1] / "data" / "realtime"
# the provider's "VAD": a turn starts after this much audio since the last one (the first
# sooner), and stops 500 ms later; replies are 1 s long, so the caller hears them out
FIRST_START_MS, START_MS, TURN_MS = 300, 1800, 500
REPLY = "Hello there, nice to meet you."
API_KEY = "sk-live-8d2f1c0a"


def tone(ms: int, rate: int = 24000) -> bytes:
    t = np.arange(rate * ms // 1000) / rate
    return (6000 * np.sin(2 * math.pi * 330 * t)).astype("<i2").tobytes()


def ev(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, "event_id": f"event_{kind}", **fields})


class ScriptedProvider:
    """A local provider. `turns` says what each caller turn gets, in order, across
    connections: reply, long (audio, no response.done), error, drop, silent,
    rate_limited, or replay:<recording>."""

    def __init__(self, turns: list[str], refuse: int = 0, status: int = 503) -> None:
        self.turns = deque(turns)
        self.refuse, self.status = refuse, status
        self.connections = 0
        self.open = 0
        self.served = 0
        self.received: list[dict[str, Any]] = []  # everything but audio appends
        self.live: ServerConnection | None = None
        self._server: Server | None = None
        self._responses = 0

    async def __aenter__(self) -> ScriptedProvider:
        quiet = logging.getLogger("tests.scripted_provider")  # it would log our key
        quiet.setLevel(logging.WARNING)
        self._server = await serve(self._handle, "127.0.0.1", 0, process_request=self._gate,
                                   logger=quiet)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/v1/realtime"

    def _gate(self, connection: ServerConnection, request: Request) -> Response | None:
        self.connections += 1
        if self.refuse:
            self.refuse -= 1
            return connection.respond(self.status, "busy\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        self.open += 1
        self.served += 1
        self.live = ws
        first = FIRST_START_MS if self.served == 1 else START_MS
        heard_ms, total_ms, start_ms, speaking = 0, 0, first, False
        try:
            await ws.send(ev("session.created", session={"type": "realtime"}))
            async for message in ws:
                data = json.loads(message)
                if data["type"] != "input_audio_buffer.append":
                    self.received.append(data)
                    if data["type"] == "session.update":
                        await ws.send(ev("session.updated", session=data["session"]))
                    continue
                ms = len(base64.b64decode(data["audio"])) * 1000 // 48000
                heard_ms, total_ms = heard_ms + ms, total_ms + ms
                if not speaking and heard_ms >= start_ms and self.turns:
                    speaking = True
                    await ws.send(ev("input_audio_buffer.speech_started",
                                     audio_start_ms=total_ms, item_id="item_user"))
                elif speaking and heard_ms >= start_ms + TURN_MS:
                    speaking, heard_ms, start_ms = False, 0, START_MS
                    await ws.send(ev("input_audio_buffer.speech_stopped",
                                     audio_end_ms=total_ms, item_id="item_user"))
                    await self._turn(ws, self.turns.popleft())
        except ConnectionClosed:
            pass
        finally:
            self.open -= 1

    async def speech_started(self) -> None:
        assert self.live is not None
        await self.live.send(ev("input_audio_buffer.speech_started", audio_start_ms=0,
                                item_id="item_user2"))

    async def _turn(self, ws: ServerConnection, kind: str) -> None:
        if kind.startswith("replay:"):
            for line in (RECORDINGS / kind.removeprefix("replay:")).read_text().splitlines():
                if not json.loads(line)["type"].startswith("session."):
                    await ws.send(line)
            return
        if kind == "silent":
            return
        if kind == "error":
            await ws.send(ev("error", error={"type": "server_error", "code": None,
                                             "message": "The server had an error."}))
            return
        self._responses += 1
        rid, iid = f"resp_{self._responses}", f"item_a{self._responses}"
        where = {"response_id": rid, "item_id": iid, "output_index": 0, "content_index": 0}
        await ws.send(ev("conversation.item.input_audio_transcription.completed",
                         item_id="item_user", content_index=0, transcript="Hi.",
                         usage={"type": "duration", "seconds": 1}))
        await ws.send(ev("response.created", response={"id": rid, "status": "in_progress"}))
        if kind == "rate_limited":
            await ws.send(ev("response.done", response={
                "id": rid, "status": "failed", "output": [], "status_details": {
                    "type": "failed", "error": {"type": "rate_limit_exceeded",
                                                "code": "rate_limit_exceeded",
                                                "message": "Rate limit reached."}}}))
            return
        await ws.send(ev("response.output_item.added", response_id=rid, output_index=0,
                         item={"id": iid, "type": "message", "role": "assistant",
                               "content": []}))
        for word in REPLY.split(" "):
            await ws.send(ev("response.output_audio_transcript.delta", **where, delta=word + " "))
        seconds = 3 if kind == "long" else 1
        for _ in range(seconds * 5):
            await ws.send(ev("response.output_audio.delta", **where,
                             delta=base64.b64encode(tone(200)).decode()))
            if kind == "drop":
                await ws.close(1011, "internal error")
                return
        if kind == "reply":
            await ws.send(ev("response.done", response={"id": rid, "status": "completed",
                                                        "output": []}))


class FakeTTS:
    """Stands in for Piper for the apology: a short tone at 16 kHz."""
    name, sample_rate = "tone", 16000

    async def synthesize(self, text: str) -> Int16Array:
        return np.frombuffer(tone(300, 16000), dtype="<i2").astype(np.int16)


class Caller:
    """The session side of the pipeline: its events, its paced playout, its hang-up."""

    def __init__(self, rate: int = 16000) -> None:
        self.sample_rate = rate
        self.events: list[Event] = []
        self.heard = bytearray()
        self.playout = Playout(self._play, rate, MONOTONIC, lead_ms=200)
        self.hung_up: list[str] = []

    async def _play(self, chunk: bytes) -> None:
        self.heard += chunk

    def emit(self, event: Event) -> None:
        self.events.append(event)

    async def hangup(self, reason: str) -> None:
        self.hung_up.append(reason)

    def of(self, kind: type[Event]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    async def wait(self, check: Callable[[], bool], timeout: float = 10.0) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not check():  # noqa: ASYNC110 (playout and provider state, no event)
                    await asyncio.sleep(0.01)
        except TimeoutError:
            print("EVENTS", *self.events, sep="\n")
            raise


def pipeline_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("realtime-")]


@contextlib.asynccontextmanager
async def talking(provider: ScriptedProvider, caller: Caller,
                  timeout_s: float = 2.0) -> AsyncIterator[RealtimePipeline]:
    """Run the pipeline with the caller streaming silence in real time; on exit cancel
    it, as a session does, and check that none of its tasks is left."""
    options = RealtimeOptions(instructions="Be brief.", voice="marin",
                              turn_detection="server_vad", silence_ms=250, language="en",
                              timeout_s=timeout_s, reconnect_backoff_s=0.1)
    pipeline = RealtimePipeline(WebSocketProvider(provider.url, "gpt-realtime", API_KEY, 2.0),
                                options, caller, MONOTONIC, tts=FakeTTS())

    async def microphone() -> None:
        while True:
            pipeline.push_audio(np.zeros(320, np.int16), MONOTONIC.now_ns())
            await asyncio.sleep(0.02)

    async def session() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(caller.playout.run(), name="test-playout")
            tg.create_task(microphone(), name="test-microphone")
            tg.create_task(pipeline.run(), name="test-pipeline")

    task = asyncio.create_task(session())
    try:
        yield pipeline
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert pipeline_tasks() == []
        async with asyncio.timeout(5):
            while provider.open:  # noqa: ASYNC110 (the pipeline closes its connection)
                await asyncio.sleep(0.01)


def codes(caller: Caller) -> list[str]:
    return [e.code for e in caller.of(ErrorOccurred)]


async def test_a_turn_against_a_well_behaved_provider() -> None:
    caller = Caller()
    async with ScriptedProvider(["reply"]) as provider, talking(provider, caller):
        await caller.wait(lambda: bool(caller.of(ResponseDone)))
    kinds = [type(e).__name__ for e in caller.events if not isinstance(e, ResponseTextDelta)]
    assert kinds == ["SpeechStarted", "SpeechStopped", "TranscriptFinal", "TurnLatency",
                     "ResponseDone"]
    assert caller.of(ResponseDone)[0].text == REPLY + " "
    assert len(caller.heard) == pytest.approx(16000 * 2, rel=0.02)  # 1 s at 16 kHz
    (latency,) = caller.of(TurnLatency)
    assert {"endpointing_ms", "tts_ms", "transport_ms", "voice_to_voice_ms"} <= set(
        latency.stages)
    update = provider.received[0]
    assert update["type"] == "session.update"
    assert update["session"]["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 250


async def test_an_error_event_ends_the_turn_and_the_session_carries_on() -> None:
    caller = Caller()
    async with ScriptedProvider(["error", "reply"]) as provider, talking(provider, caller):
        await caller.wait(lambda: len(caller.of(ResponseDone)) == 2)
    assert codes(caller) == ["realtime_error"]
    first, second = caller.of(ResponseDone)
    assert (first.turn_id, first.text) == (1, "")  # after the spoken apology
    assert (second.turn_id, second.text) == (2, REPLY + " ")
    assert provider.connections == 1  # an error event is no reason to reconnect


async def test_a_connection_dropped_mid_reply_ends_the_turn_then_reconnects_once() -> None:
    caller = Caller()
    async with ScriptedProvider(["reply", "drop", "reply"]) as provider, \
            talking(provider, caller):
        await caller.wait(lambda: len(caller.of(ResponseDone)) == 3, timeout=15)
    assert codes(caller) == ["realtime_disconnected"]
    dropped = caller.of(ResponseDone)[1]
    assert dropped.turn_id == 2 and dropped.text == REPLY + " "  # what had arrived
    assert provider.connections == 2
    # the new provider session is told the conversation so far (the cut reply was still
    # playing when it connected)
    retold = [e["item"] for e in provider.received if e["type"] == "conversation.item.create"]
    assert [(i["role"], i["content"][0]["text"]) for i in retold] == [
        ("user", "Hi."), ("assistant", REPLY + " "), ("user", "Hi.")]


async def test_a_provider_that_never_answers_times_out_then_reconnects() -> None:
    caller = Caller()
    async with ScriptedProvider(["silent", "reply"]) as provider, \
            talking(provider, caller, timeout_s=0.5):
        await caller.wait(lambda: len(caller.of(ResponseDone)) == 2, timeout=15)
    assert codes(caller) == ["realtime_timeout"]
    assert provider.connections == 2


@pytest.mark.parametrize("status, code", [(503, "realtime_refused"),
                                          (429, "realtime_rate_limited")])
async def test_refused_connections_retry_once_then_hang_up(status: int, code: str) -> None:
    caller = Caller()
    async with ScriptedProvider([], refuse=5, status=status) as provider, \
            talking(provider, caller):
        await caller.wait(lambda: bool(caller.hung_up) and "realtime_unavailable" in codes(
            caller))
    assert codes(caller) == [code, code, "realtime_unavailable"]
    assert provider.connections == 2
    assert caller.hung_up == ["realtime provider unavailable"]


async def test_a_rate_limited_response_is_reported_as_such() -> None:
    caller = Caller()
    async with ScriptedProvider(["rate_limited"]) as provider, talking(provider, caller):
        await caller.wait(lambda: bool(caller.of(ResponseDone)))
    assert codes(caller) == ["realtime_rate_limited"]
    assert provider.connections == 1


async def test_barge_in_stops_playout_cancels_and_truncates_at_what_was_heard() -> None:
    caller = Caller()
    async with ScriptedProvider(["long"]) as provider, talking(provider, caller, timeout_s=10):
        await caller.wait(lambda: caller.playout.played_samples() >= 16000 * 0.6)
        await provider.speech_started()
        await caller.wait(lambda: bool(caller.of(ResponseInterrupted)))
        heard_at_cut = len(caller.heard)
        await asyncio.sleep(0.3)
        assert len(caller.heard) == heard_at_cut  # nothing more of the old reply
        await caller.wait(lambda: any(e["type"] == "conversation.item.truncate"
                                      for e in provider.received))
    (interrupted,) = caller.of(ResponseInterrupted)
    assert interrupted.reason == "barge_in" and 600 <= interrupted.played_ms < 3000
    assert REPLY.startswith(interrupted.played_text)
    cancel = next(e for e in provider.received if e["type"] == "response.cancel")
    truncate = next(e for e in provider.received if e["type"] == "conversation.item.truncate")
    assert cancel["response_id"] == "resp_1"
    assert (truncate["item_id"], truncate["content_index"]) == ("item_a1", 0)
    assert truncate["audio_end_ms"] == interrupted.played_ms
    assert [type(e) for e in caller.events[-2:]] == [ResponseInterrupted, SpeechStarted]


async def test_replayed_recording_of_a_spoken_turn() -> None:
    caller = Caller()
    async with ScriptedProvider(["replay:server_vad_turn.jsonl"]) as provider, \
            talking(provider, caller):
        await caller.wait(lambda: bool(caller.of(ResponseDone)))
    # the recording's own VAD events follow the scripted ones: two turns, one reply
    assert [e.text for e in caller.of(TranscriptFinal)] == [
        "What is the weather like in Paris today?"]
    assert "".join(e.delta for e in caller.of(ResponseTextDelta)) == "It is sunny in Paris today."
    assert caller.of(ResponseDone)[0].text == "It is sunny in Paris today."
    assert len(caller.heard) // 2 == pytest.approx(16000 * 0.36, abs=40)  # 360 ms resampled
    assert codes(caller) == []
    assert len(caller.of(SpeechStopped)) == 2


async def test_replayed_recording_of_a_provider_side_barge_in() -> None:
    caller = Caller()
    async with ScriptedProvider(["replay:barge_in.jsonl"]) as provider, \
            talking(provider, caller):
        await caller.wait(lambda: bool(caller.of(ResponseInterrupted)))
        await asyncio.sleep(0.2)
    assert codes(caller) == []  # response_cancel_not_active is a benign race
    assert caller.of(ResponseInterrupted)[0].reason == "barge_in"


async def test_replayed_recording_of_failures() -> None:
    caller = Caller()
    async with ScriptedProvider(["replay:failures.jsonl"]) as provider, \
            talking(provider, caller):
        await caller.wait(lambda: len(codes(caller)) == 3)
    assert codes(caller) == ["realtime_error", "realtime_rate_limited", "realtime_error"]
    assert provider.connections == 1


async def test_the_api_key_stays_out_of_the_logs_even_at_debug(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    caller = Caller()
    async with ScriptedProvider(["reply"]) as provider, talking(provider, caller):
        await caller.wait(lambda: bool(caller.of(ResponseDone)))
    assert "GET /v1/realtime" in caplog.text or "connected to the realtime provider" in \
        caplog.text
    assert API_KEY not in caplog.text
