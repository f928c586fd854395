"""Shared fixtures: the test utterances, a Whisper model to transcribe replies back."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
FUZZ_FACTOR = 10  # `pytest --fuzz`: every parser's property tests x 10 (20,000 cases each)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--fuzz", action="store_true",
                     help=f"run the parsers' property tests {FUZZ_FACTOR}x longer")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--fuzz"):
        from tests import strategies

        strategies.FUZZ_FACTOR = FUZZ_FACTOR


@pytest.fixture(scope="session")
def utterances() -> dict[str, dict[str, str]]:
    data: dict[str, dict[str, str]] = json.loads((DATA / "utterances.json").read_text())
    for entry in data.values():
        entry["path"] = str(DATA / entry["file"])
    return data


_DIGITS = "zero one two three four five six seven eight nine".split()


def words(text: str) -> list[str]:
    """Lower-case words; digits spelled out one by one ("456" -> four five six)."""
    text = re.sub(r"\d", lambda m: f" {_DIGITS[int(m.group())]} ", text.lower())
    return re.sub(r"[^a-z' ]+", " ", text).split()


def word_recall(expected: str, heard: str) -> float:
    """Share of the expected words that appear in what was heard."""
    want, got = words(expected), set(words(heard))
    return sum(w in got for w in want) / max(1, len(want))
