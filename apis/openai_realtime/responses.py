"""One Realtime response: a `Generation`'s outputs, told as the protocol's events.

Order, as the OpenAI Realtime API (GA) sends it for an audio reply:
`response.created`, `response.output_item.added`, `conversation.item.added`,
`response.content_part.added`, then `response.output_audio_transcript.delta` and
`response.output_audio.delta` as the reply is produced, then
`response.output_audio.done`, `response.output_audio_transcript.done`,
`response.content_part.done`, `response.output_item.done`, `conversation.item.done`
and last `response.done` (status completed, cancelled or failed). A text reply uses
`response.output_text.delta`/`.done` instead. Cancelling the run still sends the
closing events, with the item `incomplete` and `response.done` `cancelled`. A call of
one of the client's function tools is an output item of its own (after the message,
if the model said something first): `response.output_item.added` (type
`function_call`), `conversation.item.added`, `response.function_call_arguments.delta`
and `.done`, `response.output_item.done`, `conversation.item.done`; the client runs
it and answers with a `function_call_output` item, then `response.create`.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from apis.openai_realtime.conversation import Conversation, Item, new_item_id
from apis.openai_realtime.session_config import PCM_FORMAT, RATE
from pipelines.reply_engine import (
    Completed,
    Failed,
    Generation,
    Heard,
    Output,
    Said,
    ToolsCalled,
    Voiced,
)
from voice.audio import Int16Array
from voice.tasks import cancel_and_wait
from wire.openai_realtime.client_events import RealtimeApiError

Send = Callable[[dict[str, Any]], None]
DELTA_BYTES = RATE * 2 // 5  # 200 ms of audio per response.output_audio.delta


def event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "event_id": "event_" + secrets.token_hex(10), **fields}


@dataclass(frozen=True)
class ResponseOptions:
    modalities: tuple[str, ...]
    voice: str
    conversation_id: str | None  # None: out of band, the reply joins no conversation
    metadata: dict[str, Any] | None = None


class ResponseRun:
    def __init__(self, send: Send, conversation: Conversation, generation: Generation,
                 options: ResponseOptions, on_heard: Callable[[str | None], None]) -> None:
        self.id = "resp_" + secrets.token_hex(10)
        self._send = send
        self._conversation = conversation
        self._generation = generation
        self._options = options
        self._on_heard = on_heard
        self._audio = "audio" in options.modalities
        self._item: Item | None = None  # the message item
        self._outputs: list[Item] = []  # every output item, in order
        self._error: dict[str, Any] | None = None
        self.cancel_reason = "client_cancelled"
        self.finished = False

    def start(self) -> None:
        self._send(event("response.created", response=self._resource("in_progress")))

    async def run(self) -> None:
        try:
            while not isinstance(output := await self._generation.outbox.get(), Completed):
                self._forward(output)
        except asyncio.CancelledError:
            self.close("cancelled")
            raise
        self.close("failed" if self._error else "completed")

    def _forward(self, output: Output) -> None:
        if isinstance(output, Heard):
            self._on_heard(output.text)
        elif isinstance(output, Said):
            item = self._start_item()
            item.text = (item.text or "") + output.text
            kind = ("response.output_audio_transcript.delta" if self._audio
                    else "response.output_text.delta")
            self._send(event(kind, **self._where(item), delta=output.text))
        elif isinstance(output, Voiced) and self._audio:
            self._send_audio(self._start_item(), output.pcm)
        elif isinstance(output, Failed):
            error = output.error
            self._error = {"type": "server_error", "code": error.code, "message": error.message}
        elif isinstance(output, ToolsCalled):
            for call in output.calls:
                self._add_call(call.id, call.name, call.arguments)

    def _add_call(self, call_id: str, name: str, arguments: str) -> None:
        item = Item(id=new_item_id(), role="assistant", kind="function_call", text="",
                    status="in_progress", call_id=call_id, name=name)
        self._outputs.append(item)
        index = len(self._outputs) - 1
        self._send(event("response.output_item.added", response_id=self.id,
                         output_index=index, item=item.to_wire()))
        previous = None
        if self._options.conversation_id is not None:
            previous = self._conversation.add(item)
            self._send(event("conversation.item.added", previous_item_id=previous,
                             item=item.to_wire()))
        where = {"response_id": self.id, "item_id": item.id, "output_index": index,
                 "call_id": call_id}
        self._send(event("response.function_call_arguments.delta", **where, delta=arguments))
        item.arguments, item.status = arguments, "completed"
        self._send(event("response.function_call_arguments.done", **where, name=name,
                         arguments=arguments))
        self._send(event("response.output_item.done", response_id=self.id, output_index=index,
                         item=item.to_wire()))
        if self._options.conversation_id is not None:
            self._send(event("conversation.item.done", previous_item_id=previous,
                             item=item.to_wire()))

    def _send_audio(self, item: Item, pcm: bytes) -> None:
        for i in range(0, len(pcm), DELTA_BYTES):
            chunk = pcm[i: i + DELTA_BYTES]
            self._send(event("response.output_audio.delta", **self._where(item),
                             delta=base64.b64encode(chunk).decode("ascii")))
        item.audio_samples += len(pcm) // 2

    def _start_item(self) -> Item:
        if self._item is not None:
            return self._item
        item = Item(id=new_item_id(), role="assistant",
                    kind="output_audio" if self._audio else "output_text", text="",
                    status="in_progress")
        self._item = item
        self._outputs.append(item)
        self._send(event("response.output_item.added", response_id=self.id,
                         output_index=self._outputs.index(item), item=item.to_wire()))
        if self._options.conversation_id is not None:
            previous = self._conversation.add(item)
            self._send(event("conversation.item.added", previous_item_id=previous,
                             item=item.to_wire()))
        self._send(event("response.content_part.added", **self._where(item), part=self._part()))
        return item

    def _part(self) -> dict[str, Any]:
        text = (self._item.text if self._item else "") or ""
        return {"type": "audio", "transcript": text} if self._audio else {"type": "text",
                                                                         "text": text}

    def _where(self, item: Item) -> dict[str, Any]:
        return {"response_id": self.id, "item_id": item.id,
                "output_index": self._outputs.index(item), "content_index": 0}

    def close(self, status: str) -> None:
        """Send the closing events and `response.done` (once)."""
        if self.finished:
            return
        self.finished = True
        item = self._item
        if item is not None:
            item.status = "completed" if status == "completed" else "incomplete"
            where, text = self._where(item), item.text or ""
            if self._audio:
                self._send(event("response.output_audio.done", **where))
                self._send(event("response.output_audio_transcript.done", **where,
                                 transcript=text))
            else:
                self._send(event("response.output_text.done", **where, text=text))
            self._send(event("response.content_part.done", **where, part=self._part()))
            self._send(event("response.output_item.done", response_id=self.id,
                             output_index=self._outputs.index(item), item=item.to_wire()))
            if self._options.conversation_id is not None and item in self._conversation.items:
                self._send(event("conversation.item.done",
                                 previous_item_id=self._conversation.previous_of(item),
                                 item=item.to_wire()))
        self._send(event("response.done", response=self._resource(status)))

    def _usage(self) -> dict[str, Any]:
        """The response's tokens in OpenAI's shape: text from the LLM's own counts (the
        whole conversation it read, in; its reply, out), audio at OpenAI's rates (a
        token per 100 ms of the caller's turn heard, per 50 ms of reply spoken)."""
        used = self._generation.trace.usage
        audio_in = round(used.stt_seconds * 10)
        audio_out = round(used.tts_seconds * 20) if self._audio else 0
        text_in, text_out = used.llm_prompt_tokens, used.llm_completion_tokens
        return {"total_tokens": text_in + audio_in + text_out + audio_out,
                "input_tokens": text_in + audio_in, "output_tokens": text_out + audio_out,
                "input_token_details": {"text_tokens": text_in, "audio_tokens": audio_in,
                                        "cached_tokens": used.llm_cached_tokens},
                "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out}}

    def _resource(self, status: str) -> dict[str, Any]:
        details: dict[str, Any] | None = None
        if status == "cancelled":
            details = {"type": "cancelled", "reason": self.cancel_reason}
        elif status == "failed":
            details = {"type": "failed", "error": self._error}
        final = status != "in_progress"
        return {
            "object": "realtime.response", "id": self.id, "status": status,
            "status_details": details,
            "output": [item.to_wire() for item in self._outputs] if final else [],
            "conversation_id": self._options.conversation_id,
            "output_modalities": list(self._options.modalities), "max_output_tokens": "inf",
            "audio": {"output": {"format": PCM_FORMAT, "voice": self._options.voice}},
            "usage": self._usage() if final else None,
            "metadata": self._options.metadata,
        }


@dataclass
class Running:
    """A reply in the making: its generation and, once released, its response."""
    generation: Generation
    task: asyncio.Task[None]
    audio: Int16Array | None = None  # the caller's turn it answers, if any
    run: ResponseRun | None = None
    run_task: asyncio.Task[None] | None = None
    item: Item | None = None  # the committed item of that turn


async def cancel_running(running: Running | None) -> None:
    if running is not None:
        await cancel_and_wait(running.run_task, running.task)


def error_event(exc: RealtimeApiError) -> dict[str, Any]:
    return event("error", error={"type": exc.error_type, "code": exc.code,
                                 "message": exc.message, "param": exc.param,
                                 "event_id": exc.event_id})
