"""What one tool round costs a turn: the same spoken questions answered directly and
through one tool call (examples/tools.py `calculate`), against a service with the
bundled models and the 0 ms scripted LLM, interleaved; the server's voice-to-voice
of each turn, the tool's own time, and the service's resident memory after each round.

    python -m latency_tests.tool_round_trip [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from pathlib import Path
from typing import Any

from clients.audiofile import load_audio
from clients.ws_client import VoiceClient
from latency_tests.bench import spawned_service
from latency_tests.llm_server import CallTools, LLMServer

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data"
QUESTIONS = ("weather", "train", "capital")


def _rss_mb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024
    return 0


async def _turn(client: VoiceClient, path: Path) -> dict[str, Any]:
    mark = len(client.record.events)
    await client.stream(load_audio(str(path), client.sample_rate))
    async with asyncio.timeout(30):
        while not any(e["type"] == "response.done" for e in client.record.events[mark:]):
            await client.stream_silence(0.1)
    events = client.record.events[mark:]
    latency = next(e for e in events if e["type"] == "turn.latency")
    tool = [e["ms"] for e in events if e["type"] == "tool.result"]
    return {"v2v": latency["stages"]["voice_to_voice_ms"], "tool_ms": tool[0] if tool else None}


async def run(rounds: int) -> None:
    corpus = json.loads((CORPUS / "utterances.json").read_text())
    use_tool = {"on": False}

    def responder(messages: list[dict[str, Any]]) -> str | CallTools:
        if use_tool["on"] and messages[-1]["role"] != "tool":
            return CallTools((("calculate", '{"expression": "6 * 7"}'),))
        return "The answer is forty two."

    async with LLMServer() as llm:
        llm.behaviour.reply = responder
        with spawned_service(llm.base_url, ["--tools", "examples.tools"]) as (url, process):
            turns: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
            memory = []
            for _ in range(rounds):
                for tool in (False, True):
                    use_tool["on"] = tool
                    async with VoiceClient(url) as client:
                        for name in QUESTIONS:
                            turns[tool].append(await _turn(client, CORPUS / corpus[name]["file"]))
                    memory.append(_rss_mb(process.pid))
    for tool in (False, True):
        v2v = sorted(t["v2v"] for t in turns[tool])
        line = (f"{'with one tool round' if tool else 'answered directly'}: {len(v2v)} turns, "
                f"server voice-to-voice median {statistics.median(v2v):.0f} ms, "
                f"p95 {v2v[int(len(v2v) * 0.95) - 1]:.0f} ms")
        if tool:
            itself = statistics.median(t["tool_ms"] for t in turns[tool])
            line += f", the tool itself {itself:.1f} ms"
        print(line)
    print(f"service resident memory after each round (MB): {memory}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    asyncio.run(run(parser.parse_args().rounds))


if __name__ == "__main__":
    main()
