"""Makes the turn-taking corpus (latency_tests/corpus/turn_taking/) with espeak-ng.

    python -m latency_tests.corpus.make_turn_taking

Categories: `ordinary` single-sentence questions; `paused` utterances with internal
pauses of 0.3-0.8 s (some after a phrase that is already a complete sentence, some in
dictated digit strings); `backchannel` clips ("uh-huh", a cough) to say over a reply;
`interruption` clips that must stop a reply. The manifest records each clip's text,
voice, pauses, and the exact start and end of its speech (measured on the audio).
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from voice.audio import float32_to_int16, resample

RATE = 16000
OUT = Path(__file__).parent / "turn_taking"
LEAD_S = 0.3

# name, category, voice, words per minute, text ("|NNN|" is a pause of NNN ms)
CLIPS = [
    ("q_weather", "ordinary", "en-us", 160, "What is the weather like in Paris today?"),
    ("q_train", "ordinary", "en-us+m3", 170, "When does the next train to Boston leave?"),
    ("q_recipe", "ordinary", "en-gb", 150, "How long should I boil an egg?"),
    ("q_alarm", "ordinary", "en-us+f3", 165, "Set an alarm for seven in the morning."),
    ("q_capital", "ordinary", "en-us", 180, "What is the capital of Australia?"),
    ("q_music", "ordinary", "en-gb+m2", 160, "Play some relaxing music please."),
    ("q_bank", "ordinary", "en-us+f2", 155, "Is the bank open on Saturday?"),
    ("q_song", "ordinary", "en-us+m1", 175, "Who wrote the song yesterday?"),
    ("p_meeting", "paused", "en-us", 160,
     "The meeting is on Tuesday, |550| at half past three in the afternoon."),
    ("p_account", "paused", "en-us+m3", 150,
     "My account number is four five six |500| seven eight nine."),
    ("p_table", "paused", "en-gb", 155, "I would like to book a table |600| for four people."),
    ("p_flight", "paused", "en-us+f3", 160, "I want to book a flight. |700| To Boston on Friday."),
    ("p_remind", "paused", "en-us", 170, "Can you remind me |450| to call my sister tomorrow?"),
    ("p_phone", "paused", "en-us+m1", 150,
     "My phone number is five five five |650| one two three |500| four five six seven."),
    ("p_taxi", "paused", "en-gb+m2", 160, "I need a taxi. |600| To the airport please."),
    ("p_report", "paused", "en-us+f2", 165,
     "Send the report to Maria |400| and copy in the whole team."),
    ("p_code", "paused", "en-us", 150, "The code is three eight |700| two one."),
    ("p_weekend", "paused", "en-gb", 160,
     "What is the weather going to be like |300| in London this weekend?"),
    ("p_list", "paused", "en-us+m3", 155,
     "Please add milk, |500| eggs, |500| and bread to my list."),
    ("p_hotel", "paused", "en-us+f3", 160, "Yes. |800| And also book a hotel for two nights."),
    ("p_saturday", "paused", "en-us", 165, "I was thinking |600| maybe we could go on Saturday."),
    ("p_lights", "paused", "en-gb+m2", 160,
     "Turn off the lights |450| in the kitchen and the hallway."),
    ("p_address", "paused", "en-us+m1", 155, "The address is twenty two |550| Baker Street."),
    ("b_uhhuh", "backchannel", "en-us", 160, "uh-huh"),
    ("b_mmhmm", "backchannel", "en-us+f3", 160, "mm-hmm"),
    ("b_yeah", "backchannel", "en-gb", 160, "yeah"),
    ("b_okay", "backchannel", "en-us+m3", 160, "okay"),
    ("b_cough", "backchannel", "noise", 0, "(cough)"),
    ("i_stop", "interruption", "en-us", 175, "Wait, stop, I meant Tuesday."),
    ("i_wrong", "interruption", "en-us+f3", 170, "No, no, that is not what I asked."),
    ("i_hold", "interruption", "en-gb", 165, "Hold on, let me think about that."),
]


def speak(text: str, voice: str, wpm: int) -> np.ndarray:
    ssml = "<speak>" + re.sub(r"\|(\d+)\|", r'<break time="\1ms"/>', text) + "</speak>"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out.wav"
        subprocess.run(["espeak-ng", "-m", "-v", voice, "-s", str(wpm), "-w", str(path), ssml],
                       check=True)
        data, rate = sf.read(path, dtype="float32")
    return resample(float32_to_int16(data), rate, RATE)


def cough(seed: int = 7) -> np.ndarray:
    """A 250 ms burst of shaped noise: loud, voiced-looking, no words."""
    rng = np.random.default_rng(seed)
    n = RATE // 4
    envelope = np.exp(-np.arange(n) / (RATE * 0.06))
    burst = rng.normal(0, 0.3, n) * envelope
    burst = np.convolve(burst, np.ones(8) / 8, mode="same")
    return float32_to_int16(burst)


def speech_bounds(samples: np.ndarray) -> tuple[int, int]:
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > 200)
    return (int(loud[0]), int(loud[-1]) + 1) if loud.size else (0, 0)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for name, category, voice, wpm, text in CLIPS:
        audio = cough() if voice == "noise" else speak(text, voice, wpm)
        start, end = speech_bounds(audio)
        clip = np.concatenate([np.zeros(int(LEAD_S * RATE), np.int16), audio[start:end]])
        sf.write(OUT / f"{name}.wav", clip, RATE, subtype="PCM_16")
        manifest[name] = {
            "file": f"{name}.wav", "category": category, "voice": voice, "wpm": wpm,
            "text": re.sub(r"\s*\|\d+\|\s*", " ", text).strip(),
            "marked_text": text,
            "pauses_ms": [int(p) for p in re.findall(r"\|(\d+)\|", text)],
            "speech_start_s": LEAD_S, "speech_end_s": round(len(clip) / RATE, 3),
        }
        print(f"{name:<12} {category:<12} {len(clip) / RATE:.2f} s  {manifest[name]['text']}")
    (OUT / "utterances.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
