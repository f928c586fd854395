"""Hypothesis strategies for hostile input, shared by the property tests of every parser.

`hostile_json(keys)` builds JSON values the way an attacker or a buggy client writes
them: infinities and NaN (which Python's json module reads and writes), numbers too big
for any field, Unicode digits that `str.isdigit()` accepts, control characters that
forge log lines, lists and objects where strings go, and deep nesting. Objects take
their keys mostly from `keys`, the field names a parser looks at, so the hostile values
reach the code behind the first type check.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

# Parser property tests run `cases(2000)` examples each; `pytest --fuzz` multiplies that
# (tests/conftest.py sets FUZZ_FACTOR before the test modules are collected).
FUZZ_FACTOR = 1


def cases(n: int) -> int:
    return n * FUZZ_FACTOR

HOSTILE_STRINGS = st.sampled_from([
    "", " ", "0", "1", "-1", "²", "٣", "１０", "1e999", "inf", "NaN", "9" * 40, "\n", "\r",
    "line\nforged=1", "\x00", "\u2028", "\ud7ff", "a" * 300, "0-15", "audio", "text"])
HOSTILE_NUMBERS = st.one_of(
    st.integers(), st.integers(-(10**30), 10**30), st.sampled_from([0, -1, 2**31, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("inf"), float("-inf"), float("nan"), 1e308, -0.0, 0.5]))
HOSTILE_SCALARS = st.one_of(st.none(), st.booleans(), HOSTILE_NUMBERS, HOSTILE_STRINGS,
                            st.text(max_size=12))


def hostile_json(keys: list[str] | tuple[str, ...] = ()) -> st.SearchStrategy[Any]:
    names = st.sampled_from(list(keys)) | st.text(max_size=8) if keys else st.text(max_size=8)
    return st.recursive(
        HOSTILE_SCALARS,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(names, inner, max_size=5),
        max_leaves=24)


def hostile_events(types: list[str] | tuple[str, ...],
                   keys: list[str] | tuple[str, ...]) -> st.SearchStrategy[str]:
    """JSON text of objects whose `type` is mostly one of `types` and whose other fields
    are hostile values under the names the parser reads."""
    kind = st.sampled_from(list(types)) | HOSTILE_SCALARS | hostile_json()
    body = st.dictionaries(st.sampled_from(list(keys)), hostile_json(keys), max_size=6)
    return st.builds(lambda k, b: json.dumps({**b, "type": k}), kind, body)
