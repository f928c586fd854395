"""Usage, prices and call records (voice/usage.py, service/call_records.py): usage adds
up, a price table turns it into dollars (defaults, a file's rows, dated model names),
an interrupted reply is marked with what the caller heard, old records are swept."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from service.call_records import CallRecorder, CallRecords, signature
from voice.errors import ConfigError
from voice.events import (
    ResponseDone,
    ResponseInterrupted,
    ResponseTextDelta,
    SessionUsage,
    TranscriptFinal,
    TurnUsage,
)
from voice.usage import Models, Prices, Usage

pytestmark = pytest.mark.unit


def test_usage_adds_up_and_an_estimate_marks_the_total() -> None:
    total = Usage()
    one = Usage(stt_seconds=1.5, tts_characters=30)
    one.llm(100, 20, cached=50)
    two = Usage(tool_calls=2)
    two.llm(10, 5, estimated=True)
    total.add(one)
    total.add(two)
    assert (total.llm_requests, total.llm_prompt_tokens, total.llm_completion_tokens,
            total.llm_cached_tokens) == (2, 110, 25, 50)
    assert total.llm_estimated and total.tool_calls == 2 and total.stt_seconds == 1.5
    assert not Usage() and total


def test_prices_turn_usage_into_dollars() -> None:
    usage = Usage(stt_seconds=120, tts_characters=1_000_000)
    usage.llm(1_000_000, 1_000_000, cached=400_000)
    cost = Prices().cost(usage, Models(llm="gpt-4o-mini-2024-07-18", stt="whisper-1",
                                       tts="tts-1"))
    # 600k fresh at 0.15, 400k cached at 0.075, 1M out at 0.60; 2 min at 0.006; 1M chars
    assert cost["parts"] == {"llm": pytest.approx(0.09 + 0.03 + 0.60),
                             "stt": pytest.approx(0.012), "tts": pytest.approx(15.0)}
    assert cost["usd"] == pytest.approx(15.732)
    assert set(cost["prices"]) == {"gpt-4o-mini", "whisper-1", "tts-1"}
    local = Prices().cost(usage, Models(llm="my-own-model"))
    assert local["usd"] == 0 and local["unpriced"] == ["my-own-model"]
    realtime = Usage(realtime_audio_in_tokens=1_000_000, realtime_audio_out_tokens=500_000)
    assert Prices().cost(realtime, Models(realtime="gpt-realtime"))["usd"] == \
        pytest.approx(32 + 32)


def test_a_price_file_adds_and_replaces_rows(tmp_path: Path) -> None:
    table = tmp_path / "prices.json"
    table.write_text(json.dumps({"prices": [
        {"model": "gpt-4o-mini", "dated": "2026-12-01", "input_per_m": 1.0},
        {"model": "qwen-local", "dated": "2026-12-01", "output_per_m": 0.5}]}))
    prices = Prices.load(str(table))
    assert prices.row("gpt-4o-mini").input_per_m == 1.0  # type: ignore[union-attr]
    assert prices.row("qwen-local-7b").output_per_m == 0.5  # type: ignore[union-attr]
    table.write_text(json.dumps({"prices": [{"model": "x", "euros": 3}]}))
    with pytest.raises(ConfigError, match="price_table"):
        Prices.load(str(table))


def test_a_record_marks_what_the_caller_did_not_hear() -> None:
    recorder = CallRecorder("sess_1", "sip", "cascade", "key 1")
    for event in (TranscriptFinal(turn_id=1, text="Hi.", audio_ms=500),
                  ResponseTextDelta(turn_id=1, delta="Hello! "),
                  ResponseTextDelta(turn_id=1, delta="How can I help you today?"),
                  ResponseInterrupted(turn_id=1, played_ms=700, played_text="Hello!"),
                  TranscriptFinal(turn_id=2, text="Weather?", audio_ms=600),
                  TurnUsage(turn_id=2, usage={"llm_requests": 1}, models={}),
                  ResponseDone(turn_id=2, text="Sunny.")):
        recorder.observe(event)
    usage = Usage(stt_seconds=60.0)
    record = recorder.record("caller pressed 0", SessionUsage(
        usage=usage.to_dict(), models={"llm": "", "stt": "whisper-1", "tts": "",
                                       "realtime": ""}, seconds=30.0), Prices())
    first, second = (t for t in record["transcript"] if t["speaker"] == "assistant")
    assert first["text"] == "Hello! How can I help you today?" and first["heard"] is False
    assert first["heard_text"] == "Hello!" and first["heard_ms"] == 700
    assert second == {**second, "text": "Sunny.", "heard": True}
    assert record["turns"] == [{"turn_id": 2, "usage": {"llm_requests": 1}}]
    assert record["cost"]["usd"] == pytest.approx(0.006)
    assert record["cost"]["usd_per_minute"] == pytest.approx(0.012)
    assert record["end_reason"] == "caller pressed 0" and record["recording"] is None


def test_old_records_are_swept_and_signatures_cover_the_timestamp(tmp_path: Path) -> None:
    records = CallRecords(str(tmp_path), "", "", days=7, prices=Prices())
    old, new = tmp_path / "2026-01-01" / "a.json", tmp_path / "2026-12-04" / "b.json"
    for path in (old, new):
        path.parent.mkdir()
        path.write_text("{}")
    ten_days_ago = time.time() - 10 * 86400
    os.utime(old, (ten_days_ago, ten_days_ago))
    assert records.sweep() == 1
    assert not old.parent.exists() and new.exists()
    assert signature("k", "1", b"{}") != signature("k", "2", b"{}")


def test_a_realtime_response_done_gives_its_token_counts() -> None:
    from wire.openai_realtime.server_events import ResponseDone, parse_server_event

    done = parse_server_event(json.dumps({
        "type": "response.done", "event_id": "e1", "response": {
            "id": "resp_1", "status": "completed", "output": [], "usage": {
                "total_tokens": 600, "input_tokens": 420, "output_tokens": 180,
                "input_token_details": {"text_tokens": 120, "audio_tokens": 300,
                                        "cached_tokens": 64},
                "output_token_details": {"text_tokens": 30, "audio_tokens": 150}}}}))
    assert isinstance(done, ResponseDone) and done.usage is not None
    assert (done.usage.text_in, done.usage.audio_in, done.usage.cached_in,
            done.usage.text_out, done.usage.audio_out) == (120, 300, 64, 30, 150)
    totals = parse_server_event(json.dumps({
        "type": "response.done", "event_id": "e2", "response": {
            "id": "resp_2", "output": [], "usage": {"input_tokens": 7, "output_tokens": "x"}}}))
    assert isinstance(totals, ResponseDone) and totals.usage is not None
    assert (totals.usage.text_in, totals.usage.text_out) == (7, 0)  # odd fields count 0
    none = parse_server_event(json.dumps({
        "type": "response.done", "event_id": "e3", "response": {"id": "r", "output": []}}))
    assert isinstance(none, ResponseDone) and none.usage is None
