"""N workers on loopback behind the project's own Kamailio and HAProxy configurations
(deploy/), for the scale-out test and `python -m latency_tests.scale_bench`.

Each worker is a real `voice serve` process with its own HTTP port, SIP port and RTP
port range, advertising 127.0.0.1 in its SDP. Kamailio and HAProxy run in the
foreground from `deploy/kamailio/kamailio.cfg` and `deploy/haproxy/haproxy.cfg`; only
the addresses change: Kamailio's through its `-A` defines and a dispatcher list made
from `deploy/kamailio/dispatcher.list`, HAProxy's by rewriting its `bind`, `stats
socket` and `server` lines (`render_haproxy`). Everything else is the shipped file.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
KAMAILIO_CFG = DEPLOY / "kamailio" / "kamailio.cfg"
DISPATCHER_LIST = DEPLOY / "kamailio" / "dispatcher.list"
HAPROXY_CFG = DEPLOY / "haproxy" / "haproxy.cfg"
_SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
KAMAILIO = shutil.which("kamailio", path=_SBIN)
KAMCMD = shutil.which("kamcmd", path=_SBIN)
HAPROXY = shutil.which("haproxy", path=_SBIN)
RTP_PORTS_PER_WORKER = 40
STARTUP_TIMEOUT_S = 120.0

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_rtp_base(count: int) -> int:
    """A base of `count` consecutive ports, picked from a free port (a worker skips any
    port of its range that turns out to be taken)."""
    base = free_port(socket.SOCK_DGRAM) & ~1
    return base if base + count < 65535 else 20000


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# --- the shipped configurations, with this machine's addresses --------------------------

def render_haproxy(template: str, bind: str, servers: list[tuple[str, str]],
                   stats_socket: Path) -> str:
    """The shipped haproxy.cfg with its frontend `bind`, `stats socket` and backend
    `server` lines replaced; the rest (balance, checks, timeouts, retries) as shipped."""
    text, binds = re.subn(r"(?m)^(\s*bind\s+)\S+", lambda m: m.group(1) + bind, template)
    text, sockets = re.subn(r"(?m)^(\s*stats socket\s+)\S+",
                            lambda m: m.group(1) + str(stats_socket), text)
    lines = text.splitlines()
    server_at = [i for i, line in enumerate(lines) if re.match(r"\s*server\s+\S+\s+\S+", line)]
    if binds != 1 or sockets != 1 or not server_at:
        raise ValueError("haproxy.cfg: expected one bind, one stats socket and server lines")
    indent = re.match(r"\s*", lines[server_at[0]])
    new = [f"{indent.group(0) if indent else '    '}server {name} {address}"
           for name, address in servers]
    kept = [line for i, line in enumerate(lines) if i not in server_at]
    first = server_at[0]
    return "\n".join(kept[:first] + new + kept[first:]) + "\n"


def render_dispatcher_list(template: str, addresses: list[str]) -> str:
    """One line per worker address (host:port), with the flags, priority and
    attributes of the shipped list's first entry and its own `duid`."""
    entries = [line.split() for line in template.splitlines()
               if line.strip() and not line.lstrip().startswith("#")]
    if not entries or len(entries[0]) < 5:
        raise ValueError("dispatcher.list: expected 'setid uri flags priority attrs' lines")
    setid, _, flags, priority, attrs = entries[0][:5]
    lines = []
    for n, address in enumerate(addresses, 1):
        own = re.sub(r"duid=[^;]*", f"duid=worker{n}", attrs)
        lines.append(f"{setid} sip:{address} {flags} {priority} {own}")
    return "\n".join(lines) + "\n"


# --- the processes ------------------------------------------------------------------------

@dataclass(frozen=True)
class DispatcherTarget:
    flags: str  # "AX"/"AP": active; "IP": inactive (probed until it answers); "TP": trying
    load: int  # calls in progress that this proxy routed there (call-load distribution)

    @property
    def active(self) -> bool:
        return self.flags.startswith("A")


@dataclass
class Worker:
    name: str
    http_port: int
    sip_port: int
    rtp_ports: str
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def sip_address(self) -> str:
        return f"127.0.0.1:{self.sip_port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def env(self) -> dict[str, str]:
        return {"VOICE_SIP_PORT": str(self.sip_port), "VOICE_SIP_ADVERTISE": "127.0.0.1",
                "VOICE_SIP_RTP_PORTS": self.rtp_ports}

    def start(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1",
             "--port", str(self.http_port)],
            stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT,
            env={**os.environ, **env, **self.env()})

    def wait_healthy(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"{self.name} exited during startup:\n{self.log()}")
            try:
                if http_get(f"{self.url}/healthz", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not become healthy:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> Samples:
        status, body = http_get(f"{self.url}/metrics")
        if status != 200:
            raise RuntimeError(f"{self.name} /metrics answered {status}")
        found: Samples = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return found

    def sessions(self, transport: str, kind: str = "total") -> int:
        """Sessions of one transport (any pipeline): started ("total") or open ("active")."""
        name = f"voice_sessions_{kind}"
        return int(sum(v for (n, labels), v in self.metrics().items()
                       if n == name and ("transport", transport) in labels))

    def signal(self, number: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(number)

    def stop(self, timeout: float = 20.0) -> int | None:
        """Stop at once (SIGINT: open sessions are closed, no drain)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                return self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()


@dataclass
class Cluster:
    """N workers, HAProxy in front for HTTP (`http_url`) and Kamailio for SIP
    (`sip_address`), all on 127.0.0.1."""

    folder: Path
    workers: list[Worker]
    http_port: int = field(default_factory=free_port)
    sip_port: int = field(default_factory=lambda: free_port(socket.SOCK_DGRAM))
    kamailio: subprocess.Popen[bytes] | None = None
    haproxy: subprocess.Popen[bytes] | None = None

    @classmethod
    def plan(cls, folder: Path, count: int) -> Cluster:
        base = free_rtp_base(count * RTP_PORTS_PER_WORKER)
        workers = []
        for n in range(count):
            low = base + n * RTP_PORTS_PER_WORKER
            workers.append(Worker(f"worker{n + 1}", free_port(), free_port(socket.SOCK_DGRAM),
                                  f"{low}-{low + RTP_PORTS_PER_WORKER - 1}",
                                  folder / f"worker{n + 1}.log"))
        return cls(folder, workers)

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def sip_address(self) -> str:
        return f"127.0.0.1:{self.sip_port}"

    @property
    def stats_socket(self) -> Path:
        return self.folder / "haproxy.sock"

    @property
    def ctl_socket(self) -> Path:
        return self.folder / "kamailio_ctl"

    def start(self, env: dict[str, str], sip: bool = True) -> None:
        """Workers first (their models load in parallel), then the balancers, then wait
        until both balancers see every worker up."""
        if HAPROXY is None or (sip and KAMAILIO is None):
            raise RuntimeError("kamailio and haproxy are needed (scripts/setup.sh --test)")
        for worker in self.workers:
            worker.start(env)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        for worker in self.workers:
            worker.wait_healthy(deadline)
        self.haproxy = self._start_haproxy()
        if sip:
            self.kamailio = self._start_kamailio()
        self.wait_balanced(deadline)

    def _start_haproxy(self) -> subprocess.Popen[bytes]:
        config = self.folder / "haproxy.cfg"
        config.write_text(render_haproxy(
            HAPROXY_CFG.read_text(), f"127.0.0.1:{self.http_port}",
            [(w.name, f"127.0.0.1:{w.http_port}") for w in self.workers], self.stats_socket))
        assert HAPROXY is not None
        return subprocess.Popen([HAPROXY, "-db", "-f", str(config)],
                                stdout=(self.folder / "haproxy.log").open("wb"),
                                stderr=subprocess.STDOUT)

    def _start_kamailio(self) -> subprocess.Popen[bytes]:
        listing = self.folder / "dispatcher.list"
        listing.write_text(render_dispatcher_list(
            DISPATCHER_LIST.read_text(), [w.sip_address for w in self.workers]))
        defines = {"LISTEN": f"udp:127.0.0.1:{self.sip_port}",
                   "DISPATCHER_LIST": f'"{listing}"', "RUNTIME_DIR": f'"{self.folder}"',
                   "CTL_SOCKET": f'"unix:{self.ctl_socket}"'}
        assert KAMAILIO is not None
        command = [KAMAILIO, "-DD", "-E", "-f", str(KAMAILIO_CFG)]
        for name, value in defines.items():
            command += ["-A", f"{name}={value}"]
        return subprocess.Popen(command, stdout=(self.folder / "kamailio.log").open("wb"),
                                stderr=subprocess.STDOUT)

    # --- what the balancers think -----------------------------------------------------

    def haproxy_states(self) -> dict[str, str]:
        """Each worker's state in HAProxy: UP, DOWN, MAINT, ... (`show stat`)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(str(self.stats_socket))
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        states = {}
        for line in data.decode().splitlines():
            fields = line.split(",")
            if len(fields) > 17 and fields[0] == "voice_workers" and fields[1] != "BACKEND":
                states[fields[1]] = fields[17].split()[0]
        return states

    def kamailio_targets(self) -> dict[str, DispatcherTarget]:
        """Each worker's entry in Kamailio's dispatcher (`kamcmd dispatcher.list`)."""
        if self.kamailio is None or KAMCMD is None:
            return {}
        out = subprocess.run([KAMCMD, "-s", f"unix:{self.ctl_socket}", "dispatcher.list"],
                             capture_output=True, text=True, timeout=5, check=True).stdout
        by_address = {w.sip_address: w.name for w in self.workers}
        return {by_address[uri]: DispatcherTarget(flags, int(load)) for uri, flags, load in
                re.findall(r"URI: sip:(\S+)\s+FLAGS: (\w+).*?DLGLOAD: (\d+)", out, re.DOTALL)
                if uri in by_address}

    def wait_balanced(self, deadline: float) -> None:
        """Until HAProxy has every live worker UP and Kamailio has it active."""
        want = {w.name for w in self.workers if w.alive}
        while True:
            try:
                up = {n for n, s in self.haproxy_states().items() if s == "UP"}
                if self.kamailio is not None:
                    up &= {n for n, t in self.kamailio_targets().items() if t.active}
                if want <= up:
                    return
            except (OSError, subprocess.SubprocessError):
                pass
            for name, process in (("haproxy", self.haproxy), ("kamailio", self.kamailio)):
                if process is not None and process.poll() is not None:
                    raise RuntimeError(f"{name} exited:\n{self.log(name)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"balancers never saw every worker up: haproxy "
                                   f"{self.haproxy_states()}, kamailio {self.kamailio_targets()}")
            time.sleep(0.2)

    def log(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        for process in (self.kamailio, self.haproxy):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
