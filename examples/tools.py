"""Tools that need no network, for the README's walk-through: the time, arithmetic and a
small notes store. Run the service with them:

    voice serve --tools examples.tools

Write your own the same way: a module of functions marked with `@tool`, with type hints
and a docstring (the LLM reads both), passed to `--tools` by its import name.
"""

from __future__ import annotations

import ast
import datetime
import operator
import threading
from collections.abc import Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pipelines.tools import tool

MAX_NOTES = 100
_notes: list[str] = []
_lock = threading.Lock()


@tool
def current_time(timezone: str = "UTC") -> str:
    """The current date and time.

    Args:
        timezone: An IANA time zone name, such as Europe/Paris or America/New_York.
    """
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {timezone!r}") from exc
    now = datetime.datetime.now(zone)
    return f"It is {now:%H:%M} on {now:%A}, {now.day} {now:%B %Y} ({timezone})."


_OPERATORS: dict[type, Callable[..., float]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.Mod: operator.mod, ast.Pow: operator.pow,
    ast.USub: operator.neg, ast.UAdd: operator.pos}


@tool
def calculate(expression: str) -> str:
    """Works out an arithmetic expression exactly, such as 17 * 23 or (2 + 3) / 4.

    Args:
        expression: Numbers with + - * / % ** and parentheses.
    """
    if len(expression) > 200:
        raise ValueError("the expression is too long")
    value = _evaluate(ast.parse(expression, mode="eval").body)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{expression} = {value:g}" if isinstance(value, float) else f"{expression} = {value}"


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) \
            and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 100:
            raise ValueError("the exponent is too large")
        result: float = _OPERATORS[type(node.op)](left, right)
        return result
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        unary: float = _OPERATORS[type(node.op)](_evaluate(node.operand))
        return unary
    raise ValueError("only numbers, + - * / % ** and parentheses")


@tool
def add_note(text: str) -> str:
    """Keeps a note for later in this service's notes (for example a caller's request).

    Args:
        text: What to write down.
    """
    with _lock:
        if len(_notes) >= MAX_NOTES:
            _notes.pop(0)
        _notes.append(text[:500])
        return f"Noted. There are {len(_notes)} notes."


@tool
def read_notes() -> list[str]:
    """The notes kept so far, oldest first."""
    with _lock:
        return list(_notes)
