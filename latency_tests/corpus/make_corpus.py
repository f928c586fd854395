"""Makes the regression corpus (latency_tests/corpus/regression/) with espeak-ng, sox
and numpy. Deterministic: the same tools give the same bytes.

    python -m latency_tests.corpus.make_corpus

Kinds of clip:
- `command`: short commands; `question`: long questions (one sentence each);
- `paused`: an utterance with an internal pause of 300-700 ms after a word that leaves
  it unfinished (the turn must not end in the pause);
- `interruption`: said over a playing reply (barge-in);
- `no_turn`: silence, steady noise, hum and music-like tones that must trigger no turn.

Variants: each speech clip `NAME` at 16 kHz; `NAME_snr20` and `NAME_snr10` (a subset)
mixed with pink noise at 20 and 10 dB SNR (1 s of noise before the speech and 1 s
after it, which the runner goes on looping, as a real call's noise goes on: the end of
the turn is decided in noise); `NAME_tel`, every clip band-limited
to 300-3400 Hz at 8 kHz, for SIP. The manifest records each clip's text, kind, voice,
speed (words per minute), SNR, sample rate, and the exact start and end of its speech
in seconds, measured on the clean audio (the noise cannot move them).
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from latency_tests.corpus.make_turn_taking import speak, speech_bounds
from voice.audio import Int16Array

RATE = 16000
TEL_RATE = 8000
OUT = Path(__file__).parent / "regression"
LEAD_S = 0.4  # silence before the speech
TAIL_S = 0.2  # after the speech, clean clips
NOISE_LEAD_S = 1.0  # noise before the speech: long enough to learn the noise floor
NOISE_TAIL_S = 1.0  # after the speech, noisy clips: the turn ends in noise
STEADY = ("room", "pink", "hum")  # no-turn backgrounds that go on as the call does
SNRS = (20, 10)
TEL_THRESHOLD = 200  # |sample| above this is speech, as in make_turn_taking


@dataclass(frozen=True)
class Clip:
    name: str
    kind: str
    voice: str
    wpm: int
    text: str  # "|NNN|" marks a pause of NNN ms
    noisy: bool = False  # also made at 20 and 10 dB SNR
    quick: bool = False  # in the quick (CI) set


CLIPS = [
    Clip("c_lights", "command", "en-us", 170, "Turn on the lights.", noisy=True),
    Clip("c_music", "command", "en-gb", 160, "Stop the music."),
    Clip("c_timer", "command", "en-us+f3", 175, "Set a timer for ten minutes.", noisy=True),
    Clip("c_call", "command", "en-us+m3", 140, "Call my mother.", quick=True),
    Clip("c_volume", "command", "en-gb+m2", 195, "Turn the volume down."),
    Clip("c_time", "command", "en-us+f2", 130, "What time is it?", quick=True),
    Clip("q_paris", "question", "en-us", 160,
         "What is the weather going to be like in Paris tomorrow afternoon?", noisy=True,
         quick=True),
    Clip("q_train", "question", "en-gb", 175,
         "When does the last train from London to Cambridge leave on Sunday evening?"),
    Clip("q_roast", "question", "en-us+f3", 150,
         "How long should I roast a chicken that weighs about two kilograms?"),
    Clip("q_phone", "question", "en-us+m1", 185,
         "Can you tell me who invented the telephone and in which year it happened?"),
    Clip("q_open", "question", "en-gb-scotland", 145,
         "Which restaurants near the station are still open after ten tonight?"),
    Clip("q_flight", "question", "en-us+m3", 200,
         "Is my flight to Berlin on Friday morning still on time?", noisy=True),
    Clip("p_table", "paused", "en-us", 160, "I would like to book a table for |500| four people.",
         noisy=True),
    Clip("p_remind", "paused", "en-gb", 160,
         "Remind me to call the dentist and |600| pick up the children."),
    Clip("p_madrid", "paused", "en-us+f3", 165, "What is the weather like in |400| Madrid?"),
    Clip("p_report", "paused", "en-us+m3", 155, "Please send the report to |700| the whole team.",
         noisy=True, quick=True),
    Clip("p_album", "paused", "en-gb+m2", 170, "Play the new album by |300| the Rolling Stones."),
    Clip("p_number", "paused", "en-us+m1", 150,
         "My number is five five five |500| one two three four."),
    Clip("i_stop", "interruption", "en-us", 175, "Wait, stop, that is not what I meant.",
         quick=True),
    Clip("i_hold", "interruption", "en-gb", 170, "No, hold on, let me ask something else."),
    Clip("n_silence", "no_turn", "room", 0, ""),
    Clip("n_noise", "no_turn", "pink", 0, "", quick=True),
    Clip("n_hum", "no_turn", "hum", 0, ""),
    Clip("n_tones", "no_turn", "tones", 0, ""),
    # Added later, after the no-turn clips so that every earlier clip keeps its seed
    # (and its bytes): more voices (received pronunciation, Caribbean, New York,
    # Lancaster) and speeds, 30 spoken utterances in all.
    Clip("c_garage", "command", "en-gb-x-rp", 165, "Open the garage door."),
    Clip("c_podcast", "command", "en-us-nyc", 185, "Pause the podcast."),
    Clip("c_milk", "command", "en-029", 150, "Add milk to my shopping list.", noisy=True),
    Clip("q_petrol", "question", "en-gb-x-gbclan", 170,
         "How far is it from here to the nearest petrol station?"),
    Clip("q_euro", "question", "en-us+f2", 180,
         "What is the exchange rate between the euro and the dollar today?", noisy=True),
    Clip("q_sister", "question", "en-gb-x-rp+m3", 140,
         "Could you read me the last three messages from my sister?"),
    Clip("p_taxi", "paused", "en-us-nyc", 160, "I need a taxi to |450| the airport at six."),
    Clip("p_thursday", "paused", "en-gb-x-rp+f3", 155,
         "Can you move my appointment to |650| next Thursday morning?", noisy=True),
    Clip("p_door", "paused", "en-us+m2", 145,
         "The code for the door is four two |550| nine seven."),
    Clip("p_john", "paused", "en-029", 165, "Send a message to John saying |350| I will be late."),
]
NO_TURN_S = 2.5


def pink_noise(n: int, seed: int) -> np.ndarray:
    """Unit-RMS pink (1/f power) noise, shaped in the frequency domain."""
    spectrum = np.fft.rfft(np.random.default_rng(seed).normal(0.0, 1.0, n))
    freqs = np.fft.rfftfreq(n, 1 / RATE)
    spectrum[1:] /= np.sqrt(freqs[1:])
    spectrum[0] = 0
    noise = np.fft.irfft(spectrum, n)
    return np.asarray(noise / np.sqrt(np.mean(noise**2)))


def db_to_amplitude(dbfs: float) -> float:
    return float(32768 * 10 ** (dbfs / 20))


def no_turn_audio(kind: str, seed: int) -> Int16Array:
    n = int(NO_TURN_S * RATE)
    t = np.arange(n) / RATE
    if kind == "room":  # a quiet room: pink noise at -65 dBFS
        signal = pink_noise(n, seed) * db_to_amplitude(-65)
    elif kind == "pink":  # steady fan-like noise at -32 dBFS
        signal = pink_noise(n, seed) * db_to_amplitude(-32)
    elif kind == "hum":  # mains hum with harmonics at -28 dBFS
        signal = np.zeros(n)
        for k, f in enumerate((100, 200, 300), 1):
            signal += np.sin(2 * np.pi * f * t) / k
        signal = signal / np.sqrt(np.mean(signal**2)) * db_to_amplitude(-28)
    else:  # music-like: a melody of harmonic notes with attack and decay, -24 dBFS
        signal = np.zeros(n)
        notes = (262, 330, 392, 523, 392, 330, 294, 349, 440, 349, 262, 196)
        step = n // len(notes)
        for i, f in enumerate(notes):
            tt = np.arange(step) / RATE
            note = sum(np.sin(2 * np.pi * f * h * tt) / h**1.5 for h in (1, 2, 3, 4))
            signal[i * step: (i + 1) * step] = note * np.exp(-tt * 4) * np.minimum(1, tt * 80)
        signal = signal / np.sqrt(np.mean(signal**2)) * db_to_amplitude(-24)
    return np.clip(np.round(signal), -32768, 32767).astype(np.int16)


def padded(speech: Int16Array, tail_s: float, lead_s: float = LEAD_S) -> Int16Array:
    lead = np.zeros(int(lead_s * RATE), np.int16)
    tail = np.zeros(int(tail_s * RATE), np.int16)
    return np.concatenate([lead, speech, tail])


def with_noise(clean: Int16Array, start: int, end: int, snr_db: float,
               seed: int) -> Int16Array:
    """`clean` plus pink noise at `snr_db` below the speech's RMS (over start:end)."""
    speech = clean[start:end].astype(np.float64)
    speech_rms = float(np.sqrt(np.mean(speech**2)))
    noise = pink_noise(len(clean), seed) * speech_rms / 10 ** (snr_db / 20)
    return np.clip(np.round(clean + noise), -32768, 32767).astype(np.int16)


def telephone(samples: Int16Array) -> Int16Array:
    """300-3400 Hz at 8 kHz, with sox (its sinc band-pass and rate conversion)."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.wav", Path(tmp) / "out.wav"
        sf.write(src, samples, RATE, subtype="PCM_16")
        subprocess.run(["sox", "-D", str(src), "-r", str(TEL_RATE), str(dst),
                        "sinc", "300-3400"], check=True)
        data, _ = sf.read(dst, dtype="int16")
    return np.asarray(data, np.int16)


def entry(clip: Clip, file: str, rate: int, start: int, end: int, snr: int | None,
          source: str, bed: int | None = None) -> dict[str, Any]:
    """`bed`: the sample from which the clip is only background noise, which the runner
    loops after the clip, as the noise of a real call goes on (None: silence follows)."""
    return {
        "file": file, "kind": clip.kind, "source": source,
        "text": re.sub(r"\s*\|\d+\|\s*", " ", clip.text).strip(),
        "pauses_ms": [int(p) for p in re.findall(r"\|(\d+)\|", clip.text)],
        "voice": clip.voice, "speed": clip.wpm, "snr": snr, "rate": rate,
        "band": "telephone" if rate == TEL_RATE else "wide",
        "speech_start_s": round(start / rate, 4), "speech_end_s": round(end / rate, 4),
        "bed_start_s": None if bed is None else round(bed / rate, 4),
        "quick": clip.quick and snr is None and rate == RATE,
    }


def write(name: str, samples: Int16Array, rate: int) -> str:
    sf.write(OUT / f"{name}.wav", samples, rate, subtype="PCM_16")
    return f"{name}.wav"


def make_clip(clip: Clip, seed: int) -> dict[str, dict[str, Any]]:
    """The clean clip and its variants, as manifest entries."""
    out: dict[str, dict[str, Any]] = {}
    if clip.kind == "no_turn":
        audio, start, end = no_turn_audio(clip.voice, seed), 0, 0
    else:
        speech = speak(clip.text, clip.voice, clip.wpm)
        first, last = speech_bounds(speech)
        audio = padded(speech[first:last], TAIL_S)
        start, end = int(LEAD_S * RATE), int(LEAD_S * RATE) + last - first
    bed = 0 if clip.voice in STEADY else None
    out[clip.name] = entry(clip, write(clip.name, audio, RATE), RATE, start, end, None,
                           clip.name, bed)
    if clip.noisy:
        longer = padded(audio[start:end], NOISE_TAIL_S, NOISE_LEAD_S)
        n_start, n_end = int(NOISE_LEAD_S * RATE), int(NOISE_LEAD_S * RATE) + end - start
        for snr in SNRS:
            name = f"{clip.name}_snr{snr}"
            noisy = with_noise(longer, n_start, n_end, snr, seed + snr)
            out[name] = entry(clip, write(name, noisy, RATE), RATE, n_start, n_end, snr,
                              clip.name, n_end + RATE // 10)
    tel = telephone(audio)
    if clip.kind == "no_turn":
        tel_start = tel_end = 0
    else:  # measured again: the band-pass smears the edges a little
        loud = np.flatnonzero(np.abs(tel.astype(np.int32)) > TEL_THRESHOLD)
        tel_start, tel_end = int(loud[0]), int(loud[-1]) + 1
    name = f"{clip.name}_tel"
    out[name] = entry(clip, write(name, tel, TEL_RATE), TEL_RATE, tel_start, tel_end, None,
                      clip.name, bed)
    return out


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, dict[str, Any]] = {}
    for seed, clip in enumerate(CLIPS, start=1):
        made = make_clip(clip, seed * 101)
        manifest.update(made)
        for name, e in made.items():
            print(f"{name:<16} {e['kind']:<12} {e['rate']:>5} Hz "
                  f"{e['speech_start_s']:.2f}-{e['speech_end_s']:.2f} s  {e['text']}")
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
