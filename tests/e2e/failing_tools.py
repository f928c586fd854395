"""Tools that misbehave, for tests/e2e/test_tools.py (loaded with --tools)."""

from __future__ import annotations

import asyncio

from pipelines.tools import tool


@tool
def broken_lookup(order: str) -> str:
    """Looks up an order (and fails: its database is down).

    Args:
        order: The order number.
    """
    raise ConnectionError("the order database is down")


@tool(timeout_s=1.5)
async def slow_lookup(order: str) -> str:
    """Looks up an order, slowly: longer than its 1.5 s timeout.

    Args:
        order: The order number.
    """
    await asyncio.sleep(30)
    return "never"


@tool
async def sleepy_weather(city: str) -> str:
    """The weather in a city, after a second's thought.

    Args:
        city: The city.
    """
    await asyncio.sleep(1.2)
    return f"sunny and twenty degrees in {city}"
