"""The reply's echo taken out of the caller's audio (voice/turntaking/echo.py), on real
speech: the reply played to a phone (8 kHz, G.711) comes back at -10 dB after 100-200
ms, with the network's jitter; the caller's own voice over it must survive."""

from __future__ import annotations

import numpy as np
import pytest

from tests.harness import DATA, clip
from voice.audio import array_to_pcm16_bytes, resample, rms_dbfs
from voice.turntaking.echo import EchoCanceller
from wire.rtp import g711

pytestmark = pytest.mark.unit

REPLY, CALLER = clip(DATA / "weather.wav"), clip(DATA / "stop.wav")
FRAME = 320  # 20 ms at 16 kHz
T0 = 10**12


def _call(delay_ms: int, caller: np.ndarray | None = None, jitter_ms: float = 0.0,
          seed: int = 0) -> tuple[EchoCanceller, np.ndarray, np.ndarray, np.ndarray]:
    """Play REPLY to a phone in 20 ms chunks and send back its echo (and `caller`, said
    half a second in): (canceller, what arrived, what came out, the echo alone)."""
    rng = np.random.default_rng(seed)
    canceller = EchoCanceller(reference_rate=8000)
    played = g711.decode(g711.encode(resample(REPLY, 16000, 8000), 0), 0)
    heard = resample(played, 8000, 16000).astype(np.float64)
    echo = np.zeros(len(heard) + 16 * delay_ms)
    echo[16 * delay_ms:] = heard * 10 ** (-10 / 20)
    voice = np.zeros_like(echo)
    if caller is not None:
        voice[8000: 8000 + len(caller)] = caller[: len(voice) - 8000]
    arrived = np.clip(echo + voice, -32768, 32767).astype(np.int16)
    out = []
    for i in range(0, len(arrived) - FRAME + 1, FRAME):
        t = T0 + i * 62_500  # ns at 16 kHz
        chunk = played[i // 2: i // 2 + 160]
        if len(chunk):
            canceller.tap(array_to_pcm16_bytes(chunk), t)
        arrival = t + FRAME * 62_500 + int(abs(rng.normal(0, jitter_ms)) * 1e6)
        out.append(canceller.clean(arrived[i: i + FRAME], arrival))
    n = len(out) * FRAME
    return canceller, arrived[:n], np.concatenate(out), echo[:n]


@pytest.mark.parametrize("delay_ms", [100, 150, 200])
def test_the_echo_of_the_reply_is_taken_out(delay_ms: int) -> None:
    canceller, arrived, cleaned, _ = _call(delay_ms, jitter_ms=3.0, seed=delay_ms)
    settled = slice(16 * (delay_ms + 600), None)  # after the delay has been found
    assert rms_dbfs(cleaned[settled]) < rms_dbfs(arrived[settled]) - 15
    assert canceller.cancelled_frames > 50


@pytest.mark.parametrize("delay_ms", [100, 150, 200])
def test_the_first_echo_of_a_call_is_caught_before_it_could_pause_the_reply(
        delay_ms: int) -> None:
    """The reply pauses on 80 ms of speech over it: no 80 ms of the first echo may get
    through, from 40 ms after its onset on."""
    first = int(np.flatnonzero(np.abs(REPLY.astype(np.int32)) > 1000)[0])  # reply's onset
    _, arrived, cleaned, _ = _call(delay_ms, seed=7)
    onset = first + 16 * delay_ms  # the echo's first loud sample
    left = [rms_dbfs(cleaned[i: i + 16 * 80]) - rms_dbfs(arrived[i: i + 16 * 80])
            for i in range(onset + 16 * 40, onset + 16 * 600, 16 * 20)]
    assert max(left) < -10, [round(x) for x in left]


def test_the_callers_own_voice_over_the_echo_survives() -> None:
    _, arrived, cleaned, echo = _call(150, caller=CALLER)
    span = slice(8000, 8000 + len(CALLER))
    own = CALLER.astype(np.float64)[: len(cleaned[span])]
    left = cleaned[span].astype(np.float64)
    # what is left is the caller: within 1.5 dB of their level, and mostly their voice
    assert abs(rms_dbfs(cleaned[span]) - rms_dbfs(CALLER)) < 1.5
    assert np.corrcoef(left, own)[0, 1] > 0.9
    assert np.corrcoef(arrived[span].astype(np.float64), own)[0, 1] < np.corrcoef(left, own)[0, 1]


def test_audio_with_no_reply_playing_passes_unchanged() -> None:
    canceller = EchoCanceller(reference_rate=16000)
    frames = [CALLER[i: i + FRAME] for i in range(0, len(CALLER) - FRAME, FRAME)]
    out = [canceller.clean(f, T0 + i * 20_000_000) for i, f in enumerate(frames)]
    assert all(a is b for a, b in zip(out, frames, strict=True))
