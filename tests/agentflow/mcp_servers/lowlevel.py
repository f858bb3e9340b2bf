"""An MCP server on the SDK's low-level `Server`: its tools listed one per page.

`python lowlevel.py` serves `echo` and `shout` (valid schemas); `python lowlevel.py --broken`
adds `broken`, whose input schema is not a valid JSON schema.
"""

from __future__ import annotations

import sys
from typing import Any

import anyio
import mcp.types as types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

_TEXT = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
TOOLS = [
    types.Tool(name="echo", description="Echo the text.", input_schema=_TEXT),
    types.Tool(name="shout-it", description="Upper-case the text.", input_schema=_TEXT),
]
if "--broken" in sys.argv:
    TOOLS.append(
        types.Tool(
            name="broken",
            description="A tool whose schema is not a JSON schema.",
            input_schema={"type": "object", "properties": {"x": {"type": "no-such-type"}}},
        )
    )


async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
    index = int(params.cursor) if params is not None and params.cursor else 0
    next_cursor = str(index + 1) if index + 1 < len(TOOLS) else None
    return types.ListToolsResult(tools=TOOLS[index : index + 1], next_cursor=next_cursor)


async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
    text = str((params.arguments or {}).get("text", ""))
    if params.name == "shout-it":
        text = text.upper()
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)])


async def main() -> None:
    server = Server("agentflow-test-lowlevel", on_list_tools=list_tools, on_call_tool=call_tool)
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main)
