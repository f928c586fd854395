"""The regression corpus as the runner sees it: the manifest of
latency_tests/corpus/regression/ (made by `python -m latency_tests.corpus.make_corpus`)
and which of its clips each transport plays."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latency_tests.suite.metrics import SPEECH_KINDS

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "regression"
KINDS = (*SPEECH_KINDS, "interruption", "no_turn")
TELEPHONE_TRANSPORTS = ("sip", "twilio", "telnyx")  # 8 kHz G.711 on the wire


@dataclass(frozen=True)
class Utterance:
    name: str
    path: Path
    kind: str
    text: str
    rate: int
    speech_start_s: float
    speech_end_s: float
    snr: int | None
    quick: bool
    band: str
    source: str  # the clean clip this one was made from
    bed_start_s: float | None = None  # from here on the clip is background, looped after it

    @property
    def speaks(self) -> bool:
        """A clip that must be answered (not an interruption, not a no-turn stretch)."""
        return self.kind in SPEECH_KINDS

    @property
    def start_sample(self) -> int:
        return round(self.speech_start_s * self.rate)

    @property
    def last_voiced_sample(self) -> int:
        return max(0, round(self.speech_end_s * self.rate) - 1)

    @property
    def condition(self) -> str:
        """clean, snr20, snr10 or telephone: what the clip adds to its source."""
        if self.snr is not None:
            return f"snr{self.snr}"
        return "telephone" if self.band == "telephone" else "clean"


def load_corpus(folder: Path = CORPUS) -> list[Utterance]:
    manifest: dict[str, dict[str, Any]] = json.loads((folder / "manifest.json").read_text())
    return [Utterance(name=name, path=folder / e["file"], kind=e["kind"], text=e["text"],
                      rate=int(e["rate"]), speech_start_s=float(e["speech_start_s"]),
                      speech_end_s=float(e["speech_end_s"]), snr=e.get("snr"),
                      quick=bool(e.get("quick")), band=e.get("band", "wide"),
                      source=e.get("source", name), bed_start_s=e.get("bed_start_s"))
            for name, e in manifest.items()]


def select(corpus: list[Utterance], transport: str, quick: bool = False) -> list[Utterance]:
    """The clips one run plays: telephone-band clips over SIP and the telephony media
    streams, wide-band ones otherwise;
    only the quick set with `quick`."""
    band = "telephone" if transport in TELEPHONE_TRANSPORTS else "wide"
    chosen = [u for u in corpus if u.band == band]
    if quick:
        quick_sources = {u.name for u in corpus if u.quick}
        chosen = [u for u in chosen if u.source in quick_sources and u.snr is None]
    return chosen
