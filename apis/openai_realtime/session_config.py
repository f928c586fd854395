"""The configuration of one /v1/realtime session, and `session.update` applied to it.

Sans-I/O. Only fields present in an update change (the protocol's rule); an object
given for `turn_detection` or `transcription` replaces the old one, `null` turns it
off. Function tools are the client's: the model may call them, the client runs them
and answers with a `function_call_output` item (MCP tools are refused). What we
cannot honour (other audio formats, transcription sessions) is
refused with an `error` event naming the parameter; what we accept but ignore (voice,
speed, noise reduction, tracing, token limits) is echoed back in `session.updated`.
See docs/realtime.md.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from voice.audio import OPENAI_PCM_RATE
from wire.openai_realtime.client_events import RealtimeApiError, unsupported

RATE = OPENAI_PCM_RATE
PCM_FORMAT = {"type": "audio/pcm", "rate": RATE}
EAGERNESS = ("low", "medium", "high", "auto")
_TOP_LEVEL = {"type", "model", "instructions", "output_modalities", "audio", "tools",
              "tool_choice", "max_output_tokens", "tracing", "prompt", "truncation", "include",
              "parallel_tool_calls", "reasoning"}


@dataclass(frozen=True)
class TurnDetection:
    type: str  # server_vad or semantic_vad
    silence_duration_ms: int
    prefix_padding_ms: int = 300
    threshold: float = 0.5
    create_response: bool = True
    interrupt_response: bool = True
    eagerness: str = "auto"  # semantic_vad only

    def to_wire(self) -> dict[str, Any]:
        common = {"type": self.type, "create_response": self.create_response,
                  "interrupt_response": self.interrupt_response}
        if self.type == "semantic_vad":
            return {**common, "eagerness": self.eagerness}
        return {**common, "threshold": self.threshold, "prefix_padding_ms": self.prefix_padding_ms,
                "silence_duration_ms": self.silence_duration_ms, "idle_timeout_ms": None}


@dataclass(frozen=True)
class SessionConfig:
    session_id: str
    model: str
    instructions: str
    turn_detection: TurnDetection | None
    voice: str = "marin"
    speed: float = 1.0
    output_modalities: tuple[str, ...] = ("audio",)
    transcription: dict[str, Any] | None = None
    noise_reduction: dict[str, Any] | None = None
    max_output_tokens: int | str = "inf"
    tools: tuple[dict[str, Any], ...] = ()  # function tools, as the client declared them
    tool_choice: str | dict[str, Any] = "auto"
    passthrough: dict[str, Any] = field(default_factory=dict)  # accepted, not acted on

    def chat_tools(self) -> list[dict[str, Any]] | None:
        """The tools as a Chat Completions request offers them (None: none offered)."""
        if not self.tools or self.tool_choice == "none":
            return None
        wanted = self.tool_choice.get("name") if isinstance(self.tool_choice, dict) else None
        return [{"type": "function", "function": {
                    "name": t["name"], "description": t.get("description", ""),
                    "parameters": t.get("parameters") or {"type": "object", "properties": {}}}}
                for t in self.tools if wanted is None or t["name"] == wanted]

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": "realtime", "object": "realtime.session", "id": self.session_id,
            "model": self.model, "output_modalities": list(self.output_modalities),
            "instructions": self.instructions, "tools": list(self.tools),
            "tool_choice": self.tool_choice,
            "max_output_tokens": self.max_output_tokens, "tracing": None, "prompt": None,
            "include": None,
            "audio": {
                "input": {"format": PCM_FORMAT, "transcription": self.transcription,
                          "noise_reduction": self.noise_reduction,
                          "turn_detection": self.turn_detection and self.turn_detection.to_wire()},
                "output": {"format": PCM_FORMAT, "voice": self.voice, "speed": self.speed},
            },
            **self.passthrough,
        }


def _fail(message: str, param: str, code: str = "invalid_value") -> RealtimeApiError:
    return RealtimeApiError(message, code=code, param=f"session.{param}")


def apply_update(config: SessionConfig, session: dict[str, Any]) -> SessionConfig:
    unknown = sorted(set(session) - _TOP_LEVEL)
    if unknown:
        raise _fail(f"Unknown parameter: 'session.{unknown[0]}'.", unknown[0],
                    "unknown_parameter")
    if session.get("type", "realtime") != "realtime":
        raise unsupported("A transcription session", "session.type")
    changes: dict[str, Any] = {}
    if "instructions" in session:
        changes["instructions"] = _string(session["instructions"], "instructions")
    if "model" in session:
        changes["model"] = _string(session["model"], "model")
    if "output_modalities" in session:
        changes["output_modalities"] = _modalities(session["output_modalities"])
    if "tools" in session:
        changes["tools"] = _tools(session["tools"])
    if "tool_choice" in session:
        changes["tool_choice"] = _tool_choice(session["tool_choice"])
    if "max_output_tokens" in session:
        changes["max_output_tokens"] = _max_tokens(session["max_output_tokens"])
    for name in ("tracing", "prompt", "truncation", "include", "reasoning",
                 "parallel_tool_calls"):
        if name in session:
            changes.setdefault("passthrough", dict(config.passthrough))[name] = session[name]
    audio = session.get("audio")
    if audio is not None:
        if not isinstance(audio, dict):
            raise _fail("Invalid type for 'session.audio': expected an object.", "audio",
                        "invalid_type")
        changes.update(_audio_input(audio.get("input"), config))
        changes.update(_audio_output(audio.get("output")))
    return dataclasses.replace(config, **changes)


MAX_TOOLS = 128


def _tools(value: Any) -> tuple[dict[str, Any], ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_TOOLS:
        raise _fail(f"Invalid type for 'session.tools': an array of at most {MAX_TOOLS} "
                    "tools.", "tools", "invalid_type")
    tools = []
    for i, tool in enumerate(value):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            if isinstance(tool, dict) and tool.get("type") == "mcp":
                raise unsupported("MCP tools", f"session.tools[{i}].type")
            raise _fail(f"Invalid value for 'session.tools[{i}].type': 'function'.",
                        f"tools[{i}].type")
        name = tool.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", name):
            raise _fail(f"Invalid value for 'session.tools[{i}].name': 1-64 letters, digits, "
                        "_ or -.", f"tools[{i}].name")
        description = tool.get("description", "")
        parameters = tool.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(description, str) or not isinstance(parameters, dict):
            raise _fail(f"Invalid type for 'session.tools[{i}]': description is a string, "
                        "parameters a JSON schema object.", f"tools[{i}]", "invalid_type")
        tools.append({"type": "function", "name": name, "description": description,
                      "parameters": parameters})
    return tuple(tools)


def _tool_choice(value: Any) -> str | dict[str, Any]:
    if value in ("auto", "none", "required"):
        return str(value)
    if isinstance(value, dict) and value.get("type") == "function" \
            and isinstance(value.get("name"), str):
        return {"type": "function", "name": value["name"]}
    raise _fail("Invalid value for 'session.tool_choice': auto, none, required or "
                "{\"type\": \"function\", \"name\": ...}.", "tool_choice")


def _string(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise _fail(f"Invalid type for 'session.{param}': expected a string.", param,
                    "invalid_type")
    return value


def _modalities(value: Any) -> tuple[str, ...]:
    if value not in (["audio"], ["text"]):
        raise _fail("Invalid value for 'session.output_modalities': use [\"audio\"] or "
                    "[\"text\"].", "output_modalities")
    return tuple(value)


def _max_tokens(value: Any) -> int | str:
    if value == "inf" or (isinstance(value, int) and not isinstance(value, bool)
                          and 1 <= value <= 4096):
        return value  # type: ignore[no-any-return]
    raise _fail("Invalid value for 'session.max_output_tokens': 1-4096 or \"inf\".",
                "max_output_tokens")


def _check_format(value: Any, param: str) -> None:
    if value is None:
        return
    if (not isinstance(value, dict) or value.get("type", "audio/pcm") != "audio/pcm"
            or value.get("rate", RATE) != RATE):
        raise unsupported(f"Audio formats other than audio/pcm at {RATE} Hz", f"session.{param}")


def _audio_input(data: Any, config: SessionConfig) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise _fail("Invalid type for 'session.audio.input': expected an object.",
                    "audio.input", "invalid_type")
    _check_format(data.get("format"), "audio.input.format")
    changes: dict[str, Any] = {}
    if "turn_detection" in data:
        changes["turn_detection"] = _turn_detection(data["turn_detection"], config)
    if "transcription" in data:
        value = data["transcription"]
        if value is not None and not isinstance(value, dict):
            raise _fail("Invalid type for 'session.audio.input.transcription'.",
                        "audio.input.transcription", "invalid_type")
        changes["transcription"] = value
    if "noise_reduction" in data:
        changes["noise_reduction"] = data["noise_reduction"]
    return changes


def _turn_detection(value: Any, config: SessionConfig) -> TurnDetection | None:
    if value is None:
        return None
    param = "audio.input.turn_detection"
    if not isinstance(value, dict) or value.get("type") not in ("server_vad", "semantic_vad"):
        raise _fail("Invalid value for 'session.audio.input.turn_detection.type': use "
                    "'server_vad', 'semantic_vad' or null.", f"{param}.type")
    default_silence = (config.turn_detection.silence_duration_ms
                       if config.turn_detection else 500)
    eagerness = value.get("eagerness") or "auto"
    if value["type"] == "semantic_vad" and eagerness not in EAGERNESS:
        raise _fail("Invalid value for eagerness: low, medium, high or auto.",
                    f"{param}.eagerness")
    return TurnDetection(
        type=value["type"],
        silence_duration_ms=int(_number(value, "silence_duration_ms", default_silence,
                                        20, 10000)),
        prefix_padding_ms=int(_number(value, "prefix_padding_ms", 300, 0, 10000)),
        threshold=_number(value, "threshold", 0.5, 0.0, 1.0),
        create_response=_flag(value, "create_response"),
        interrupt_response=_flag(value, "interrupt_response"),
        eagerness=eagerness if value["type"] == "semantic_vad" else "auto")


def _number(value: dict[str, Any], name: str, default: float, low: float,
            high: float) -> float:
    """A number of the turn_detection object, within [low, high]; null means default.
    Infinities, NaN (which JSON parsers accept) and strings are refused by name."""
    raw = value.get(name)
    if raw is None:
        return default
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not low <= raw <= high:
        raise _fail(f"Invalid value for 'session.audio.input.turn_detection.{name}': "
                    f"a number from {low:g} to {high:g}.", f"audio.input.turn_detection.{name}")
    return float(raw)


def _flag(value: dict[str, Any], name: str) -> bool:
    raw = value.get(name, True)
    if not isinstance(raw, bool):
        raise _fail(f"Invalid type for 'session.audio.input.turn_detection.{name}': "
                    "expected a boolean.", f"audio.input.turn_detection.{name}", "invalid_type")
    return raw


def _audio_output(data: Any) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise _fail("Invalid type for 'session.audio.output': expected an object.",
                    "audio.output", "invalid_type")
    _check_format(data.get("format"), "audio.output.format")
    changes: dict[str, Any] = {}
    if "voice" in data:
        voice = data["voice"]
        voice = voice.get("id", "custom") if isinstance(voice, dict) else voice
        if not isinstance(voice, str) or not 0 < len(voice) <= 64:
            raise _fail("Invalid value for 'session.audio.output.voice': a voice name.",
                        "audio.output.voice")
        changes["voice"] = voice
    if "speed" in data:
        speed = data["speed"]
        if not isinstance(speed, int | float) or not 0.25 <= speed <= 1.5:
            raise _fail("Invalid value for 'session.audio.output.speed': 0.25-1.5.",
                        "audio.output.speed")
        changes["speed"] = float(speed)
    return changes
