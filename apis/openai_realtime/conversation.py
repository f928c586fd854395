"""The conversation of one /v1/realtime session: ordered items, as the LLM will read them.

Sans-I/O. Items keep text only (our models are text in the middle): a user audio
item holds its transcript once known, an assistant audio item the words of its audio.
`conversation.item.truncate` cuts an assistant item's words in proportion to the
audio kept, so the model never "remembers" saying what the caller did not hear.

A long session keeps its newest `MAX_ITEMS` items (older ones are forgotten, and
events naming them get `item_not_found`); what the LLM reads of them is further cut
to the token budget (pipelines/context.py).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from voice.audio import OPENAI_PCM_RATE
from wire.openai_realtime.client_events import RealtimeApiError, unsupported

Message = dict[str, Any]
MAX_ITEMS = 1000
MAX_TOOL_OUTPUT_CHARS = 32_000

_USER_PARTS = {"input_text": "text", "input_audio": "transcript"}
_ASSISTANT_PARTS = {"output_text": "text", "text": "text", "output_audio": "transcript",
                    "audio": "transcript"}


def new_item_id() -> str:
    return "item_" + secrets.token_hex(10)


@dataclass
class Item:
    id: str
    role: str  # user, assistant or system
    kind: str  # content part type: input_audio, input_text, output_audio, output_text
    text: str | None  # transcript or text; None while a transcription is pending
    status: str = "completed"
    audio_samples: int = 0  # an assistant item's audio, at 24 kHz
    truncated_ms: int | None = None
    # a function_call item (the model asks the client to run a tool): its call; a
    # function_call_output item (the client's answer): call_id, and the output in text
    call_id: str = ""
    name: str = ""
    arguments: str = ""

    @property
    def audio_ms(self) -> int:
        return self.audio_samples * 1000 // OPENAI_PCM_RATE

    def content(self) -> list[dict[str, Any]]:
        if self.kind in ("input_audio", "output_audio"):
            return [{"type": self.kind, "transcript": self.text}]
        return [{"type": self.kind, "text": self.text or ""}]

    def to_wire(self) -> dict[str, Any]:
        if self.kind == "function_call":
            return {"id": self.id, "object": "realtime.item", "type": "function_call",
                    "status": self.status, "call_id": self.call_id, "name": self.name,
                    "arguments": self.arguments}
        if self.kind == "function_call_output":
            return {"id": self.id, "object": "realtime.item", "type": "function_call_output",
                    "status": self.status, "call_id": self.call_id, "output": self.text or ""}
        return {"id": self.id, "object": "realtime.item", "type": "message",
                "status": self.status, "role": self.role, "content": self.content()}

    def truncate(self, audio_end_ms: int) -> None:
        """Keep the words of the first `audio_end_ms` of this item's audio."""
        words = (self.text or "").split()
        share = audio_end_ms / self.audio_ms if self.audio_ms else 0.0
        self.text = " ".join(words[: int(len(words) * min(1.0, share))])
        self.truncated_ms = audio_end_ms
        self.audio_samples = min(self.audio_samples, audio_end_ms * 24)


class Conversation:
    def __init__(self) -> None:
        self.items: list[Item] = []

    def last_id(self) -> str | None:
        return self.items[-1].id if self.items else None

    def get(self, item_id: str) -> Item | None:
        return next((item for item in self.items if item.id == item_id), None)

    def add(self, item: Item, previous_item_id: str | None = None) -> str | None:
        """Append, or insert after `previous_item_id` ("root": first); the predecessor."""
        if self.get(item.id) is not None:
            raise RealtimeApiError(f"Item with id '{item.id}' already exists.",
                                   code="item_already_exists", param="item.id")
        if len(self.items) >= MAX_ITEMS:
            del self.items[0]  # the oldest: long out of the LLM's budget by now
        if previous_item_id is None:
            previous = self.last_id()
            self.items.append(item)
            return previous
        if previous_item_id == "root":
            self.items.insert(0, item)
            return None
        anchor = self.get(previous_item_id)
        if anchor is None:
            raise RealtimeApiError(f"Item with id '{previous_item_id}' not found.",
                                   code="item_not_found", param="previous_item_id")
        self.items.insert(self.items.index(anchor) + 1, item)
        return previous_item_id

    def previous_of(self, item: Item) -> str | None:
        index = self.items.index(item)
        return self.items[index - 1].id if index else None

    def delete(self, item_id: str) -> None:
        item = self.get(item_id)
        if item is None:
            raise RealtimeApiError(f"Item with id '{item_id}' not found.",
                                   code="item_not_found", param="item_id")
        self.items.remove(item)

    def messages(self, instructions: str, skip: str | None = None) -> list[Message]:
        """Chat messages for the LLM: the instructions, then every item with words
        (but `skip`, the item whose words the caller is about to supply)."""
        messages: list[Message] = [{"role": "system", "content": instructions}]
        for item in self.items:
            if item.kind == "function_call":
                call = {"id": item.call_id, "type": "function",
                        "function": {"name": item.name, "arguments": item.arguments}}
                last = messages[-1]
                if last["role"] == "assistant" and "tool_calls" in last:
                    last["tool_calls"].append(call)  # the calls of one response
                elif last["role"] == "assistant" and last.get("content"):
                    last["tool_calls"] = [call]  # its words, then the calls
                else:
                    messages.append({"role": "assistant", "content": None,
                                     "tool_calls": [call]})
            elif item.kind == "function_call_output":
                messages.append({"role": "tool", "tool_call_id": item.call_id,
                                 "content": item.text or ""})
            elif item.text and item.id != skip:
                messages.append({"role": item.role, "content": item.text})
        return _answered_calls_only(messages)


def _answered_calls_only(messages: list[Message]) -> list[Message]:
    """The messages without tool calls that have no output yet (a Chat Completions
    endpoint refuses a call without its result): their words stay."""
    answered = {m["tool_call_id"] for m in messages if m["role"] == "tool"}
    kept: list[Message] = []
    for message in messages:
        calls = message.get("tool_calls")
        if calls is None:
            kept.append(message)
            continue
        calls = [c for c in calls if c["id"] in answered]
        if calls:
            kept.append({**message, "tool_calls": calls})
        elif message.get("content"):
            kept.append({"role": "assistant", "content": message["content"]})
    called = {c["id"] for m in kept for c in m.get("tool_calls") or []}
    return [m for m in kept if m["role"] != "tool" or m["tool_call_id"] in called]


def item_from_client(data: dict[str, Any]) -> Item:
    """An item of `conversation.item.create`: text messages of any role, function calls
    and their outputs."""
    kind = data.get("type")
    item_id = data.get("id")
    item_id = item_id if isinstance(item_id, str) and item_id else new_item_id()
    if kind in ("function_call", "function_call_output"):
        call_id = data.get("call_id")
        if not isinstance(call_id, str) or not 0 < len(call_id) <= 128:
            raise RealtimeApiError("Missing required parameter: 'item.call_id'.",
                                   code="missing_required_parameter", param="item.call_id")
        if kind == "function_call_output":
            output = data.get("output")
            if not isinstance(output, str):
                raise RealtimeApiError("Invalid type for 'item.output': expected a string.",
                                       code="invalid_type", param="item.output")
            return Item(id=item_id, role="tool", kind=kind, call_id=call_id,
                        text=output[:MAX_TOOL_OUTPUT_CHARS])
        name, arguments = data.get("name"), data.get("arguments", "")
        if not isinstance(name, str) or not 0 < len(name) <= 64:
            raise RealtimeApiError("Missing required parameter: 'item.name'.",
                                   code="missing_required_parameter", param="item.name")
        if not isinstance(arguments, str):
            raise RealtimeApiError("Invalid type for 'item.arguments': expected a string.",
                                   code="invalid_type", param="item.arguments")
        return Item(id=item_id, role="assistant", kind=kind, call_id=call_id, name=name,
                    arguments=arguments[:MAX_TOOL_OUTPUT_CHARS], text="")
    if kind != "message":
        raise unsupported(f"Items of type '{str(kind)[:40]}'", "item.type")
    role = data.get("role")
    parts = {"user": _USER_PARTS, "assistant": _ASSISTANT_PARTS,
             "system": {"input_text": "text"}}.get(role if isinstance(role, str) else "")
    if parts is None:
        raise RealtimeApiError("Invalid value for 'item.role': user, assistant or system.",
                               code="invalid_value", param="item.role")
    content = data.get("content")
    if not isinstance(content, list) or not content:
        raise RealtimeApiError("Missing required parameter: 'item.content'.",
                               code="missing_required_parameter", param="item.content")
    texts = [_part_text(part, parts) for part in content]
    return Item(id=item_id, role=str(role),
                kind="input_text" if role != "assistant" else "output_text",
                text=" ".join(t for t in texts if t))


def _part_text(part: Any, allowed: dict[str, str]) -> str:
    kind = part.get("type") if isinstance(part, dict) else None
    if not isinstance(kind, str) or kind not in allowed:
        raise RealtimeApiError(f"Invalid content type '{str(kind)[:40]}' for this role; "
                               f"use {', '.join(allowed)}.", code="invalid_value",
                               param="item.content.type")
    assert isinstance(part, dict)
    if kind == "input_audio" and part.get("audio"):
        raise unsupported("Audio content in conversation.item.create", "item.content.audio")
    text = part.get(allowed[kind])
    if text is not None and not isinstance(text, str):  # a list where the text goes
        raise RealtimeApiError(f"Invalid type for 'item.content.{allowed[kind]}': expected "
                               "a string.", code="invalid_type",
                               param=f"item.content.{allowed[kind]}")
    return text or ""
