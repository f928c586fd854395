"""Turn detection (voice/turntaking/detector.py) over frame classification (vad.py).

Audio is fed frame by frame, stamped in audio time: frame i (0-based) is complete, and
so arrives, when its last sample has arrived, at (i + 1) * 20 ms. The main behaviour
tests use real speech synthesized by espeak-ng (webrtcvad needs speech-like audio);
numpy noise, tones and silence cover the cases that must *not* start a turn.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import wave
from pathlib import Path
from typing import TypeVar

import numpy as np
import pytest
import webrtcvad

from voice.audio import Int16Array, array_to_pcm16_bytes, resample
from voice.turntaking.detector import (
    FixedSilence,
    OnsetAbandoned,
    SpeechOnset,
    SpeechPaused,
    SpeechResumed,
    TurnDetector,
    TurnEnded,
    TurnEvent,
    TurnStarted,
    frames_of,
)
from voice.turntaking.floor import Floor, Verdict
from voice.turntaking.vad import FrameClassifier, NoiseFloor

pytestmark = pytest.mark.unit

RATE = 16000
FRAME_MS = 20
FRAME = RATE * FRAME_MS // 1000
FRAME_NS = FRAME_MS * 1_000_000
MS = 1_000_000
ESPEAK = shutil.which("espeak-ng")
E = TypeVar("E")
needs_espeak = pytest.mark.skipif(ESPEAK is None, reason="espeak-ng is not on PATH")

# espeak-ng clips whose webrtcvad hangover is well over 60 ms, so that a detector
# counting from webrtcvad's last voiced frame would fail the speech-end tests
SENTENCES = {
    "weather": "What is the weather like in Paris today?",
    "hello": "Hello there.",
    "joke": "Can you tell me a joke about cats",
}


# --- helpers ---------------------------------------------------------------------------


def detector(silence_ms: float = 250, max_turn_s: float = 30) -> TurnDetector:
    return TurnDetector(FrameClassifier(2, FRAME_MS), FixedSilence(silence_ms),
                        min_speech_ms=200, max_turn_s=max_turn_s)


def feed(samples: Int16Array, det: TurnDetector | None = None,
         onsets: bool = False) -> list[tuple[int, TurnEvent]]:
    """Push whole frames; return (arrival_ns, event) for every event (the early
    SpeechOnset/OnsetAbandoned reports only with `onsets`)."""
    det = det or detector()
    frames, _ = frames_of(samples, FRAME)
    out: list[tuple[int, TurnEvent]] = []
    for index, frame in enumerate(frames):
        arrival_ns = (index + 1) * FRAME_NS
        out += [(arrival_ns, event) for event in det.push(frame, arrival_ns)
                if onsets or not isinstance(event, SpeechOnset | OnsetAbandoned)]
    return out


def events_of(timeline: list[tuple[int, TurnEvent]], kind: type[E]) -> list[E]:
    return [event for _, event in timeline if isinstance(event, kind)]


def shape(timeline: list[tuple[int, TurnEvent]]) -> str:
    letters = {TurnStarted: "S", SpeechPaused: "P", SpeechResumed: "R", TurnEnded: "E"}
    return "".join(letters[type(event)] for _, event in timeline)


def silence(ms: int) -> Int16Array:
    return np.zeros(RATE * ms // 1000, dtype=np.int16)


def noise(ms: int, dbfs: float, seed: int = 0, samples: int | None = None) -> Int16Array:
    rng = np.random.default_rng(seed)
    amplitude = 32768 * 10 ** (dbfs / 20)
    raw = rng.standard_normal(RATE * ms // 1000 if samples is None else samples) * amplitude
    return np.clip(raw, -32768, 32767).astype(np.int16)


def sample_ns(sample_index: int) -> int:
    """Audio time at which the sample with this index has arrived."""
    return (sample_index + 1) * 1_000_000_000 // RATE


def energy(samples: Int16Array) -> float:
    return float(np.sum(np.square(samples.astype(np.float64))))


def espeak(text: str, directory: Path) -> Int16Array:
    """Synthesize with espeak-ng, resample to 16 kHz, trim to the speech energy."""
    assert ESPEAK is not None
    path = directory / (re.sub(r"\W+", "_", text)[:40] + ".wav")
    subprocess.run([ESPEAK, "-w", str(path), text], check=True, capture_output=True,
                   timeout=60)
    with wave.open(str(path)) as wav:
        assert wav.getsampwidth() == 2 and wav.getnchannels() == 1
        rate = wav.getframerate()
        raw = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)
    samples = resample(raw, rate, RATE)
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > np.abs(samples).max() * 0.01)
    return samples[loud[0]: loud[-1] + 1]


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Int16Array]:
    if ESPEAK is None:
        pytest.skip("espeak-ng is not on PATH")
    directory = tmp_path_factory.mktemp("espeak")
    return {name: espeak(text, directory) for name, text in SENTENCES.items()}


class Scene:
    """Lead-in silence, then the given parts; knows where each speech part's energy is."""

    def __init__(self, *parts: Int16Array, lead_ms: int = 1000, tail_ms: int = 1500,
                 background_dbfs: float | None = None) -> None:
        pieces = [silence(lead_ms)]
        self.spans: list[tuple[int, int]] = []  # (first, last) energetic sample indices
        position = len(pieces[0])
        for part in parts:
            if np.any(part):
                self.spans.append((position, position + len(part) - 1))
            pieces.append(part)
            position += len(part)
        pieces.append(silence(tail_ms))
        samples = np.concatenate(pieces)
        if background_dbfs is not None:
            background = noise(0, background_dbfs, seed=7, samples=len(samples))
            samples = np.clip(samples.astype(np.int32) + background,
                              -32768, 32767).astype(np.int16)
        self.samples = samples

    def start_ns(self, part: int = 0) -> int:
        return sample_ns(self.spans[part][0])

    def end_ns(self, part: int = -1) -> int:
        return sample_ns(self.spans[part][1])


def webrtcvad_last_voiced_end_ns(samples: Int16Array) -> int:
    vad = webrtcvad.Vad(2)
    frames, _ = frames_of(samples, FRAME)
    voiced = [i for i, f in enumerate(frames) if vad.is_speech(array_to_pcm16_bytes(f), RATE)]
    return (voiced[-1] + 1) * FRAME_NS


# --- what must not start a turn --------------------------------------------------------


def test_pure_silence_gives_no_events() -> None:
    det = detector()
    assert feed(silence(5000), det) == []
    assert not det.in_turn


def test_quiet_background_noise_gives_no_events() -> None:
    assert feed(noise(5000, -55)) == []


@pytest.mark.parametrize("burst", ["noise", "tone", "speech"])
def test_a_100_ms_burst_does_not_start_a_turn(burst: str, request: pytest.FixtureRequest
                                              ) -> None:
    if burst == "noise":
        sound = noise(100, -10)
    elif burst == "tone":
        t = np.arange(RATE // 10) / RATE
        sound = (0.5 * 32767 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
    else:
        if ESPEAK is None:
            pytest.skip("espeak-ng is not on PATH")
        clip = request.getfixturevalue("speech")["weather"]
        loudest = int(np.argmax(np.abs(clip)))
        start = max(0, loudest - RATE // 20)
        sound = clip[start: start + RATE // 10]
    assert len(sound) == RATE // 10
    det = detector()
    assert feed(Scene(sound).samples, det) == []
    assert not det.in_turn


@pytest.mark.parametrize("dbfs", [-35, -30, -25, -20])
def test_steady_noise_starts_at_most_one_turn_in_the_first_second(dbfs: float) -> None:
    timeline = feed(noise(10_000, dbfs))
    starts = [at for at, event in timeline if isinstance(event, TurnStarted)]
    assert len(starts) <= 1
    assert all(at <= 1000 * MS for at in starts)


def test_steady_noise_does_not_keep_starting_turns() -> None:
    det = detector(max_turn_s=3)
    timeline = feed(noise(10_000, -20), det)
    starts = [at for at, event in timeline if isinstance(event, TurnStarted)]
    assert len(starts) <= 1 and all(at <= 1000 * MS for at in starts), starts
    assert not det.in_turn, "10 s of steady noise is still held as a turn"


# --- real speech -----------------------------------------------------------------------


@needs_espeak
@pytest.mark.parametrize("background", [None, -60.0], ids=["digital-silence", "noise-60dB"])
@pytest.mark.parametrize("name", list(SENTENCES))
def test_an_utterance_gives_started_paused_ended(speech: dict[str, Int16Array], name: str,
                                                 background: float | None) -> None:
    scene = Scene(speech[name], background_dbfs=background)
    timeline = feed(scene.samples)
    # short pauses inside the utterance may pause and resume it, but never end it
    assert re.fullmatch(r"S(PR)*PE", shape(timeline)), shape(timeline)
    started = events_of(timeline, TurnStarted)[0]
    ended = events_of(timeline, TurnEnded)[0]
    last_pause = events_of(timeline, SpeechPaused)[-1]
    assert not ended.forced
    assert ended.speech_start_ns == started.speech_start_ns
    assert abs(started.speech_start_ns - scene.start_ns()) <= 60 * MS
    assert last_pause.speech_end_ns == ended.speech_end_ns
    # the turn's audio carries the whole utterance
    assert energy(ended.audio) >= 0.99 * energy(speech[name])


@needs_espeak
def test_the_turns_audio_keeps_a_pre_roll_from_before_the_onset(
        speech: dict[str, Int16Array]) -> None:
    # soft first sounds (the "s" of "set") are often below the VAD, and Whisper needs
    # them: the pre-roll counts back from where the onset began, not from the frame
    # where min_speech_ms of it had been heard
    scene = Scene(speech["weather"], background_dbfs=-60.0)  # every frame unique
    ended = events_of(feed(scene.samples), TurnEnded)[0]
    frames, _ = frames_of(scene.samples, FRAME)
    first = next(i for i, f in enumerate(frames) if np.array_equal(f, ended.audio[:FRAME]))
    onset_frame = ended.speech_start_ns // FRAME_NS - 1
    assert onset_frame - first == TurnDetector.PREROLL_MS // FRAME_MS


@needs_espeak
@pytest.mark.parametrize("background", [None, -60.0], ids=["digital-silence", "noise-60dB"])
@pytest.mark.parametrize("name", list(SENTENCES))
def test_speech_end_is_the_true_end_not_webrtcvads_hangover(
        speech: dict[str, Int16Array], name: str, background: float | None) -> None:
    scene = Scene(speech[name], background_dbfs=background)
    hangover_ns = webrtcvad_last_voiced_end_ns(scene.samples) - scene.end_ns()
    assert hangover_ns > 60 * MS, "this clip would not tell the true end from the hangover"
    ended = events_of(feed(scene.samples), TurnEnded)[0]
    assert abs(ended.speech_end_ns - scene.end_ns()) <= 60 * MS


@needs_espeak
@pytest.mark.parametrize("background", [None, -60.0], ids=["digital-silence", "noise-60dB"])
@pytest.mark.parametrize("name", list(SENTENCES))
def test_turn_ends_250_to_290_ms_after_the_true_end(
        speech: dict[str, Int16Array], name: str, background: float | None) -> None:
    scene = Scene(speech[name], background_dbfs=background)
    timeline = feed(scene.samples)
    (arrival_ns, ended), = [(at, e) for at, e in timeline if isinstance(e, TurnEnded)]
    assert ended.turn_end_ns == arrival_ns
    waited_ms = (ended.turn_end_ns - scene.end_ns()) / MS
    assert 250 <= waited_ms <= 290


@needs_espeak
def test_a_500_ms_gap_with_250_ms_silence_gives_two_turns(speech: dict[str, Int16Array]
                                                         ) -> None:
    scene = Scene(speech["hello"], silence(500), speech["weather"])
    timeline = feed(scene.samples, detector(silence_ms=250))
    assert re.fullmatch(r"S(PR)*PES(PR)*PE", shape(timeline)), shape(timeline)
    first, second = events_of(timeline, TurnEnded)
    assert abs(first.speech_end_ns - scene.end_ns(0)) <= 60 * MS
    assert abs(second.speech_end_ns - scene.end_ns(1)) <= 60 * MS
    assert first.turn_end_ns < scene.start_ns(1)
    assert energy(first.audio) >= 0.99 * energy(speech["hello"])
    assert energy(second.audio) >= 0.99 * energy(speech["weather"])


@needs_espeak
def test_a_500_ms_gap_with_700_ms_silence_is_one_paused_turn(speech: dict[str, Int16Array]
                                                            ) -> None:
    scene = Scene(speech["hello"], silence(500), speech["weather"])
    timeline = feed(scene.samples, detector(silence_ms=700))
    assert re.fullmatch(r"S(PR)*PE", shape(timeline)), shape(timeline)
    events = [event for _, event in timeline]
    # the gap shows as a pause at the end of the first utterance, resumed by the second
    gap_pauses = [i for i, e in enumerate(events) if isinstance(e, SpeechPaused)
                  and abs(e.speech_end_ns - scene.end_ns(0)) <= 60 * MS]
    assert len(gap_pauses) == 1
    assert isinstance(events[gap_pauses[0] + 1], SpeechResumed)
    ended = events[-1]
    assert isinstance(ended, TurnEnded) and not ended.forced
    assert abs(ended.speech_end_ns - scene.end_ns(1)) <= 60 * MS
    assert energy(ended.audio) >= 0.99 * (energy(speech["hello"]) + energy(speech["weather"]))


@needs_espeak
def test_max_turn_s_cuts_a_long_turn(speech: dict[str, Int16Array]) -> None:
    scene = Scene(speech["weather"], silence(100), speech["weather"])
    timeline = feed(scene.samples, detector(max_turn_s=2))
    ended = events_of(timeline, TurnEnded)
    assert ended, shape(timeline)
    cut = ended[0]
    assert cut.forced
    assert len(cut.audio) == 2 * RATE  # the whole turn so far, max_turn_s of it
    assert cut.speech_end_ns == cut.turn_end_ns
    assert cut.turn_end_ns < scene.end_ns(0)  # cut while the caller was still speaking
    assert shape(timeline).startswith("S")


@needs_espeak
def test_detector_is_ready_for_the_next_turn(speech: dict[str, Int16Array]) -> None:
    det = detector()
    first = feed(Scene(speech["hello"]).samples, det)
    assert not det.in_turn
    second = feed(Scene(speech["joke"]).samples, det)
    assert shape(first)[0] == shape(second)[0] == "S"
    assert shape(second)[-1] == "E"


# --- the parts -------------------------------------------------------------------------


def test_frames_of_splits_whole_frames_and_returns_the_tail() -> None:
    samples = np.arange(1000, dtype=np.int16)
    frames, tail = frames_of(samples, FRAME)
    assert [len(f) for f in frames] == [FRAME, FRAME, FRAME]
    assert np.array_equal(np.concatenate([*frames, tail]), samples)
    assert len(tail) == 1000 - 3 * FRAME


def test_classifier_rejects_a_wrong_frame_size() -> None:
    with pytest.raises(ValueError, match="480"):
        FrameClassifier(2, 30).classify(np.zeros(FRAME, dtype=np.int16), None)


def test_digital_silence_is_not_speech_like() -> None:
    verdict = FrameClassifier(2, FRAME_MS).classify(silence(FRAME_MS), None)
    assert not verdict.speech_like
    assert verdict.level_db == -100.0


def test_noise_floor_follows_the_quietest_frame_of_the_last_two_seconds() -> None:
    floor = NoiseFloor(initial_db=-60.0, frame_ms=FRAME_MS, window_ms=2000)
    for _ in range(50):  # 1 s of a -30 dB background: the window still holds -60
        floor.update(-30.0)
    assert floor.db == -60.0
    for _ in range(60):  # after 2.2 s the window is all background
        floor.update(-30.0)
    assert floor.db == pytest.approx(-30.0)
    for level in [-20.0, -30.0, -25.0] * 40:  # speech-like ups and downs over background
        floor.update(level)
    assert floor.db == pytest.approx(-30.0)
    floor.update(-70.0)  # one quiet frame is enough to lower it at once
    assert floor.db == -70.0


@needs_espeak
def test_fillers_for_late_audio_are_taken_out_of_the_turn(
        speech: dict[str, Int16Array]) -> None:
    """Audio that was only late (the loop was busy) must not reach STT with a hole of
    filler silence in the middle of a word."""
    audio = np.concatenate([silence(500), speech["weather"], silence(1000)])
    frames, _ = frames_of(audio, FRAME)
    middle = (500 + len(speech["weather"]) * 1000 // RATE // 2) // FRAME_MS
    det = detector(silence_ms=250)
    ended: list[TurnEnded] = []
    for index, frame in enumerate(frames):
        arrival_ns = (index + 1) * FRAME_NS
        if index == middle:  # 100 ms with no audio, then the late audio after all
            for _ in range(5):
                ended += [e for e in det.push_filler(arrival_ns) if isinstance(e, TurnEnded)]
        ended += [e for e in det.push(frame, arrival_ns) if isinstance(e, TurnEnded)]
    assert len(ended) == 1
    turn = ended[0].audio
    # the turn is the received audio only: the speech, whole, with no filler inside
    start = np.flatnonzero(turn)[0]
    assert np.array_equal(turn[start: start + len(speech["weather"])], speech["weather"])


@needs_espeak
def test_fillers_end_a_turn_whose_audio_stopped(speech: dict[str, Int16Array]) -> None:
    det = detector(silence_ms=100)
    frames, _ = frames_of(np.concatenate([silence(500), speech["hello"]]), FRAME)
    for index, frame in enumerate(frames):
        det.push(frame, (index + 1) * FRAME_NS)
    assert det.in_turn  # the client went quiet right after the last word
    events = [e for _ in range(10) for e in det.push_filler(len(frames) * FRAME_NS)]
    assert [type(e) for e in events] == [SpeechPaused, TurnEnded]


@needs_espeak
def test_a_stall_that_ends_a_turn_mid_word_is_joined_back_without_a_gap(
        speech: dict[str, Int16Array]) -> None:
    """The audio stopped long enough for the turn to end (fillers), then came after all:
    the late part starts a new turn, and the Floor joins the two as one utterance with
    nothing between them, because no audio was missing (a 300 ms hole of silence in
    mid-word made Whisper hear 'weather like' as 'whamer liking')."""
    audio = np.concatenate([silence(500), speech["weather"], silence(1000)])
    frames, _ = frames_of(audio, FRAME)
    middle = (500 + len(speech["weather"]) * 1000 // RATE // 2) // FRAME_MS
    det = detector(silence_ms=250)
    ended: list[TurnEnded] = []
    started: list[TurnStarted] = []
    for index, frame in enumerate(frames):
        arrival_ns = (index + 1) * FRAME_NS
        if index == middle:  # 600 ms with no audio: the turn ends on fillers
            for _ in range(30):
                ended += [e for e in det.push_filler(arrival_ns) if isinstance(e, TurnEnded)]
            assert len(ended) == 1
        for event in det.push(frame, arrival_ns):
            ended += [event] if isinstance(event, TurnEnded) else []
            started += [event] if isinstance(event, TurnStarted) else []
    assert len(ended) == 2 and len(started) == 2
    assert ended[0].audio_end == started[1].audio_start == middle * FRAME

    class Host:  # the first turn's reply is playing when the late audio comes
        playout = None

        def reply_playing(self) -> bool:
            return False

        async def interrupt(self, reason: str, forget: bool = False) -> None:
            pass

    floor = Floor(Host(), confirm_ms=900, continuation_window_ms=1000,  # type: ignore[arg-type]
                  rate=RATE)
    floor.turn_started(started[0].speech_start_ns, started[0].audio_start)
    floor.turn_ended(ended[0].audio, ended[0].turn_end_ns, ended[0].audio_end)
    floor.turn_started(started[1].speech_start_ns, started[1].audio_start)
    assert asyncio.run(floor.confirm("words", turn_id=2, replying_to=1)) is Verdict.CONTINUATION
    joined = floor.joined(ended[1].audio)
    begin = started[0].audio_start
    assert np.array_equal(joined, audio[begin: begin + len(joined)])
    assert np.array_equal(joined[500 * RATE // 1000 - begin:][:len(speech["weather"])],
                          speech["weather"])
