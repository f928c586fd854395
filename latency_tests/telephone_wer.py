"""How much of the telephone band's word error is the model's, and how much the call's
path? The latency suite's telephone-band clips (latency_tests/corpus/regression,
`NAME_tel`: 300-3400 Hz at 8 kHz) transcribed straight by the service's own decoder,
with no service, no turn-taking and no network, against the same clips at 16 kHz:

- `wide`: the clean 16 kHz clip;
- `telephone, clean resampling`: the 8 kHz clip brought to 16 kHz offline by soxr's
  high-quality resampler;
- `telephone, as a call hears it`: the 8 kHz clip through G.711 mu-law and the
  service's streaming 8 -> 16 kHz resampler (`voice.audio.StreamResampler`), 20 ms at
  a time, as SIP, Twilio and Telnyx calls reach Whisper.

When the last two agree, the path loses no words and what is left is the model's
(Whisper on band-limited speech). Each beam size is a row.

    python -m latency_tests.telephone_wer [--model PATH] [--beam 1,5]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np

from latency_tests.suite.metrics import wer
from pipelines.providers.stt import WhisperSTT
from voice.audio import Int16Array, StreamResampler, resample
from wire.rtp import g711

CORPUS = Path(__file__).parent / "corpus" / "regression"
SPEECH_KINDS = ("command", "question", "paused")
CALL_FRAME = 160  # 20 ms at 8 kHz: one RTP packet
ULAW = 0  # RTP payload type of G.711 mu-law


def _read(name: str) -> tuple[Int16Array, int]:
    import soundfile

    audio, rate = soundfile.read(CORPUS / name, dtype="int16")
    return np.asarray(audio, np.int16), int(rate)


def as_a_call_hears_it(audio: Int16Array) -> Int16Array:
    """8 kHz audio through G.711 mu-law and the service's streaming resampler."""
    coded = g711.decode(g711.encode(audio, ULAW), ULAW)
    up = StreamResampler(8000, 16000)
    return np.concatenate([up.process(coded[i: i + CALL_FRAME])
                           for i in range(0, len(coded), CALL_FRAME)])


WAYS: dict[str, Callable[[Int16Array, Int16Array], Int16Array]] = {
    "wide": lambda wide, tel: wide,
    "telephone, clean resampling": lambda wide, tel: resample(tel, 8000, 16000),
    "telephone, as a call hears it": lambda wide, tel: as_a_call_hears_it(tel),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="", help="faster-whisper model (default: bundled)")
    parser.add_argument("--beam", default="1,5", help="beam sizes, comma-separated")
    args = parser.parse_args()
    manifest = json.loads((CORPUS / "manifest.json").read_text())
    pairs = [(manifest[name[:-4]], clip) for name, clip in manifest.items()
             if name.endswith("_tel") and clip["kind"] in SPEECH_KINDS
             and name[:-4] in manifest]
    audio = [(_read(wide["file"])[0], _read(tel["file"])[0], tel["text"])
             for wide, tel in pairs]
    stt = WhisperSTT.load(args.model, "cpu", "int8", 1, "en")
    print(f"{len(pairs)} clips, model {stt.name}")
    print("| beam | " + " | ".join(WAYS) + " | gap (call - wide) |")
    print("|---|" + "---|" * (len(WAYS) + 1))
    for beam in (int(b) for b in args.beam.split(",")):
        decoder = stt.with_beam(beam)
        means = {}
        for way, make in WAYS.items():
            means[way] = statistics.mean(
                wer(text, decoder.transcribe_sync(make(wide, tel)).text)
                for wide, tel, text in audio)
        gap = means["telephone, as a call hears it"] - means["wide"]
        print(f"| {beam} | " + " | ".join(f"{m:.3f}" for m in means.values())
              + f" | {gap:+.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
