"""`agentflow mcp serve` (a module's tools as an MCP server) and `agentflow bench mcp`.

Nothing here imports `mcp` until a command runs, so building the CLI's parser stays cheap.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import sys
from typing import Any

from agentflow.exceptions import UserError
from agentflow.tools import ToolRegistry, load_tools_module

__all__: list[str] = []  # internal module: `agentflow.cli` loads it by name

_DEFAULT_PORT = 8765  # not 8000: `agentflow serve` takes that one


def register(subparsers: Any) -> None:
    mcp = subparsers.add_parser("mcp", help="MCP: serve a module's tools to MCP clients")
    commands = mcp.add_subparsers(dest="mcp_command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="expose a module's @tools and semantic functions as an MCP server",
        description="Serve every @tool and semantic function of a module over MCP (stdio or streamable HTTP).",
    )
    serve.add_argument("--tools", required=True, metavar="MODULE", help="module name or .py file defining the tools")
    serve.add_argument("--transport", choices=("stdio", "http"), default="stdio", help="default: stdio")
    serve.add_argument("--host", default="127.0.0.1", help="HTTP: address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=_DEFAULT_PORT, help=f"HTTP: port (default {_DEFAULT_PORT})")
    serve.add_argument("--model", default=None, help="model string for semantic functions (default: embedded)")
    serve.set_defaults(func=_serve)

    from agentflow.cli import add_bench

    bench = add_bench("mcp", "MCP tool call overhead vs a direct call; parallel MCP calls in one program", _bench)
    bench.add_argument("--calls", type=int, default=200, help="sequential calls timed per path (default 200)")
    bench.add_argument("--parallel", type=int, default=8, help="independent sleeping calls run together (default 8)")
    bench.add_argument("--sleep-s", type=float, default=0.2, help="how long each of those sleeps (default 0.2)")


def _serve(args: argparse.Namespace) -> int:
    from agentflow.mcp import serve_mcp

    registry = ToolRegistry.from_module(load_tools_module(args.tools))
    if len(registry) == 0:
        raise UserError(f"--tools {args.tools}: the module defines no @tool or @semantic_function at top level")
    if args.transport == "http":
        _announce(args.host, args.port, len(registry))
    asyncio.run(serve_mcp(registry, transport=args.transport, host=args.host, port=args.port, model=args.model))
    return 0


def _announce(host: str, port: int, num_tools: int) -> None:
    """On stderr: stdout is the protocol's under stdio, and a script may read stderr for readiness."""
    print(f"agentflow mcp: {num_tools} tools at http://{host}:{port}/mcp", file=sys.stderr)
    if not _is_loopback(host):
        print(
            f"agentflow mcp: warning: {host} is reachable from other machines, and the MCP endpoint has no "
            "authentication and no DNS-rebinding protection there",
            file=sys.stderr,
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bench(args: argparse.Namespace) -> dict[str, Any]:
    from agentflow._mcp_bench import run_mcp_bench

    return run_mcp_bench(num_calls=args.calls, num_parallel=args.parallel, sleep_s=args.sleep_s)
