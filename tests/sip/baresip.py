"""Running baresip (Debian package baresip-core) from tests: a throw-away config
folder, the `aufile` module as microphone (an 8 kHz 16-bit WAV), `ctrl_tcp` to dial,
send DTMF and hang up, and `-n 127.0.0.1` so its SDP names loopback."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
from pathlib import Path

BARESIP = shutil.which("baresip")
MODULES = Path("/usr/lib/baresip/modules")


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pcm_wav(source: str | Path, target: Path, lead_silence_s: float = 0.5,
            trailing_silence_s: float = 8.0) -> Path:
    """8 kHz mono 16-bit WAV with a little silence before the speech (sox)."""
    subprocess.run(["sox", str(source), "-r", "8000", "-c", "1", "-b", "16", "-e", "signed",
                    str(target), "pad", str(lead_silence_s), str(trailing_silence_s)], check=True)
    return target


class Baresip:
    def __init__(self, folder: Path, microphone: Path, auto_answer: bool = False) -> None:
        self.folder = folder
        self.sip_port = free_port()
        self.ctrl_port = free_port(socket.SOCK_STREAM)
        self.microphone = microphone
        self.auto_answer = auto_answer
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.log_path = folder / "baresip.log"
        self.events: list[dict[str, object]] = []  # ctrl_tcp events read so far

    def _write_config(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        modules = ["g711.so", "aufile.so", "account.so", "menu.so", "ctrl_tcp.so"]
        lines = [f"module_path {MODULES}", f"sip_listen 127.0.0.1:{self.sip_port}",
                 f"audio_source aufile,{self.microphone}", "audio_player aufile,/dev/null",
                 "audio_alert aufile,/dev/null", "ausrc_srate 8000", "auplay_srate 8000",
                 "rtp_ports 20000-40000", f"ctrl_tcp_listen 127.0.0.1:{self.ctrl_port}",
                 "dns_server 127.0.0.1:53", "sip_trans_def udp"]
        lines += [f"module {m}" for m in modules[:2]] + [f"module_app {m}" for m in modules[2:]]
        (self.folder / "config").write_text("\n".join(lines) + "\n")
        answer = ";answermode=auto" if self.auto_answer else ""
        (self.folder / "accounts").write_text(
            f"<sip:tester@127.0.0.1:{self.sip_port};transport=udp>;regint=0;"
            f"audio_codecs=PCMU,PCMA{answer}\n")

    async def start(self) -> None:
        assert BARESIP is not None, "baresip is not installed (apt-get install baresip-core)"
        self._write_config()
        self.process = await asyncio.create_subprocess_exec(
            BARESIP, "-f", str(self.folder), "-n", "127.0.0.1",
            stdin=asyncio.subprocess.DEVNULL, stdout=self.log_path.open("wb"),
            stderr=asyncio.subprocess.STDOUT)
        for _ in range(100):
            try:
                self._reader, self._writer = await asyncio.open_connection("127.0.0.1",
                                                                           self.ctrl_port)
                return
            except OSError:
                await asyncio.sleep(0.1)
        raise RuntimeError(f"baresip did not start:\n{self.log()}")

    async def command(self, command: str, params: str = "") -> dict[str, object]:
        assert self._reader is not None and self._writer is not None
        body = json.dumps({"command": command, "params": params, "token": command}).encode()
        self._writer.write(f"{len(body)}:".encode() + body + b",")
        await self._writer.drain()
        while True:
            length = int((await self._reader.readuntil(b":"))[:-1])
            message = json.loads(await self._reader.readexactly(length))
            await self._reader.readexactly(1)
            if message.get("response"):
                return dict(message)
            self.events.append(message)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                async with asyncio.timeout(5):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
