"""How well an LLM chooses tools: a fixed set of requests, each with the tool it should
call (or none), asked with examples/tools.py's tools through the OpenAI client, as the
cascade asks. Prints each request's choice and the score, and the median time to the
choice. Without `--base-url`, scores the bundled local model (apis/openai_chat.py,
started here); with one, any OpenAI-compatible endpoint and `--model`.

    python -m latency_tests.tool_choice
    python -m latency_tests.tool_choice --base-url http://127.0.0.1:8080/v1 --model qwen
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from openai import AsyncOpenAI

from pipelines.tools import ToolBox, load_module

# request, the tool that answers it ("" for none)
REQUESTS = (
    ("What time is it?", "current_time"),
    ("What's the date today?", "current_time"),
    ("What time is it in Tokyo?", "current_time"),
    ("What is 17 times 23?", "calculate"),
    ("What is twelve plus thirty?", "calculate"),
    ("Please note that I need to buy milk.", "add_note"),
    ("Remember that my flight is on Tuesday.", "add_note"),
    ("What are my notes?", "read_notes"),
    ("What is the capital of France?", ""),
    ("Tell me a joke.", ""),
    ("How are you today?", ""),
    ("Who wrote Hamlet?", ""),
)
INSTRUCTIONS = "You are a helpful voice assistant. Answer in one or two short sentences."


@asynccontextmanager
async def bundled_server() -> AsyncIterator[tuple[str, str]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "apis.openai_chat", "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    assert process.stdout is not None
    try:
        async with asyncio.timeout(120):
            while b"listening on" not in (line := await process.stdout.readline()):
                if not line:
                    raise RuntimeError("the local LLM server did not start")
        yield line.decode().split("listening on ", 1)[1].strip(), "local"
    finally:
        process.terminate()
        await process.wait()


async def score(base_url: str, key: str, model: str) -> int:
    tools = ToolBox(load_module("examples.tools"))
    specs = tools.specs()
    client = AsyncOpenAI(base_url=base_url, api_key=key)
    right, times = 0, []
    for text, want in REQUESTS:
        started = time.perf_counter()
        reply = await client.chat.completions.create(
            model=model, tools=specs, temperature=0, max_tokens=60,  # type: ignore[arg-type]
            messages=[{"role": "system", "content": INSTRUCTIONS},
                      {"role": "user", "content": text}])
        times.append((time.perf_counter() - started) * 1000)
        message = reply.choices[0].message
        call = message.tool_calls[0] if message.tool_calls else None
        chose = getattr(call, "function", None)
        name = chose.name if chose is not None else ""
        right += name == want
        shown = f"{name}({chose.arguments})" if chose is not None \
            else f"answer: {(message.content or '').strip()[:50]!r}"
        print(f"{'ok ' if name == want else 'NO '} {text!r:42} wanted {want or 'an answer':13}"
              f" got {shown}", flush=True)
    print(f"chose right: {right}/{len(REQUESTS)}   median time to the choice: "
          f"{statistics.median(times):.0f} ms")
    print(json.dumps({"model": model, "right": right, "of": len(REQUESTS),
                      "median_ms": round(statistics.median(times))}))
    return right


async def main_async(args: argparse.Namespace) -> None:
    if args.base_url:
        await score(args.base_url, os.environ.get("OPENAI_API_KEY", "none"), args.model)
        return
    async with bundled_server() as (url, key):
        await score(url, key, "SmolLM2-135M-Instruct")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", default="", help="an OpenAI-compatible endpoint "
                        "(default: the bundled local model, started here)")
    parser.add_argument("--model", default="gpt-4o-mini")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
