"""What a turn and a session used, and what that cost.

`Usage` counts what the paid APIs bill by: LLM prompt, completion and cached tokens
(from the endpoint's own `usage` when it sends one; counted here, at about four
characters a token, when it does not, and then marked `llm_estimated`), seconds of
audio transcribed, characters and seconds of audio synthesized, tool calls, and a
realtime provider's audio and text tokens in and out (from its `response.done`).
Work done for a speculation that was thrown away counts in the session's usage, not
in any turn's: the session paid for it all the same.

`Prices` turns usage into money: a table of rows per model (US dollars per million
tokens or characters, per minute of audio), each dated, from a JSON file
(`--price-table`) or the defaults below. The bundled local models cost nothing per
use; what they cost is CPU, which the call record reports as seconds of model work.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voice.errors import ConfigError

CHARS_PER_TOKEN = 4  # the estimate when an endpoint does not report its usage


@dataclass
class Usage:
    llm_requests: int = 0
    llm_prompt_tokens: int = 0
    llm_completion_tokens: int = 0
    llm_cached_tokens: int = 0
    llm_estimated: bool = False  # some LLM counts are ours, not the endpoint's
    stt_seconds: float = 0.0
    tts_characters: int = 0
    tts_seconds: float = 0.0
    tool_calls: int = 0
    realtime_audio_in_tokens: int = 0
    realtime_audio_out_tokens: int = 0
    realtime_text_in_tokens: int = 0
    realtime_text_out_tokens: int = 0
    realtime_cached_tokens: int = 0

    def add(self, other: Usage) -> None:
        for name, value in dataclasses.asdict(other).items():
            if isinstance(value, bool):
                setattr(self, name, getattr(self, name) or value)
            else:
                setattr(self, name, getattr(self, name) + value)

    def llm(self, prompt: int, completion: int, cached: int = 0,
            estimated: bool = False) -> None:
        self.llm_requests += 1
        self.llm_prompt_tokens += prompt
        self.llm_completion_tokens += completion
        self.llm_cached_tokens += cached
        self.llm_estimated = self.llm_estimated or estimated

    def to_dict(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v
                for k, v in dataclasses.asdict(self).items()}

    def __bool__(self) -> bool:
        return any(dataclasses.asdict(self).values())


def estimate_tokens(text: str) -> int:
    return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


@dataclass(frozen=True)
class Price:
    """US dollars; a field left 0 is free (or not billed that way)."""

    model: str
    dated: str  # when the row was last checked against the provider's price page
    input_per_m: float = 0.0  # per million tokens (LLM prompt; realtime text in)
    cached_input_per_m: float = 0.0
    output_per_m: float = 0.0
    audio_input_per_m: float = 0.0  # realtime audio tokens
    audio_output_per_m: float = 0.0
    per_audio_minute: float = 0.0  # speech-to-text
    per_m_characters: float = 0.0  # text-to-speech


# OpenAI's list prices, standard tier; local models cost nothing per use
DEFAULT_PRICES = (
    Price("gpt-4o-mini", "2025-12", input_per_m=0.15, cached_input_per_m=0.075,
          output_per_m=0.60),
    Price("gpt-4o", "2025-12", input_per_m=2.50, cached_input_per_m=1.25, output_per_m=10.00),
    Price("gpt-4.1-mini", "2025-12", input_per_m=0.40, cached_input_per_m=0.10,
          output_per_m=1.60),
    Price("gpt-4.1", "2025-12", input_per_m=2.00, cached_input_per_m=0.50, output_per_m=8.00),
    Price("gpt-realtime", "2025-12", input_per_m=4.00, cached_input_per_m=0.40,
          output_per_m=16.00, audio_input_per_m=32.00, audio_output_per_m=64.00),
    Price("gpt-4o-realtime-preview", "2025-12", input_per_m=5.00, cached_input_per_m=2.50,
          output_per_m=20.00, audio_input_per_m=40.00, audio_output_per_m=80.00),
    Price("gpt-4o-mini-realtime-preview", "2025-12", input_per_m=0.60,
          cached_input_per_m=0.30, output_per_m=2.40, audio_input_per_m=10.00,
          audio_output_per_m=20.00),
    Price("whisper-1", "2025-12", per_audio_minute=0.006),
    Price("gpt-4o-mini-transcribe", "2025-12", per_audio_minute=0.003),
    Price("tts-1", "2025-12", per_m_characters=15.00),
    Price("gpt-4o-mini-tts", "2025-12", per_m_characters=12.00),
)


@dataclass(frozen=True)
class Models:
    """Which priced model did each part of the work (empty: a local model, free)."""

    llm: str = ""
    stt: str = ""
    tts: str = ""
    realtime: str = ""


@dataclass
class Prices:
    rows: dict[str, Price] = field(default_factory=lambda: {p.model: p for p in DEFAULT_PRICES})

    @classmethod
    def load(cls, path: str) -> Prices:
        """The defaults, with the rows of a JSON file (`{"prices": [{"model": ...,
        "dated": ..., "input_per_m": ...}, ...]}`) added or replacing theirs."""
        prices = cls()
        if not path:
            return prices
        try:
            rows = json.loads(Path(path).read_text())["prices"]
            for row in rows:
                price = Price(**row)
                prices.rows[price.model] = price
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"price_table {path}: {exc} (want {{\"prices\": [{{\"model\": "
                              "..., \"dated\": ..., \"input_per_m\": ...}]}})") from exc
        return prices

    def row(self, model: str) -> Price | None:
        """The row of `model`, or of the longest listed name it starts with
        (`gpt-4o-mini-2024-07-18` is priced as `gpt-4o-mini`)."""
        if model in self.rows:
            return self.rows[model]
        named = [name for name in self.rows if model.startswith(name)]
        return self.rows[max(named, key=len)] if named else None

    def cost(self, usage: Usage, models: Models) -> dict[str, Any]:
        """Dollars by part and in all, and the rows used (`unpriced`: models with no
        row, counted as free)."""
        parts: dict[str, float] = {}
        used: dict[str, str] = {}
        unpriced: list[str] = []

        def priced(model: str) -> Price | None:
            if not model:
                return None
            row = self.row(model)
            if row is None:
                unpriced.append(model)
            else:
                used[row.model] = row.dated
            return row

        if (llm := priced(models.llm)) is not None:
            fresh = usage.llm_prompt_tokens - usage.llm_cached_tokens
            parts["llm"] = (fresh * llm.input_per_m + usage.llm_cached_tokens
                            * (llm.cached_input_per_m or llm.input_per_m)
                            + usage.llm_completion_tokens * llm.output_per_m) / 1e6
        if (stt := priced(models.stt)) is not None:
            parts["stt"] = usage.stt_seconds / 60 * stt.per_audio_minute
        if (tts := priced(models.tts)) is not None:
            parts["tts"] = usage.tts_characters * tts.per_m_characters / 1e6
        if (realtime := priced(models.realtime)) is not None:
            fresh = usage.realtime_text_in_tokens - usage.realtime_cached_tokens
            parts["realtime"] = (
                usage.realtime_audio_in_tokens * realtime.audio_input_per_m
                + usage.realtime_audio_out_tokens * realtime.audio_output_per_m
                + max(0, fresh) * realtime.input_per_m
                + usage.realtime_cached_tokens * realtime.cached_input_per_m
                + usage.realtime_text_out_tokens * realtime.output_per_m) / 1e6
        return {"usd": round(sum(parts.values()), 6),
                "parts": {k: round(v, 6) for k, v in parts.items()},
                "prices": used, "unpriced": sorted(set(unpriced))}
