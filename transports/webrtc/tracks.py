"""aiortc media tracks: the outgoing voice paced by a media clock, and incoming frames.

`PacedAudioTrack.recv()` is called by aiortc's sender in a loop; each call waits until
the next frame is due on the media clock, then takes one 20 ms chunk from its source
(the session's `playout.pull()`, or a client's microphone queue) or sends silence.
Because the chunk is taken at the moment it is due, a barge-in that clears the
playout stops the voice after at most the frame already sent.
"""

from __future__ import annotations

import asyncio
import fractions
from collections.abc import Callable

import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

from transports.webrtc.media import FRAME_SAMPLES, RTC_RATE, FrameClock, reply_frame
from voice.audio import Int16Array
from voice.clock import Clock

TIME_BASE = fractions.Fraction(1, RTC_RATE)

ChunkSource = Callable[[], bytes | None]


def pcm_frame(pcm: bytes, pts: int) -> AudioFrame:
    """A 48 kHz mono s16 AudioFrame holding exactly one 20 ms frame of `pcm`."""
    frame = AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
    frame.planes[0].update(pcm)
    frame.sample_rate = RTC_RATE
    frame.pts = pts
    frame.time_base = TIME_BASE
    return frame


class PacedAudioTrack(MediaStreamTrack):
    kind = "audio"

    def __init__(self, source: ChunkSource, clock: Clock) -> None:
        super().__init__()
        self._source = source
        self._clock = clock
        self.frame_clock = FrameClock()

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        pts, due_ns = self.frame_clock.tick(self._clock.now_ns())
        delay_ns = due_ns - self._clock.now_ns()
        if delay_ns > 0:
            await asyncio.sleep(delay_ns / 1e9)
        return pcm_frame(reply_frame(self._source()), pts)


def frame_samples(frame: AudioFrame) -> tuple[Int16Array, int, int]:
    """(interleaved int16 samples, channels, sample rate) of a decoded audio frame."""
    channels = len(frame.layout.channels)
    data = frame.to_ndarray()
    if frame.format.name == "s16p":
        data = data.T
    elif frame.format.name != "s16":
        raise ValueError(f"unexpected decoded audio format {frame.format.name}")
    samples: Int16Array = np.ascontiguousarray(data, dtype=np.int16).reshape(-1)
    return samples, channels, frame.sample_rate


async def next_audio(track: MediaStreamTrack, timeout_s: float) -> AudioFrame:
    """The next decoded frame; TimeoutError if none comes in time, MediaStreamError
    when the track has ended."""
    async with asyncio.timeout(timeout_s):
        frame = await track.recv()
    if not isinstance(frame, AudioFrame):
        raise MediaStreamError("not an audio frame")
    return frame
