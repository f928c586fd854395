"""Call recordings (service/recording.py): the caller on the left channel as it came
(resampled to 16 kHz), the assistant on the right at the time the caller hears it,
written in blocks as the call goes and whole at the end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile

from service.recording import RATE, CallRecording
from voice.audio import array_to_pcm16_bytes

pytestmark = pytest.mark.unit

SECOND_NS = 1_000_000_000


def test_both_sides_land_in_their_channels_at_their_times(tmp_path: Path) -> None:
    path = tmp_path / "2026-12-04" / "sess_1.wav"
    recording = CallRecording(path, start_ns=5 * SECOND_NS)
    caller = np.full(8000, 1000, np.int16)  # 1 s at 8 kHz (a phone line)
    reply = np.full(8000, 3000, np.int16)  # 0.5 s heard from 1.5 s into the call
    for second in range(4):
        recording.caller(caller, 8000)
        if second == 1:  # sent a little before it is heard, as playout does
            recording.assistant(array_to_pcm16_bytes(reply), 16000, heard_ns=6_500_000_000)
        recording.flush(final=second == 3)  # a block at a time, as the session's flusher
    assert recording.closed
    audio, rate = soundfile.read(str(path), dtype="int16")
    # (the streaming resampler holds back a few samples, nothing more)
    assert rate == RATE and audio.shape[1] == 2 and abs(len(audio) - 4 * RATE) <= 8
    left, right = audio[:, 0], audio[:, 1]
    assert np.abs(left[100:-100].astype(int) - 1000).max() < 50  # the caller, throughout
    heard = np.flatnonzero(right)
    assert heard[0] == int(1.5 * RATE) and heard[-1] == 2 * RATE - 1
    assert (right[heard] == 3000).all()


def test_a_reply_running_past_the_callers_audio_is_kept_whole(tmp_path: Path) -> None:
    recording = CallRecording(tmp_path / "r.wav", start_ns=0)
    recording.caller(np.zeros(RATE, np.int16), RATE)
    recording.assistant(array_to_pcm16_bytes(np.full(RATE, 500, np.int16)), RATE,
                        heard_ns=SECOND_NS // 2)  # a goodbye heard as the caller leaves
    recording.flush(final=True)
    audio, _ = soundfile.read(str(tmp_path / "r.wav"), dtype="int16")
    assert len(audio) == int(1.5 * RATE) and (audio[RATE // 2:, 1] == 500).all()
