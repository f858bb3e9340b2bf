"""An MCP server built with the SDK's own `MCPServer`, for agentflow's tests.

Run: `python basic.py` (stdio) or `python basic.py http PORT` (streamable HTTP on 127.0.0.1).
"""

from __future__ import annotations

import os
import sys

import anyio
from mcp.server.mcpserver import Image, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("agentflow-test-basic", log_level="CRITICAL")
_calls: dict[str, int] = {"count": 0}  # calls `counted` received


@server.tool(structured_output=False)
def add(a: int, b: int = 0) -> int:
    """Add two integers."""
    return a + b


@server.tool(structured_output=False)
async def sleep(seconds: float) -> str:
    """Sleep, then say how long."""
    await anyio.sleep(seconds)
    return f"slept {seconds:g}"


@server.tool()
def stats(values: list[float]) -> dict[str, float]:
    """Count, sum and mean of some numbers (structured content)."""
    return {"count": len(values), "sum": sum(values), "mean": sum(values) / len(values) if values else 0.0}


@server.tool(structured_output=False)
def as_json(key: str) -> str:
    """Text that happens to be JSON."""
    return '{"' + key + '": 1}'


@server.tool()
def fail(message: str) -> str:
    """Always fails, with this message."""
    raise ToolError(message)


@server.tool(structured_output=False)
def counted(tag: str) -> int:
    """Count the calls that reached the server."""
    del tag
    _calls["count"] += 1
    return _calls["count"]


@server.tool(structured_output=False)
def call_count() -> int:
    """How many calls `counted` received."""
    return _calls["count"]


@server.tool(structured_output=False)
def pixel() -> Image:
    """A 1x1 PNG (non-text content)."""
    png = bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
    )
    return Image(data=png, format="png")


@server.tool(structured_output=False)
async def never_answers() -> str:
    """Waits forever."""
    await anyio.sleep_forever()
    return "unreachable"


@server.tool(structured_output=False)
async def crash(after_s: float) -> str:
    """The server process exits in the middle of this call."""
    await anyio.sleep(after_s)
    os._exit(3)


@server.tool(structured_output=False)
def pid() -> int:
    """The server's process id."""
    return os.getpid()


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
