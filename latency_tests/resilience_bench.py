"""What a provider outage costs a caller: client-measured voice-to-voice latency of turns
served by the fallback LLM endpoint, beside turns served by a healthy primary.

Each scenario starts its own service (bundled models) with two local zero-delay
OpenAI-compatible servers, a primary and a fallback, and streams the test utterances
through the WebSocket client:

- healthy: the primary answers (the reference);
- 429 at once: the primary answers HTTP 429 to every request (`Retry-After: 0`, and
  breaker thresholds out of reach, so that every turn tries it first);
- hang: the primary accepts and never answers; the turn waits the first-token
  timeout (`--llm-first-token-timeout-s`, default 3 s) and moves on;
- breaker open: the primary answered 429 with `Retry-After: 600` once, so its breaker
  is open and every measured turn skips it without a request.

    python -m latency_tests.resilience_bench [--repeat 3] [--first-token-timeout-s 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latency_tests.bench import DEFAULT_CORPUS, _spawned_service, measure_one, median
from latency_tests.llm_server import ErrorStatus, Failure, Hang, LLMServer


@dataclass(frozen=True)
class Scenario:
    name: str
    failure: Failure | None
    serve_args: tuple[str, ...] = ()
    warm_up_failure: bool = False  # one failing turn before measuring (opens the breaker)


UNREACHABLE_TRIP = ("--breaker-min-failures=1000000",)
SCENARIOS = (
    Scenario("healthy primary", None),
    Scenario("primary 429 at once", ErrorStatus(429, retry_after=0), UNREACHABLE_TRIP),
    Scenario("primary hangs", Hang(), UNREACHABLE_TRIP),
    Scenario("primary breaker open", ErrorStatus(429, retry_after=600), warm_up_failure=True),
)


async def run_scenario(scenario: Scenario, repeat: int, first_token_s: float,
                       manifest: dict[str, Any], corpus: Path) -> list[float]:
    async with LLMServer() as primary, LLMServer() as fallback:
        primary.behaviour.always_fail = scenario.failure
        args = [f"--llm-fallback-url={fallback.base_url}",
                f"--llm-first-token-timeout-s={first_token_s}", *scenario.serve_args]
        with _spawned_service(primary.base_url, args) as url:
            items = [(name, corpus / entry["file"]) for name, entry in manifest.items()]
            if scenario.warm_up_failure:
                await measure_one(url, "warm-up", items[0][1], 16000)
            values: list[float] = []
            for _ in range(repeat):
                for name, path in items:
                    measure = await measure_one(url, name, path, 16000)
                    if measure.voice_to_voice_ms is not None:
                        values.append(measure.voice_to_voice_ms)
            print(f"  {scenario.name}: {len(values)} turns, median {median(values):.0f} ms; "
                  f"primary saw {len(primary.requests)} requests, fallback "
                  f"{len(fallback.requests)}", flush=True)
            return values


async def main_async(args: argparse.Namespace) -> int:
    corpus = Path(args.corpus)
    manifest: dict[str, Any] = json.loads((corpus / "utterances.json").read_text())
    results: dict[str, list[float]] = {}
    for scenario in SCENARIOS:
        results[scenario.name] = await run_scenario(scenario, args.repeat,
                                                    args.first_token_timeout_s, manifest, corpus)
    reference = median(results[SCENARIOS[0].name])
    print(f"\nvoice-to-voice, client-measured, {args.repeat} x {len(manifest)} turns each "
          f"(first-token timeout {args.first_token_timeout_s:g} s):")
    print(f"{'scenario':<24} {'median':>8} {'p95':>8} {'extra':>8}")
    for name, values in results.items():
        if not values:
            print(f"{name:<24} no replies")
            continue
        p95 = statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]
        print(f"{name:<24} {median(values):>5.0f} ms {p95:>5.0f} ms "
              f"{median(values) - reference:>+5.0f} ms")
    return 0 if all(results.values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--first-token-timeout-s", type=float, default=3.0)
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    return asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
