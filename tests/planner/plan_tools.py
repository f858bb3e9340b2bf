"""Tools shared by the planner tests: small, deterministic, with every kind of signature."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from agentflow.semantic import semantic_function
from agentflow.tools import tool


@tool
def lookup(key: str) -> str:
    """Look a key up."""
    return f"value of {key}"


@tool
def add(a: int, b: float = 1.0, c: int | None = None) -> float:
    """Add numbers."""
    return a + b + (c or 0)


@tool
def pack(items: list[Any], meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pack items."""
    return {"items": items, "meta": meta}


@tool
def anything(x: Any, y: Any = None) -> Any:
    """Return x."""
    return x


@tool
def now() -> str:
    """The time."""
    return "noon"


@tool
def choose(mode: Literal["fast", "slow"], n: int = 1) -> str:
    """Choose a mode."""
    return mode * n


@tool
async def slow(key: str, delay_s: float = 0.2) -> str:
    """Wait, then echo the key."""
    await asyncio.sleep(delay_s)
    return key


@tool
def explode(message: str) -> str:
    """Always fails."""
    raise RuntimeError(message)


@semantic_function(max_tokens=16)
def describe(thing: str) -> str:
    """Describe {thing} in three words."""


TEST_TOOLS = (lookup, add, pack, anything, now, choose, slow, explode, describe)
