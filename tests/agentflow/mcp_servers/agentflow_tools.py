"""Tools that `agentflow mcp serve --tools` exposes in the tests: @tools and a semantic function."""

from __future__ import annotations

import asyncio
from typing import Any

from agentflow import semantic_function, tool


@tool
def add(a: int, b: int = 0) -> int:
    """Add two integers.

    Args:
        a: The first one.
        b: The second one.
    """
    return a + b


@tool
def profile(name: str, tags: list[str] | None = None) -> dict[str, Any]:
    """A record about someone (a dict: structured content over MCP)."""
    return {"name": name, "tags": tags or [], "initial": name[:1]}


@tool
def fail(message: str) -> str:
    """Always raises."""
    raise ValueError(message)


@tool
async def pause(seconds: float) -> str:
    """Sleep, then say so."""
    await asyncio.sleep(seconds)
    return f"paused {seconds:g}"


@semantic_function(max_tokens=16)
def greet(name: str) -> str:
    """Say hello to {name} in three words."""
