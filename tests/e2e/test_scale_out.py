"""Three real workers behind a real Kamailio (SIP) and a real HAProxy (HTTP), both
started from the project's own configurations in deploy/ (latency_tests/cluster.py):
sessions and calls through the balancers are understood and spread over every worker;
a killed worker gets nothing new once the documented health-check interval has passed;
a drained worker finishes its calls while new ones go to the others, and none is lost.

The three tests share the cluster and each works with the workers still alive, so they
can run alone or in order (the kill leaves two workers, the drain needs two)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from clients.audiofile import load_audio
from clients.base import CallClient
from clients.sip_client import SipPhone
from clients.ws_client import VoiceClient
from latency_tests.cluster import HAPROXY, KAMAILIO, KAMCMD, Cluster, Worker, http_get
from latency_tests.llm_server import LLMServer
from tests.conftest import word_recall

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session"),
              pytest.mark.skipif(KAMAILIO is None or KAMCMD is None or HAPROXY is None,
                                 reason="the Debian packages kamailio and haproxy are needed "
                                 "(scripts/setup.sh --test installs them)")]

WORKER_ENV = {"VOICE_STT_THREADS": "1", "VOICE_DRAIN_TIMEOUT_S": "120",
              "VOICE_IDLE_TIMEOUT_S": "30", "VOICE_LOG_LEVEL": "INFO",
              "OPENAI_API_KEY": "test-key-123"}
# docs/deploy.md: a worker that dies is out of both balancers within 3 s
DETECTION_S = 3.0
# tiny.en on telephone-band (SIP) audio mishears "joke" ("a no come outcome") and
# "stop" every time, and "train" often; it hears these two right
SPOKEN = {"ws": ["weather", "joke", "train", "name"], "sip": ["weather", "name"]}
RECALL = {"ws": 0.8, "sip": 0.7}  # the telephone band loses some words
STAGGER_S = 0.3


@pytest.fixture(scope="module")
def cluster(llm: LLMServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    running = Cluster.plan(tmp_path_factory.mktemp("scale"), 3)
    try:
        running.start({**WORKER_ENV, "OPENAI_BASE_URL": llm.base_url})
        yield running
    finally:
        running.stop()


# --- callers ------------------------------------------------------------------------------

@dataclass
class Caller:
    transport: str  # ws (through HAProxy) or sip (through Kamailio)
    utterance: dict[str, str]
    client: CallClient = field(init=False)

    def connect_to(self, cluster: Cluster) -> None:
        self.client = (VoiceClient(cluster.http_url) if self.transport == "ws"
                       else SipPhone(cluster.sip_address))

    async def turn(self) -> None:
        """Say the utterance, listen until the reply has been sent, hang up."""
        client = self.client
        try:
            await client.stream(load_audio(self.utterance["path"], client.sample_rate))
            async with asyncio.timeout(30):
                while not client.events_of("response.done") and not client.closed:
                    await client.stream_silence(0.1)
        finally:
            await client.close()

    def check_understood(self) -> None:
        heard = [e["text"] for e in self.client.events_of("transcript.final")]
        done = self.client.events_of("response.done")
        expected = self.utterance["text"]
        assert heard and word_recall(expected, heard[0]) >= RECALL[self.transport], \
            (self.transport, expected, heard)
        assert done and done[0]["text"].startswith("You said:"), (self.transport, done)
        assert self.client.first_audible_ns(0) is not None, "no reply audio was heard"


def callers(transport: str, count: int, utterances: dict[str, dict[str, str]],
            first: int = 0) -> list[Caller]:
    names = SPOKEN[transport]
    return [Caller(transport, utterances[names[(first + i) % len(names)]])
            for i in range(count)]


async def call(cluster: Cluster, caller: Caller, delay_s: float) -> Caller:
    await asyncio.sleep(delay_s)
    caller.connect_to(cluster)
    await caller.client.connect(timeout=15)
    await caller.turn()
    return caller


async def call_all(cluster: Cluster, group: list[Caller], stagger_s: float = STAGGER_S) -> None:
    """The callers at once (starts staggered), each one turn; every one understood."""
    async with asyncio.TaskGroup() as tg:
        for i, caller in enumerate(group):
            tg.create_task(call(cluster, caller, i * stagger_s), name=f"caller-{i}")
    for caller in group:
        caller.check_understood()


async def hold(cluster: Cluster, caller: Caller, delay_s: float, talk: asyncio.Event) -> None:
    """Connect, keep the line open with silence until `talk`, then one turn."""
    await asyncio.sleep(delay_s)
    caller.connect_to(cluster)
    await caller.client.connect(timeout=15)
    while not talk.is_set():
        await caller.client.stream_silence(0.1)
    await caller.turn()


async def keep_open(client: CallClient, talk: asyncio.Event) -> None:
    try:
        while not talk.is_set():
            await client.stream_silence(0.1)
    finally:
        await client.close()


def ws_active(workers: list[Worker]) -> dict[str, int]:
    return {w.name: w.sessions("ws", "active") for w in workers}


async def extra_session(cluster: Cluster, workers: list[Worker]) -> tuple[VoiceClient, str]:
    """One more WebSocket session through HAProxy, and the worker it landed on."""
    before = await asyncio.to_thread(ws_active, workers)
    client = VoiceClient(cluster.http_url)
    await client.connect(timeout=15)
    await poll(lambda: sum(ws_active(workers).values()) > sum(before.values()), 5,
               "the extra session")
    after = await asyncio.to_thread(ws_active, workers)
    return client, next(name for name in after if after[name] > before[name])


async def close_on(client: VoiceClient, worker: Worker) -> None:
    """Close a session and wait until `worker` has let it go."""
    before = (await asyncio.to_thread(ws_active, [worker]))[worker.name]
    await client.close()
    await poll(lambda: ws_active([worker])[worker.name] < before, 5, "the session's close")


async def weigh_down(cluster: Cluster, tg: asyncio.TaskGroup, victim: Worker,
                     others: list[Worker], talk: asyncio.Event) -> None:
    """Open extra WebSocket sessions through HAProxy, keeping those that land on the
    other workers, until each of them holds one more than `victim`: leastconn then
    sends the next new session to `victim`."""
    workers = [victim, *others]
    for attempt in range(4 * len(others)):
        counts = await asyncio.to_thread(ws_active, workers)
        if all(counts[w.name] > counts[victim.name] for w in others):
            return
        client, landed = await extra_session(cluster, workers)
        if landed == victim.name:
            await close_on(client, victim)  # then another worker is next in line
        else:
            tg.create_task(keep_open(client, talk), name=f"extra-{attempt}")
    raise AssertionError("HAProxy kept sending the extra sessions to the same worker")


# --- what the workers saw -----------------------------------------------------------------

def totals(workers: list[Worker]) -> dict[str, dict[str, int]]:
    return {w.name: {t: w.sessions(t) for t in ("ws", "sip")} for w in workers}


def started_since(before: dict[str, dict[str, int]], workers: list[Worker],
                  transport: str) -> dict[str, int]:
    now = totals(workers)
    return {name: now[name][transport] - before[name][transport] for name in before}


async def poll(condition: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.2) -> None:
    """Wait for another process's state, which no event of ours signals."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(condition):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)


def live(cluster: Cluster) -> list[Worker]:
    return [w for w in cluster.workers if w.alive]


async def first_in_line(cluster: Cluster) -> Worker:
    """The live worker Kamailio sends the next call to when loads are equal: the first
    active one in its list (call-load distribution breaks ties by list order)."""
    targets = await asyncio.to_thread(cluster.kamailio_targets)
    name = next(name for name, target in targets.items() if target.active)
    return next(w for w in cluster.workers if w.name == name)


def failovers(cluster: Cluster) -> str:
    """How often the balancers moved a new session on (their logs), for the record."""
    kamailio = cluster.log("kamailio").count("(failover)")
    haproxy = sum(1 for line in cluster.log("haproxy").splitlines()
                  if "/+" in line and "GET /ws" in line)
    return f"Kamailio failed over {kamailio} call(s), HAProxy redispatched {haproxy} session(s)"


# --- a dead worker's addresses, watched ---------------------------------------------------

class SipTrap(asyncio.DatagramProtocol):
    """Listens where a killed worker's SIP port was and never answers: the methods of
    the requests that still arrive there (probes, or calls that should not)."""

    def __init__(self) -> None:
        self.methods: list[str] = []

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.methods.append(data.split(b" ", 1)[0].decode(errors="replace"))


@dataclass
class HttpTrap:
    """Accepts connections where a killed worker's HTTP port was, records each request
    line and closes without an answer (a check then fails at once, as on a refusal)."""

    requests: list[str] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(2):
                line = await reader.readline()
            self.requests.append(line.decode(errors="replace").strip())
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()


# --- the tests ----------------------------------------------------------------------------

async def test_sessions_and_calls_are_understood_and_spread_over_every_worker(
        cluster: Cluster, fresh_llm: LLMServer,
        utterances: dict[str, dict[str, str]]) -> None:
    workers = live(cluster)
    assert len(workers) == 3
    before = await asyncio.to_thread(totals, workers)
    await call_all(cluster, callers("ws", 6, utterances))
    phones = callers("sip", 6, utterances, first=1)
    await call_all(cluster, phones)
    for transport in ("ws", "sip"):
        started = await asyncio.to_thread(started_since, before, workers, transport)
        assert sum(started.values()) == 6 and min(started.values()) >= 1, (transport, started)
    # the proxy recorded its route: ACK, BYE and the workers' MESSAGEs went through it,
    # so every BYE took its call's load off the worker again
    for caller in phones:
        assert isinstance(caller.client, SipPhone) and caller.client.call is not None
        assert caller.client.call.dialog.route_set == [f"<sip:{cluster.sip_address};lr>"]
    targets = await asyncio.to_thread(cluster.kamailio_targets)
    assert {name: t.load for name, t in targets.items()} == {w.name: 0 for w in workers}


async def test_a_killed_worker_gets_no_new_session_after_the_health_check_interval(
        cluster: Cluster, fresh_llm: LLMServer,
        utterances: dict[str, dict[str, str]]) -> None:
    workers = live(cluster)
    assert len(workers) >= 2
    victim = await first_in_line(cluster)
    others = [w for w in workers if w is not victim]
    before = await asyncio.to_thread(totals, others)
    assert victim.process is not None
    victim.signal(signal.SIGKILL)
    await asyncio.to_thread(victim.process.wait)
    killed_at = time.monotonic()
    loop = asyncio.get_running_loop()
    sip_socket, sip_trap = await loop.create_datagram_endpoint(
        SipTrap, local_addr=("127.0.0.1", victim.sip_port))
    http_trap = HttpTrap()
    http_server = await asyncio.start_server(http_trap.handle, "127.0.0.1", victim.http_port)
    try:
        async with asyncio.TaskGroup() as tg:
            # at once, before any check can have noticed: the call goes to the dead
            # worker first (first in line), gets no answer, and Kamailio moves it on
            tg.create_task(call_all(cluster, callers("sip", 1, utterances)
                                    + callers("ws", 1, utterances)), name="at-once")
            await asyncio.sleep(DETECTION_S - (time.monotonic() - killed_at))
            seen_sip, seen_http = len(sip_trap.methods), len(http_trap.requests)
            tg.create_task(call_all(cluster, callers("ws", 3, utterances, first=1)
                                    + callers("sip", 3, utterances, first=1)),
                           name="after-the-interval")
    finally:
        http_server.close()
        sip_socket.close()
    assert "INVITE" in sip_trap.methods[:seen_sip], sip_trap.methods
    # from the interval on, the traps, where the balancers look for the worker, got
    # their probes and nothing else
    late_sip, late_http = sip_trap.methods[seen_sip:], http_trap.requests[seen_http:]
    assert late_sip and set(late_sip) == {"OPTIONS"}, late_sip
    assert late_http and all(r.startswith("GET /readyz") for r in late_http), late_http
    for transport, count in (("ws", 4), ("sip", 4)):
        started = await asyncio.to_thread(started_since, before, others, transport)
        assert sum(started.values()) == count, (transport, started)
    assert (await asyncio.to_thread(cluster.haproxy_states))[victim.name] == "DOWN"
    assert not (await asyncio.to_thread(cluster.kamailio_targets))[victim.name].active


async def test_a_drained_worker_finishes_its_calls_while_new_ones_go_elsewhere(
        cluster: Cluster, fresh_llm: LLMServer,
        utterances: dict[str, dict[str, str]]) -> None:
    workers = live(cluster)
    assert len(workers) >= 2
    talk = asyncio.Event()
    held = callers("ws", len(workers), utterances) + callers("sip", len(workers), utterances)
    async with asyncio.TaskGroup() as tg:
        for i, caller in enumerate(held):
            tg.create_task(hold(cluster, caller, i * STAGGER_S, talk), name=f"held-{i}")
        # one session and one call open on every worker
        await poll(lambda: all(w.sessions(t, "active") == 1 for w in workers
                               for t in ("ws", "sip")), 20, "a session and a call per worker")
        # the worker both balancers send the next new session to (equal call loads:
        # Kamailio's first in line; fewest connections: HAProxy's)
        victim = await first_in_line(cluster)
        others = [w for w in workers if w is not victim]
        await weigh_down(cluster, tg, victim, others, talk)
        assert victim.process is not None
        victim_before = await asyncio.to_thread(totals, [victim])
        others_before = await asyncio.to_thread(totals, others)
        victim.signal(signal.SIGTERM)
        drain_started = time.monotonic()
        await poll(lambda: http_get(f"{victim.url}/readyz")[0] == 503, 5, "the drain", 0.01)
        # new callers at once, before the balancers' checks can have noticed: the first
        # of each kind reaches the draining worker, gets 503 there, and the balancer
        # tries the next worker; meanwhile both balancers take it out of rotation
        async with asyncio.TaskGroup() as meanwhile:
            meanwhile.create_task(call_all(cluster, callers("ws", 2, utterances, first=1)
                                           + callers("sip", 2, utterances, first=1),
                                           stagger_s=0.0), name="new-callers")
            meanwhile.create_task(poll(
                lambda: cluster.haproxy_states()[victim.name] == "DOWN"
                and not cluster.kamailio_targets()[victim.name].active,
                DETECTION_S - (time.monotonic() - drain_started),
                "both balancers to take the draining worker out"), name="out-of-rotation")
        assert await asyncio.to_thread(totals, [victim]) == victim_before
        for transport in ("ws", "sip"):
            started = await asyncio.to_thread(started_since, others_before, others, transport)
            assert sum(started.values()) == 2, (transport, started)
        assert victim.alive, "the worker must wait for its calls"
        talk.set()
    for caller in held:
        caller.check_understood()
    assert await asyncio.to_thread(victim.process.wait, 30) == 0
    log = victim.log()
    assert "drained in" in log and "drain timeout" not in log, log[-2000:]
    print(f"\n{failovers(cluster)}")
