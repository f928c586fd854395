"""Circuit breakers (voice.resilience) and the LLM fallback chain's pieces, on a
hand-driven clock; the chain itself against real local OpenAI-compatible servers."""

from __future__ import annotations

import random

import pytest

from latency_tests.llm_server import Drop, ErrorStatus, Garbage, Hang, LLMServer
from pipelines.providers.llm import (
    TURN_TRACE,
    Endpoint,
    LLMChain,
    OpenAIChat,
    ProviderTrace,
    RepeatFilter,
)
from voice.errors import ProviderError
from voice.resilience import BreakerPolicy, BreakerState, CircuitBreaker

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, **policy: float) -> CircuitBreaker:
    return CircuitBreaker("p", BreakerPolicy(**policy), clock=clock, rng=random.Random(1))  # type: ignore[arg-type]


def test_one_failure_among_many_successes_keeps_it_closed() -> None:
    clock = Clock()
    b = breaker(clock)
    for _ in range(20):
        assert b.allow()
        b.record_success()
    b.record_failure("llm_error")
    assert b.state is BreakerState.CLOSED and b.allow()


def test_it_opens_past_the_ratio_and_minimum_then_probes_once() -> None:
    clock = Clock()
    b = breaker(clock, open_s=30)
    for _ in range(10):
        b.record_success()
    b.record_failure("llm_error")
    assert b.state is BreakerState.CLOSED  # 1 failure: below the minimum of 2
    b.record_failure("llm_error")
    assert b.state is BreakerState.OPEN  # 2 of 12 > 10 %
    assert not b.allow() and b.skipped == 1
    clock.now += 29.9
    assert not b.allow()
    clock.now += 0.2
    assert b.allow()  # the probe
    assert b.state is BreakerState.HALF_OPEN
    assert not b.allow()  # one probe at a time
    b.record_success()
    assert b.state is BreakerState.CLOSED and b.allow()


def test_old_failures_leave_the_window() -> None:
    clock = Clock()
    b = breaker(clock, window_s=60)
    b.record_failure("x")
    clock.now += 61
    b.record_failure("x")
    assert b.state is BreakerState.CLOSED


def test_a_failed_probe_backs_off_longer_with_jitter_up_to_the_cap() -> None:
    clock = Clock()
    b = breaker(clock, open_s=10, max_open_s=35)
    b.record_failure("x")
    b.record_failure("x")
    waits = [b.retry_in_s()]
    for _ in range(4):
        clock.now += b.retry_in_s()
        assert b.allow()
        b.record_failure("x")
        waits.append(b.retry_in_s())
    assert waits[0] == pytest.approx(10)
    assert all(10 <= w <= 35 for w in waits[1:])
    assert waits[2:] != [waits[1]] * 3  # jittered, not one fixed schedule
    assert b.opened_count == 5


def test_retry_after_opens_it_at_once_for_that_long() -> None:
    clock = Clock()
    b = breaker(clock, open_s=30)
    b.record_failure("llm_rate_limited", retry_after_s=4)
    assert b.state is BreakerState.OPEN
    assert b.retry_in_s() == pytest.approx(4)
    clock.now += 4
    assert b.allow()


def test_retry_after_is_capped() -> None:
    b = breaker(Clock(), open_s=30, max_open_s=300)
    b.record_failure("llm_rate_limited", retry_after_s=86400)
    assert b.retry_in_s() == pytest.approx(300)


@pytest.mark.parametrize("said, deltas, expected", [
    # the fallback began again: the repeat is dropped, the rest kept
    ("The sun is out. It is warm", ["The ", "sun is ", "out. It ", "is warm", " and dry."],
     " and dry."),
    # it continued as asked: nothing dropped
    ("The sun is out.", [" It ", "is warm."], " It is warm."),
    # it said something else: nothing dropped
    ("The sun is out.", ["Sorry, ", "the sun is out."], "Sorry, the sun is out."),
    # it only repeated: all dropped
    ("The sun is out.", ["The sun ", "is out."], ""),
    # case and punctuation do not matter
    ("Well, the sun is out.", ["well the sun is out!", " Bye."], " Bye."),
    # nothing said yet: a pass-through
    ("", ["Hello ", "there."], "Hello there."),
])
def test_a_continuation_never_repeats_what_was_said(said: str, deltas: list[str],
                                                    expected: str) -> None:
    repeat = RepeatFilter(said)
    out = "".join(repeat.push(d) for d in deltas) + repeat.flush()
    assert out == expected


async def collect(chain: LLMChain, trace: ProviderTrace) -> str:
    TURN_TRACE.set(trace)
    return "".join([d async for d in chain.stream([{"role": "user", "content": "Hi"}])])


def chain_of(*servers: LLMServer, first_token_s: float = 0.5,
             clock: Clock | None = None, reply_s: float = 60.0) -> LLMChain:
    return LLMChain([
        Endpoint(OpenAIChat(base_url=s.base_url, api_key="k", model="m", timeout_s=2.0,
                            max_tokens=50, first_token_timeout_s=first_token_s,
                            reply_timeout_s=reply_s),
                 CircuitBreaker(f"llm{i}", BreakerPolicy(open_s=30),
                                clock=clock or Clock()))
        for i, s in enumerate(servers)])


@pytest.mark.asyncio
@pytest.mark.parametrize("failure", [ErrorStatus(429), ErrorStatus(500), Hang()])
async def test_the_chain_answers_from_the_fallback(failure: ErrorStatus | Hang) -> None:
    async with LLMServer() as primary, LLMServer() as fallback:
        primary.behaviour.always_fail = failure
        fallback.behaviour.reply = "From the fallback."
        trace = ProviderTrace()
        assert await collect(chain_of(primary, fallback), trace) == "From the fallback."
        assert trace.served_by.startswith(f"openai-compatible:{fallback.base_url}")
        assert len(trace.fallbacks) == 1 and trace.fallbacks[0].startswith(
            f"openai-compatible:{primary.base_url}")


@pytest.mark.asyncio
async def test_an_open_breaker_skips_the_primary_without_a_request() -> None:
    async with LLMServer() as primary, LLMServer() as fallback:
        primary.behaviour.always_fail = ErrorStatus(429, retry_after=60)
        chain = chain_of(primary, fallback)
        await collect(chain, ProviderTrace())
        assert len(primary.requests) == 1
        trace = ProviderTrace()
        await collect(chain, trace)
        assert len(primary.requests) == 1  # skipped: Retry-After 60 s is honoured
        assert trace.fallback.endswith("breaker open")
        assert chain.endpoints[0].breaker.diverted == 2


@pytest.mark.asyncio
async def test_a_reply_cut_mid_stream_is_finished_by_the_fallback_without_repeats() -> None:
    reply = "First sentence here. Second sentence there. Third one."
    async with LLMServer() as primary, LLMServer() as fallback:
        primary.behaviour.reply = fallback.behaviour.reply = reply
        primary.behaviour.always_fail = Drop(after_deltas=4)
        out = await collect(chain_of(primary, fallback), ProviderTrace())
        assert out == reply
        asked = fallback.requests[-1]["messages"]
        assert asked[-2] == {"role": "assistant", "content": "First sentence here. Second "}


@pytest.mark.asyncio
async def test_when_every_endpoint_fails_the_last_error_is_raised() -> None:
    async with LLMServer() as primary, LLMServer() as fallback:
        primary.behaviour.always_fail = ErrorStatus(500)
        fallback.behaviour.always_fail = ErrorStatus(503)
        with pytest.raises(ProviderError) as caught:
            await collect(chain_of(primary, fallback), ProviderTrace())
        assert caught.value.code == "llm_error"
        assert "503" in caught.value.message


@pytest.mark.asyncio
@pytest.mark.parametrize("garbage", ["json", "null_delta", "html"])
async def test_output_that_is_no_chat_stream_is_a_failure_the_breaker_counts(
        garbage: str) -> None:
    """A malformed stream, chunks with a null delta, an HTML page with status 200: each
    used to end the turn as a bug (no apology) or as an empty success."""
    async with LLMServer() as primary, LLMServer() as fallback:
        primary.behaviour.always_fail = Garbage(garbage)
        fallback.behaviour.reply = "From the fallback."
        chain = chain_of(primary, fallback)
        trace = ProviderTrace()
        out = await collect(chain, trace)
        assert out.endswith("From the fallback.")
        assert trace.fallbacks == [f"{chain.endpoints[0].model.name}: llm_bad_output"]
        await collect(chain, ProviderTrace())
        assert chain.endpoints[0].breaker.state is BreakerState.OPEN  # two failures of two
        with pytest.raises(ProviderError) as caught:
            await collect(chain_of(primary), ProviderTrace())
        assert caught.value.code == "llm_bad_output"


@pytest.mark.asyncio
async def test_a_reply_slower_than_its_deadline_is_cut() -> None:
    """A token every 0.3 s is within the inter-token timeout, for ever: the reply's
    deadline ends it."""
    async with LLMServer() as slow:
        slow.behaviour.reply = " ".join(["word"] * 50)
        slow.behaviour.token_interval = 0.3
        with pytest.raises(ProviderError) as caught:
            await collect(chain_of(slow, reply_s=1.0), ProviderTrace())
        assert caught.value.code == "llm_timeout"
        assert "longer than 1 s" in caught.value.message


def test_retry_after_zero_means_try_again_now() -> None:
    b = breaker(Clock())
    b.record_failure("llm_rate_limited", retry_after_s=0)
    assert b.state is BreakerState.CLOSED and b.allow()
