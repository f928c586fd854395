"""Prosodic end-of-turn cue: where the voice's pitch ends up.

Declarative sentences end with the pitch falling well below the speaker's median
(final lowering); a speaker who pauses mid-sentence usually holds the pitch level or
lets it rise ("The meeting is on Tuesday, ..."). Questions end high, so the policy
only consults this cue for turns whose transcript reads as a finished statement.

Pitch by normalized autocorrelation (FFT) on 40 ms frames every 20 ms over the last
1.5 s of the turn: about a millisecond of CPU.
"""

from __future__ import annotations

import numpy as np

from voice.audio import PIPELINE_RATE, Int16Array

WINDOW_S = 1.5
FRAME = 640  # 40 ms at 16 kHz
HOP = 320
MIN_HZ, MAX_HZ = 70, 400
PEAK_SHARE = 0.9  # a lag's peak this near the highest is a candidate period


def pitch_track(samples: Int16Array) -> list[float]:
    """F0 in Hz of each voiced frame (unvoiced frames are left out)."""
    x = samples[-int(WINDOW_S * PIPELINE_RATE):].astype(np.float64)
    if len(x) < FRAME:
        return []
    count = 1 + (len(x) - FRAME) // HOP
    frames = np.stack([x[i * HOP: i * HOP + FRAME] for i in range(count)])
    frames -= frames.mean(axis=1, keepdims=True)
    loud = np.sqrt(np.mean(frames**2, axis=1)) > 300
    spectrum = np.fft.rfft(frames, n=2 * FRAME, axis=1)
    # unbiased: each lag's sum over the samples it overlaps, so that a long period is
    # not outweighed by a short one only for overlapping more
    autocorr = np.fft.irfft(np.abs(spectrum) ** 2, axis=1)[:, :FRAME] / (FRAME - np.arange(FRAME))
    lo, hi = PIPELINE_RATE // MAX_HZ, PIPELINE_RATE // MIN_HZ
    window = autocorr[:, lo - 1: hi + 1]
    middle = window[:, 1:-1]
    # the period: the shortest lag with a peak near the highest. Through the telephone
    # band a low voice's fundamental is missing, and its third harmonic's lag peaks
    # almost as high as its period's: always taking the highest read 80 Hz as 240.
    peaks = ((middle >= window[:, :-2]) & (middle >= window[:, 2:])
             & (middle >= PEAK_SHARE * middle.max(axis=1, keepdims=True)))
    lags = np.argmax(peaks, axis=1) + lo
    strength = autocorr[np.arange(count), lags] / np.maximum(autocorr[:, 0], 1e-9)
    voiced = loud & peaks.any(axis=1) & (strength > 0.3) & (lags > lo)
    return [PIPELINE_RATE / float(lag) for lag, ok in zip(lags, voiced, strict=True) if ok]


def final_pitch_ratio(samples: Int16Array) -> float | None:
    """Pitch of the last voiced frames over the turn's median pitch; None when unsure
    (too little voiced audio, or a jump the octave folding cannot explain)."""
    track = np.array(pitch_track(samples))
    if len(track) < 8:
        return None
    median = float(np.median(track))
    # frames far off the voice's range are the tracker's errors (an octave, or the edge
    # of the lag range): common on telephone audio, whose band starts above a low
    # voice's fundamental. A real final fall or rise stays well inside these bounds.
    track = track[(track > 0.55 * median) & (track < 1.6 * median)]
    if len(track) < 8:
        return None
    return float(np.median(track[-4:]) / median)
