"""Does a denoiser help? The latency suite's noisy clips (10 and 20 dB SNR, the noise
beds of latency_tests/corpus/regression), three ways: as they are, through RNNoise
(the `denoiser rnnoise` setting: the streaming path the service runs, frame by frame)
and through noisereduce's spectral gating (on the whole clip: it needs context, so
it is an upper bound of what it could do live). For each:

- WER of the bundled Whisper on the clip;
- false onsets: the turn detector's speech onsets per minute of noise alone (the clips'
  beds without their speech, looped): each would pause a playing reply, and a long
  one would start a turn;
- CPU: milliseconds of CPU per second of audio.

    python -m latency_tests.denoise_bench
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from latency_tests.suite.metrics import wer
from pipelines.providers.stt import WhisperSTT
from voice.audio import Int16Array, resample
from voice.settings import Settings
from voice.turntaking.denoise import RNNoise
from voice.turntaking.detector import SpeechOnset
from voice.turntaking.listener import Listener, TurnConfig

CORPUS = Path(__file__).parent / "corpus" / "regression"
FRAME = 320  # 20 ms at 16 kHz
NOISE_S = 60.0

Denoise = Callable[[Int16Array], Int16Array]


def _streamed(audio: Int16Array) -> Int16Array:
    denoiser = RNNoise()
    return np.concatenate([denoiser(audio[i: i + FRAME])
                           for i in range(0, len(audio) - FRAME + 1, FRAME)])


def _spectral_gate(audio: Int16Array) -> Int16Array:
    import noisereduce

    cleaned = noisereduce.reduce_noise(y=audio.astype(np.float32), sr=16000, stationary=True)
    out: Int16Array = np.clip(cleaned, -32768, 32767).astype(np.int16)
    return out


WAYS: dict[str, Denoise] = {"none": lambda audio: audio, "rnnoise": _streamed,
                            "noisereduce": _spectral_gate}


def _load(name: str) -> Int16Array:
    import soundfile

    audio, rate = soundfile.read(CORPUS / name, dtype="int16")
    return resample(audio, rate, 16000)


def _onsets_per_minute(noise: Int16Array) -> float:
    listener = Listener(TurnConfig.from_settings(Settings()), 16000)
    onsets = 0
    for i in range(0, len(noise) - FRAME + 1, FRAME):
        for frame in listener.frames(noise[i: i + FRAME]):
            onsets += sum(isinstance(e, SpeechOnset) for e in listener.hear(frame, i * 62_500))
    return onsets * 60 / (len(noise) / 16000)


def main() -> int:
    argparse.ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    manifest = json.loads((CORPUS / "manifest.json").read_text())
    stt = WhisperSTT.load("", "cpu", "int8", 1, "en")
    print("| denoiser | SNR | WER | false onsets / min of noise | CPU ms per s of audio |")
    print("|---|---|---|---|---|")
    for snr in (10, 20):
        clips = [u for u in manifest.values() if u.get("snr") == snr]
        beds = []
        for u in clips:
            audio = _load(u["file"])
            start = int((u["speech_start_s"] - 0.1) * 16000)
            end = int((u["speech_end_s"] + 0.3) * 16000)
            beds += [audio[:max(0, start)], audio[end:]]
        bed = np.concatenate(beds)
        noise = np.tile(bed, int(NOISE_S * 16000 / len(bed)) + 1)[: int(NOISE_S * 16000)]
        for way, denoise in WAYS.items():
            errors, cpu, seconds = [], 0.0, 0.0
            for u in clips:
                audio = _load(u["file"])
                begin = time.process_time()
                cleaned = denoise(audio)
                cpu += time.process_time() - begin
                seconds += len(audio) / 16000
                errors.append(wer(u["text"], stt.transcribe_sync(cleaned).text))
            onsets = _onsets_per_minute(denoise(noise))
            print(f"| {way} | {snr} dB | {statistics.mean(errors):.3f} ({len(errors)} clips) | "
                  f"{onsets:.1f} | {cpu / seconds * 1000:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
