"""The MCP server `agentflow bench mcp` calls: `python -m agentflow._mcp_bench_server` (stdio).

Built on the MCP SDK's own `MCPServer`, so the bench measures agentflow's MCP client path against
a server as other people write them. The tools are plain functions, which the bench also calls
directly (as local `@tool`s) to compare.
"""

from __future__ import annotations

import asyncio

__all__: list[str] = []  # internal module: run by the bench


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


async def sleep(seconds: float) -> float:
    """Sleep, then return the seconds slept."""
    await asyncio.sleep(seconds)
    return seconds


def main() -> None:
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("agentflow-bench", log_level="WARNING")
    server.add_tool(add, structured_output=False)
    server.add_tool(sleep, structured_output=False)
    server.run("stdio")


if __name__ == "__main__":
    main()
