"""Running sipp (Debian package sip-tester) from tests: scenario templates under
tests/sip/scenarios/ with `${name}` placeholders, one call, bounded in time."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from string import Template

SCENARIOS = Path(__file__).parent / "scenarios"
SIPP = shutil.which("sipp")


@dataclass
class SippResult:
    returncode: int
    output: str
    errors: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def g711_wav(source: str | Path, target: Path, encoding: str) -> Path:
    """An 8 kHz mono G.711 WAV (what sipp's rtp_stream plays), made with sox."""
    sox_encoding = {"PCMU": "mu-law", "PCMA": "a-law"}[encoding]
    subprocess.run(["sox", str(source), "-r", "8000", "-c", "1", "-e", sox_encoding,
                    str(target)], check=True)
    return target


def scenario(name: str, folder: Path, **values: object) -> Path:
    text = Template((SCENARIOS / f"{name}.xml").read_text()).substitute(
        {k: str(v) for k, v in values.items()})
    path = folder / f"{name}.xml"
    path.write_text(text)
    return path


async def run_sipp(scenario_path: Path, target: str | None, folder: Path,
                   timeout: float = 60.0, extra: tuple[str, ...] = ()) -> SippResult:
    """One call of the scenario against `target` (host:port), or as a server (None)."""
    assert SIPP is not None, "sipp is not installed (apt-get install sip-tester)"
    process = await asyncio.create_subprocess_exec(
        SIPP, *([target] if target else []), "-sf", str(scenario_path), "-m", "1", "-l", "1",
        "-i", "127.0.0.1", "-mi", "127.0.0.1", "-timeout", f"{int(timeout)}s",
        "-timeout_error", "-nostdin", "-trace_err", "-error_file", str(folder / "sipp_err.log"),
        *extra, cwd=str(folder), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(timeout + 10):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        out, err = await process.communicate()
    errors = (folder / "sipp_err.log").read_text(errors="replace") \
        if (folder / "sipp_err.log").exists() else ""
    return SippResult(process.returncode or 0, out.decode(errors="replace")[-3000:],
                      err.decode(errors="replace")[-2000:] + errors[-3000:])
