"""The OpenAI audio API served from this worker's local models (`--audio-api-port`), so
other workers can share them (`--stt-url`, `--tts-url`; pipelines/providers/remote.py).

- `POST /v1/audio/transcriptions` (multipart/form-data: `file`, `model`, optional
  `language`, `response_format` json | text | verbose_json): the local faster-whisper
  model. The file may be WAV, FLAC or OGG (anything libsndfile reads), any rate; it is
  resampled to 16 kHz mono. `verbose_json` carries one segment with `no_speech_prob`
  and `avg_logprob`, for the client's hallucination filter.
- `POST /v1/audio/speech` (JSON: `input`, `model`, `voice`, optional
  `response_format` pcm | wav): the local Piper voice, sentence by sentence. `pcm` is
  streamed as it is made (24 kHz 16-bit mono, as the API defines it); `wav` comes
  whole.
- `GET /v1/models`: the two models, so that clients can check the server.
- `POST /v1/realtime/client_secrets`: a client secret for a browser
  (apis/openai_realtime/client_secrets.py).

aiohttp serves it (HTTP/1.1 keep-alive, multipart parsing, chunked streaming): the
main port is a WebSocket server, which takes no POST requests. Limits: 25 MB of audio
(the OpenAI API's own limit; more is refused with 413), `MAX_AUDIO_SECONDS` of it and
`MAX_CHANNELS` (read from the file's header before it is decoded: 25 MB of compressed
audio can hold hours, which would hold the shared model for minutes), 4096 characters
of input. A bearer key is needed when API keys are configured (`--api-keys`, scope
`audio`; minting: `secrets`) or `--audio-api-key` is set. Errors are OpenAI-shaped
JSON (`{"error": {"message", "type", "code"}}`) with the matching status, so the
`openai` client raises the usual exceptions.
"""

from __future__ import annotations

import io
import json
import logging
import secrets
from typing import Any

import numpy as np
import soundfile
from aiohttp import web

from apis.openai_realtime import client_secrets
from pipelines.providers.remote import wav_bytes
from pipelines.providers.stt import SpeechToText
from pipelines.providers.tts import TextToSpeech
from pipelines.sentences import SentenceSplitter, clean_for_speech
from voice.audio import OPENAI_PCM_RATE, PIPELINE_RATE, array_to_pcm16_bytes, resample
from voice.auth import SCOPES, SECRET_PREFIX, Credentials, Denied, Grant
from voice.errors import ProviderError

log = logging.getLogger(__name__)

MAX_AUDIO_BYTES = 25 * 1024 * 1024
MAX_AUDIO_SECONDS = 120.0  # workers send turns of at most max_turn_s (30 s)
MAX_CHANNELS = 8
MAX_INPUT_CHARS = 4096


def _error(status: int, message: str, code: str) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return web.json_response({"error": {"message": message, "type": kind, "code": code,
                                        "param": None}}, status=status)


class AudioApi:
    def __init__(self, stt: SpeechToText, tts: TextToSpeech, api_key: str = "",
                 credentials: Credentials | None = None,
                 secret_ttl_s: float = 600.0) -> None:
        self._stt = stt
        self._tts = tts
        self._api_key = api_key
        self._credentials = credentials or Credentials()
        self._secret_ttl_s = secret_ttl_s
        self.app = web.Application(client_max_size=MAX_AUDIO_BYTES + 64 * 1024,
                                   middlewares=[self._auth])
        self.app.add_routes([web.post("/v1/audio/transcriptions", self.transcriptions),
                             web.post("/v1/audio/speech", self.speech),
                             web.get("/v1/models", self.models),
                             web.post(client_secrets.PATH, self.client_secrets)])
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.port = int(self._runner.addresses[0][1])  # the bound port, when 0 was asked
        log.info("OpenAI audio API on http://%s:%d/v1 (stt %s, tts %s)", host, self.port,
                 self._stt.name, self._tts.name)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """`--audio-api-key`, or an API key with the route's scope (minting: `secrets`,
        the rest: `audio`); nothing when neither is configured. Client secrets open
        sessions only: they are refused here, not used up."""
        scope = "secrets" if request.path == client_secrets.PATH else "audio"
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        legacy = bool(self._api_key) and scope == "audio" and \
            secrets.compare_digest(given.encode(), self._api_key.encode())
        if not legacy and (self._api_key or self._credentials.required):
            if given.startswith(SECRET_PREFIX) or not self._credentials.required:
                return _error(401, "invalid API key", "invalid_api_key")
            grant = self._credentials.check(given, scope)
            if isinstance(grant, Denied):
                code = "invalid_api_key" if grant.status == 401 else "forbidden"
                return _error(grant.status, grant.message, code)
            request["grant"] = grant
        response: web.StreamResponse = await handler(request)
        return response

    async def client_secrets(self, request: web.Request) -> web.Response:
        grant = request.get("grant") or Grant("no keys configured", SCOPES)
        return await client_secrets.mint(request, self._credentials, grant,
                                         self._secret_ttl_s)

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self._stt.name, "object": "model", "owned_by": "local"},
            {"id": self._tts.name, "object": "model", "owned_by": "local"}]})

    async def transcriptions(self, request: web.Request) -> web.Response:
        try:
            form = await request.post()
        except (ValueError, web.HTTPException) as exc:
            return _error(400, f"expected multipart/form-data: {exc}", "invalid_form")
        except ConnectionError:  # the client went away mid-upload (a cancelled turn)
            log.info("transcription client disconnected mid-upload")
            return web.Response(status=499)
        upload = form.get("file")
        if not isinstance(upload, web.FileField):
            return _error(400, "the 'file' field (an audio file) is required", "missing_file")
        raw = upload.file.read()
        try:
            info = soundfile.info(io.BytesIO(raw))
            if info.samplerate <= 0 or info.channels <= 0:
                return _error(400, "the audio file has no sample rate or no channels",
                              "invalid_audio")
            if info.channels > MAX_CHANNELS:
                return _error(400, f"{info.channels} channels; at most {MAX_CHANNELS}",
                              "invalid_audio")
            if info.frames > MAX_AUDIO_SECONDS * info.samplerate:
                return _error(400, f"{info.frames / info.samplerate:.0f} s of audio; at most "
                              f"{MAX_AUDIO_SECONDS:.0f} s", "audio_too_long")
            data, rate = soundfile.read(io.BytesIO(raw), dtype="int16", always_2d=True)
        except (RuntimeError, soundfile.LibsndfileError, TypeError) as exc:
            return _error(400, f"cannot read the audio file: {exc}", "invalid_audio")
        audio = resample(np.ascontiguousarray(data.mean(axis=1).astype(np.int16)), rate,
                         PIPELINE_RATE)
        try:
            transcript = await self._stt.transcribe(audio)
        except ProviderError as exc:
            return _error(500, exc.message, "transcription_failed")
        fmt = str(form.get("response_format") or "json")
        if fmt == "text":
            return web.Response(text=transcript.text + "\n")
        if fmt == "verbose_json":
            seconds = transcript.audio_ms / 1000
            return web.json_response({
                "task": "transcribe", "language": str(form.get("language") or "english"),
                "duration": seconds, "text": transcript.text,
                "segments": [{"id": 0, "seek": 0, "start": 0.0, "end": seconds,
                              "text": transcript.text, "tokens": [], "temperature": 0.0,
                              "avg_logprob": transcript.avg_logprob, "compression_ratio": 1.0,
                              "no_speech_prob": transcript.no_speech_prob}]})
        if fmt != "json":
            return _error(400, f"response_format {fmt[:20]!r} is not supported here "
                          "(json, text, verbose_json)", "unsupported_format")
        return web.json_response({"text": transcript.text})

    async def speech(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except (ValueError, json.JSONDecodeError):
            return _error(400, "expected a JSON body", "invalid_json")
        text = body.get("input") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text.strip():
            return _error(400, "'input' (non-empty text) is required", "missing_input")
        if len(text) > MAX_INPUT_CHARS:
            return _error(400, f"'input' is over {MAX_INPUT_CHARS} characters", "input_too_long")
        fmt = body.get("response_format", "pcm")
        if fmt not in ("pcm", "wav"):
            return _error(400, f"response_format {str(fmt)[:20]!r} is not supported here "
                          "(pcm, wav)", "unsupported_format")
        pieces = [p for p in _sentences(text) if p]
        if fmt == "wav":
            try:
                parts = [await self._pcm_24k(piece) for piece in pieces]
            except ProviderError as exc:
                return _error(500, exc.message, "synthesis_failed")
            audio = np.concatenate(parts) if parts else np.zeros(0, np.int16)
            return web.Response(body=wav_bytes(audio, OPENAI_PCM_RATE), content_type="audio/wav")
        response = web.StreamResponse(headers={"Content-Type": "audio/pcm"})
        response.enable_chunked_encoding()
        started = False
        try:
            for piece in pieces:
                samples = await self._pcm_24k(piece)
                if not started:
                    await response.prepare(request)
                    started = True
                await response.write(array_to_pcm16_bytes(samples))
            if not started:
                await response.prepare(request)
            await response.write_eof()
        except ProviderError as exc:
            if not started:
                return _error(500, exc.message, "synthesis_failed")
            log.warning("speech synthesis failed mid-stream: %s", exc)  # the stream ends short
        except ConnectionError:  # the client went away (a cancelled speculation or turn)
            log.debug("speech client disconnected mid-stream")
        return response

    async def _pcm_24k(self, text: str) -> np.ndarray:
        samples = await self._tts.synthesize(text)
        return resample(samples, self._tts.sample_rate, OPENAI_PCM_RATE)


def _sentences(text: str) -> list[str]:
    splitter = SentenceSplitter()
    return [clean_for_speech(p) for p in [*splitter.push(text), *splitter.flush()]]
