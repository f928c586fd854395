"""One client of ws://HOST:PORT/v1/realtime: the OpenAI Realtime API, served by the cascade.

The reader parses each client event (`client_events`) and acts on it; refusals become
the protocol's `error` event and the connection stays open. All server events go
through one queue to one writer, so they leave in the order they were made. With
server VAD, the service's turn detector runs on the appended audio
(`input_audio`); a reply starts speculatively on the first silent frame after
speech and is released as a response when the turn ends (`generation`,
`responses`). Every task belongs to the connection's TaskGroup.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from apis.openai_realtime.conversation import (
    Conversation,
    Item,
    Message,
    item_from_client,
    new_item_id,
)
from apis.openai_realtime.input_audio import InputAudio, audio_ms
from apis.openai_realtime.responses import (
    ResponseOptions,
    ResponseRun,
    Running,
    cancel_running,
    error_event,
    event,
)
from apis.openai_realtime.session_config import RATE, SessionConfig, TurnDetection, apply_update
from pipelines.context import fit
from pipelines.providers.models import CascadeModels
from pipelines.reply_engine import Generation, transcribe
from voice.audio import Int16Array
from voice.errors import ProviderError
from voice.settings import Settings
from voice.tasks import REALTIME_EVENT_QUEUE_ITEMS, CappedQueue
from voice.turntaking.detector import SpeechPaused, SpeechResumed, TurnEnded, TurnStarted
from wire.openai_realtime.client_events import (
    AudioAppend,
    AudioClear,
    AudioCommit,
    ClientEvent,
    ItemCreate,
    ItemDelete,
    ItemTruncate,
    RealtimeApiError,
    ResponseCancel,
    ResponseCreate,
    SessionUpdate,
    parse_client_event,
    unsupported,
)
from wire.websocket import CLOSE_IDLE

log = logging.getLogger(__name__)

MIN_COMMIT_MS = 100


class RealtimeApiConnection:
    def __init__(self, ws: ServerConnection, models: CascadeModels, settings: Settings,
                 model: str, locked: Mapping[str, Any] | None = None) -> None:
        self._ws = ws
        self._models = models
        self._settings = settings
        self.config = SessionConfig(
            session_id="sess_" + secrets.token_hex(8), model=model,
            instructions=settings.system_prompt,
            turn_detection=TurnDetection("server_vad", settings.silence_ms))
        # a client secret's session settings: applied now, and fixed for the session
        locked = {k: v for k, v in (locked or {}).items() if k != "pipeline"}  # /ws's
        self._locked = [key for key in locked if key != "type"]
        if locked:
            self.config = apply_update(self.config, locked)
        self._conversation = Conversation()
        self._conversation_id = "conv_" + secrets.token_hex(8)
        self._input = InputAudio(settings)
        self._input.configure(self.config.turn_detection)
        self._out: CappedQueue[dict[str, Any]] = CappedQueue(
            REALTIME_EVENT_QUEUE_ITEMS, "realtime api: events the client has not read")
        self._speech_item: str | None = None  # the item the current VAD turn will become
        self._speculation: Running | None = None
        self._response: Running | None = None
        self._transcriptions: dict[str, asyncio.Task[None]] = {}
        self._tasks: asyncio.TaskGroup | None = None

    @property
    def id(self) -> str:
        return self.config.session_id

    def _send(self, data: dict[str, Any]) -> None:
        self._out.offer(data)

    async def run(self) -> None:
        self._send(event("session.created", session=self.config.to_wire()))
        self._send(event("conversation.created", conversation={
            "id": self._conversation_id, "object": "realtime.conversation"}))
        async with asyncio.TaskGroup() as tg:
            self._tasks = tg
            writer = tg.create_task(self._write(), name=f"{self.id}-writer")
            try:
                await self._read()
            finally:
                writer.cancel()
                await cancel_running(self._speculation)
                await cancel_running(self._response)
                for task in self._transcriptions.values():
                    task.cancel()

    async def _write(self) -> None:
        while True:
            data = await self._out.get()
            await self._ws.send(json.dumps(data, separators=(",", ":")))

    async def _read(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self._settings.realtime_api_idle_timeout_s):
                    message = await self._ws.recv()
            except TimeoutError:
                log.info("realtime api %s: no client event in %g s; closing", self.id,
                         self._settings.realtime_api_idle_timeout_s)
                await self._ws.close(CLOSE_IDLE, "idle timeout")
                return
            except ConnectionClosed:
                return
            try:
                if isinstance(message, bytes):
                    raise RealtimeApiError("Binary messages are not part of the protocol; send "
                                           "JSON text events.", code="invalid_event")
                await self._dispatch(parse_client_event(message))
            except RealtimeApiError as exc:
                log.info("realtime api %s: refused a client event: %s", self.id, exc.message)
                self._send(error_event(exc))
            except Exception:  # an event our checks did not foresee: a bug, never a close
                log.exception("realtime api %s: a client event could not be handled", self.id)
                self._send(error_event(RealtimeApiError(
                    "The event could not be handled.", code="internal_error",
                    error_type="server_error")))

    async def _dispatch(self, ev: ClientEvent) -> None:
        try:
            if isinstance(ev, AudioAppend):
                await self._on_audio(ev.pcm)
            elif isinstance(ev, SessionUpdate):
                self._on_session_update(ev.session)
            elif isinstance(ev, AudioCommit):
                self._on_commit()
            elif isinstance(ev, AudioClear):
                await self._discard_speculation()
                self._input.clear()
                self._input.reset_turn()
                self._send(event("input_audio_buffer.cleared"))
            elif isinstance(ev, ItemCreate):
                self._on_item_create(ev.item, ev.previous_item_id)
            elif isinstance(ev, ItemDelete):
                self._conversation.delete(ev.item_id)
                self._send(event("conversation.item.deleted", item_id=ev.item_id))
            elif isinstance(ev, ItemTruncate):
                await self._on_truncate(ev)
            elif isinstance(ev, ResponseCreate):
                self._on_response_create(ev.response)
            elif isinstance(ev, ResponseCancel):
                await self._on_response_cancel(ev.response_id)
        except RealtimeApiError as exc:
            raise exc.with_event_id(ev.event_id) from None

    # -- session and conversation -------------------------------------------------------
    def _on_session_update(self, session: dict[str, Any]) -> None:
        updated = apply_update(self.config, session)
        before, after = self.config.to_wire(), updated.to_wire()
        for key in self._locked:
            if before.get(key) != after.get(key):
                raise RealtimeApiError(
                    f"'session.{key}' was set by this session's client secret and cannot "
                    "be changed.", code="session_locked", param=f"session.{key}")
        self.config = updated
        self._input.configure(self.config.turn_detection)
        self._send(event("session.updated", session=self.config.to_wire()))

    def _on_item_create(self, data: dict[str, Any], previous_item_id: str | None) -> None:
        item = item_from_client(data)
        previous = self._conversation.add(item, previous_item_id)
        self._send(event("conversation.item.added", previous_item_id=previous,
                         item=item.to_wire()))
        self._send(event("conversation.item.done", previous_item_id=previous,
                         item=item.to_wire()))

    async def _on_truncate(self, ev: ItemTruncate) -> None:
        item = self._conversation.get(ev.item_id)
        if item is None or item.role != "assistant" or item.kind != "output_audio":
            raise RealtimeApiError(f"Item '{ev.item_id[:60]}' is not an assistant audio item "
                                   "of this conversation.", code="invalid_value", param="item_id")
        if ev.content_index != 0:
            raise RealtimeApiError("Invalid value for 'content_index': the item has one "
                                   "content part, 0.", code="invalid_value",
                                   param="content_index")
        if self._response is not None and self._response.run is not None and \
                item.status == "in_progress":
            await self._cancel_response("client_cancelled")
        if ev.audio_end_ms > item.audio_ms:
            raise RealtimeApiError(f"audio_end_ms {ev.audio_end_ms} is longer than the item's "
                                   f"audio ({item.audio_ms} ms).", code="invalid_value",
                                   param="audio_end_ms")
        log.info("realtime api %s: item %s truncated at %d ms of %d ms", self.id, item.id,
                 ev.audio_end_ms, item.audio_ms)
        item.truncate(ev.audio_end_ms)
        self._send(event("conversation.item.truncated", item_id=item.id, content_index=0,
                         audio_end_ms=ev.audio_end_ms))

    def _commit(self, item_id: str) -> Item:
        item = Item(id=item_id, role="user", kind="input_audio", text=None)
        previous = self._conversation.add(item)
        self._send(event("input_audio_buffer.committed", previous_item_id=previous,
                         item_id=item.id))
        self._send(event("conversation.item.added", previous_item_id=previous,
                         item=item.to_wire()))
        self._send(event("conversation.item.done", previous_item_id=previous,
                         item=item.to_wire()))
        return item

    def _on_commit(self) -> None:
        if self._input.buffered_ms < MIN_COMMIT_MS:
            raise RealtimeApiError(
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has "
                f"{self._input.buffered_ms:.2f}ms of audio.",
                code="input_audio_buffer_commit_empty")
        audio = self._input.take()
        self._input.reset_turn()
        item = self._commit(new_item_id())
        self._transcribe_later(item, audio)

    def _heard(self, item: Item, text: str | None) -> None:
        """The caller's words for a committed audio item (None: no words)."""
        item.text = text or ""
        if self.config.transcription is not None:
            self._send(event("conversation.item.input_audio_transcription.completed",
                             item_id=item.id, content_index=0, transcript=item.text,
                             usage={"type": "duration", "seconds": 0}))

    def _transcribe_later(self, item: Item, audio: Int16Array) -> None:
        """Transcribe a committed item that no response is transcribing."""
        async def run() -> None:
            try:
                text = await transcribe(self._models, audio,
                                        self._settings.stt_no_speech_threshold)
            except ProviderError as exc:
                item.text = ""
                if self.config.transcription is not None:
                    self._send(event("conversation.item.input_audio_transcription.failed",
                                     item_id=item.id, content_index=0, error={
                                         "type": "transcription_error", "code": exc.code,
                                         "message": exc.message, "param": None}))
                return
            self._heard(item, text)

        assert self._tasks is not None
        self._transcriptions = {k: t for k, t in self._transcriptions.items() if not t.done()}
        self._transcriptions[item.id] = self._tasks.create_task(
            run(), name=f"{self.id}-transcribe-{item.id}")

    # -- audio and server VAD -------------------------------------------------------------
    async def _on_audio(self, pcm: bytes) -> None:
        for turn_event in self._input.append(pcm):
            if isinstance(turn_event, TurnStarted):
                await self._on_speech_started(turn_event)
            elif isinstance(turn_event, SpeechPaused):
                await self._speculate(turn_event)
            elif isinstance(turn_event, SpeechResumed):
                await self._discard_speculation()
            elif isinstance(turn_event, TurnEnded):
                await self._on_speech_stopped(turn_event)

    async def _on_speech_started(self, ev: TurnStarted) -> None:
        detection = self._input.detection
        assert detection is not None
        self._speech_item = new_item_id()
        frame_ms = self._settings.vad_frame_ms
        start = max(0, audio_ms(ev.speech_start_ns) - frame_ms - detection.prefix_padding_ms)
        self._send(event("input_audio_buffer.speech_started", audio_start_ms=start,
                         item_id=self._speech_item))
        if detection.interrupt_response and self._response is not None:
            await self._cancel_response("turn_detected")

    async def _speculate(self, ev: SpeechPaused) -> None:
        await self._discard_speculation()
        detection = self._input.detection
        if detection is None or not detection.create_response or self._response is not None:
            return
        self._speculation = self._start_generation(
            ev.audio, ev.speech_end_ns, self._speech_item,
            on_transcript=lambda text: self._input.note_transcript(ev.speech_end_ns, text))

    async def _on_speech_stopped(self, ev: TurnEnded) -> None:
        item_id = self._speech_item or new_item_id()
        self._speech_item = None
        self._send(event("input_audio_buffer.speech_stopped",
                         audio_end_ms=audio_ms(ev.turn_end_ns), item_id=item_id))
        self._input.take()
        item = self._commit(item_id)
        detection = self._input.detection
        speculation, self._speculation = self._speculation, None
        if detection is None or not detection.create_response or self._response is not None:
            await cancel_running(speculation)
            self._transcribe_later(item, ev.audio)
            return
        speculative = (speculation is not None
                       and speculation.generation.speech_end == ev.speech_end_ns)
        if speculation is None or not speculative:
            await cancel_running(speculation)
            speculation = self._start_generation(ev.audio, ev.speech_end_ns, item_id)
        log.info("realtime api %s: turn ended at %d ms (reply %s)", self.id,
                 audio_ms(ev.turn_end_ns), "prepared speculatively" if speculative else "started")
        self._release(speculation, item)

    # -- responses ----------------------------------------------------------------------
    def _start_generation(self, audio: Int16Array | None, speech_end: int,
                          item_id: str | None, instructions: str | None = None,
                          speak: bool | None = None,
                          on_transcript: Callable[[str | None], None] | None = None) -> Running:
        prompt = instructions if instructions is not None else self.config.instructions

        def messages_for(heard: str | None) -> list[Message]:
            messages = self._conversation.messages(prompt, skip=item_id)
            asked = messages + ([{"role": "user", "content": heard}] if heard else [])
            return fit(asked, self._settings.llm_history_tokens)

        generation = Generation(
            self._models, messages_for, audio, RATE, self._settings.stt_no_speech_threshold,
            speak="audio" in self.config.output_modalities if speak is None else speak,
            speech_end=speech_end, on_transcript=on_transcript, label=f"realtime api {self.id}",
            client_tools=self.config.chat_tools())
        assert self._tasks is not None
        task = self._tasks.create_task(self._after_transcriptions(generation),
                                       name=f"{self.id}-generation")
        return Running(generation, task, audio)

    async def _after_transcriptions(self, generation: Generation) -> None:
        """Words of committed audio items are needed first (a manual-turn response)."""
        pending = [t for t in self._transcriptions.values() if not t.done()]
        if pending:
            await asyncio.wait(pending)
        await generation.run()

    def _release(self, running: Running, item: Item | None,
                 options: ResponseOptions | None = None) -> None:
        options = options or ResponseOptions(tuple(self.config.output_modalities),
                                             self.config.voice, self._conversation_id)
        run = ResponseRun(self._send, self._conversation, running.generation, options,
                          on_heard=lambda text: self._heard(item, text) if item else None)
        running.run, running.item = run, item
        run.start()
        assert self._tasks is not None
        running.run_task = self._tasks.create_task(self._deliver(running),
                                                   name=f"{self.id}-{run.id}")
        self._response = running

    async def _deliver(self, running: Running) -> None:
        assert running.run is not None
        try:
            await running.run.run()
        except Exception:  # a bug in one response must not end the connection
            log.exception("realtime api %s: response %s failed", self.id, running.run.id)
            self._send(error_event(RealtimeApiError("The response failed unexpectedly.",
                                                    code="internal_error",
                                                    error_type="server_error")))
        finally:
            if self._response is running:
                self._response = None
                running.task.cancel()

    def _on_response_create(self, params: dict[str, Any]) -> None:
        if self._response is not None:
            run = self._response.run
            raise RealtimeApiError(
                "Conversation already has an active response in progress: "
                f"{run.id if run else ''}. Wait until the response is finished before "
                "creating a new one.", code="conversation_already_has_active_response")
        if params.get("input") is not None:
            raise unsupported("'response.input'", "response.input")
        instructions = params.get("instructions")
        modalities = params.get("output_modalities") or list(self.config.output_modalities)
        if modalities not in (["audio"], ["text"]):
            raise RealtimeApiError("Invalid value for 'response.output_modalities'.",
                                   code="invalid_value", param="response.output_modalities")
        out_of_band = params.get("conversation") == "none"
        metadata = params.get("metadata")
        options = ResponseOptions(tuple(modalities), self.config.voice,
                                  None if out_of_band else self._conversation_id,
                                  metadata if isinstance(metadata, dict) else None)
        running = self._start_generation(
            None, 0, None, instructions if isinstance(instructions, str) else None,
            speak=modalities == ["audio"])
        self._release(running, None, options)

    async def _on_response_cancel(self, response_id: str | None) -> None:
        running = self._response
        if running is None or running.run is None or (
                response_id is not None and response_id != running.run.id):
            raise RealtimeApiError("Cancellation failed: no active response found",
                                   code="response_cancel_not_active")
        await self._cancel_response("client_cancelled")

    async def _cancel_response(self, reason: str) -> None:
        running, self._response = self._response, None
        if running is None:
            return
        if running.run is not None:
            running.run.cancel_reason = reason
        await cancel_running(running)
        if running.run is not None:
            running.run.close("cancelled")  # if its task was cancelled before it started
        if running.item is not None and running.item.text is None and running.audio is not None:
            self._transcribe_later(running.item, running.audio)  # the words still count

    async def _discard_speculation(self) -> None:
        running, self._speculation = self._speculation, None
        await cancel_running(running)
