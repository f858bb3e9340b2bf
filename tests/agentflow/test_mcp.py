"""MCP tools in and out, against real MCP server processes (stdio and streamable HTTP), no mocks.

The servers live in `mcp_servers/`: `basic.py` (the SDK's `MCPServer`), `lowlevel.py` (the SDK's
low-level `Server`, one tool per page, optionally a tool with an invalid schema), and
`agentflow_tools.py` (what `agentflow mcp serve` exposes). Every test is bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client, StdioServerParameters

from agentflow import Program, ToolRegistry
from agentflow.exceptions import (
    ArgumentValidationError,
    CallFailedError,
    ToolDefinitionError,
    ToolError,
    UnknownToolError,
    UserError,
)
from agentflow.ir import NodeState
from agentflow.mcp import McpTool, McpToolset, mcp_server, mcp_tools
from agentflow.testing import ScriptedLLM
from agentflow.tools import load_tools_module
from planner import build_grammar, build_planner_prompt, compile_and_run

REPO = Path(__file__).resolve().parents[2]
SERVERS = Path(__file__).resolve().parent / "mcp_servers"
PY = sys.executable
BASIC = f"stdio:{shlex.quote(PY)} {shlex.quote(str(SERVERS / 'basic.py'))}"
LOWLEVEL = f"stdio:{shlex.quote(PY)} {shlex.quote(str(SERVERS / 'lowlevel.py'))}"
TOOLS_MODULE = SERVERS / "agentflow_tools.py"
SERVE = ["-m", "agentflow", "mcp", "serve", "--tools", str(TOOLS_MODULE)]


@contextlib.asynccontextmanager
async def basic_tools(**options: Any) -> AsyncIterator[McpToolset]:
    async with await mcp_tools(BASIC, **options) as toolset:
        yield toolset


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def http_server(*args: str) -> Iterator[str]:
    """Start an MCP server process on a free 127.0.0.1 port; yield its endpoint; stop it."""
    port = _free_port()
    process = subprocess.Popen([PY, *args, str(port)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
        assert process.stderr is not None
        process.stderr.close()


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            assert process.stderr is not None
            raise AssertionError(f"server exited early: {process.stderr.read().decode()[-2000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"no server on port {port} after {timeout_s} s")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# -- MCP tools in: stdio ---------------------------------------------------------------------------------


async def test_schema_validation_and_results_over_stdio() -> None:
    async with asyncio.timeout(20), basic_tools() as tools:
        add = tools["add"]
        assert isinstance(add, McpTool) and add.mcp_name == "add"
        assert add.openai_schema()["function"]["parameters"] == add.input_schema == add.parameters_schema
        assert add.input_schema["required"] == ["a"]
        assert add.signature_text() == "add(a: int, b: int = 0)"
        with pytest.raises(ArgumentValidationError, match="'x' is not of type 'integer'"):
            add.bind(("x",), {})
        with pytest.raises(ArgumentValidationError, match="takes 2 arguments but 3 were given"):
            add.bind((1, 2, 3), {})
        assert await add(2, b=5) == "7"  # outside a program: a coroutine of the value

        async with Program() as p:
            total = add(1, 2)
            stats = tools["stats"]([1.0, 2.0, 3.0])
            as_json = tools["as_json"]("k")
            pixel = tools["pixel"]()
            failed = tools["fail"]("no such city")
            counted, not_sent = tools["counted"]("x"), tools["counted"](42)
            assert await total == "3"
            assert await stats == {"count": 3, "sum": 6.0, "mean": 2.0}  # structured content
            assert await as_json == '{"k": 1}'  # JSON text stays text
            assert await pixel == {"type": "image", "mime_type": "image/png", "size_bytes": 66}
            assert await counted == "1"
            calls_seen = await tools["call_count"]()
        failures = {f.node_id: f for f in p.result.failures}
        assert failures[failed.node_id].reason == (
            "ToolError: MCP tool 'fail' failed: Error executing tool fail: no such city"
        )
        assert "42 is not of type 'string'" in failures[not_sent.node_id].reason
        assert calls_seen == "1"  # the call with bad arguments never reached the server


async def test_independent_calls_run_in_parallel() -> None:
    async with asyncio.timeout(20), basic_tools() as tools:
        await tools["sleep"](0.0)  # warm
        start = time.perf_counter()
        async with Program() as p:
            variables = [tools["sleep"](0.3) for _ in range(8)]
        wall_s = time.perf_counter() - start
        assert [await_value(p, v.node_id) for v in variables] == ["slept 0.3"] * 8
        slowest_s = max(r.duration_s for r in p.result.trace.records)
        assert wall_s < 0.3 * 2 and wall_s < slowest_s * 1.5, (wall_s, slowest_s)  # one after another: 2.4 s


def await_value(program: Program, node_id: str) -> Any:
    return program.result.outputs[node_id]


async def test_server_exiting_mid_call_fails_that_node_and_skips_its_dependents() -> None:
    async with asyncio.timeout(20), basic_tools(timeout_s=10) as tools:
        async with Program() as p:
            crash = tools["crash"](0.3)
            after = tools["add"](crash)  # depends on the crashed call
            early = tools["add"](1, 1)  # answered before the server exits
        assert p.result.states[early.node_id] is NodeState.DONE
        assert p.result.states[crash.node_id] is NodeState.FAILED
        assert p.result.states[after.node_id] is NodeState.SKIPPED
        reason = next(f.reason for f in p.result.failures if f.node_id == crash.node_id)
        assert "closed the connection during the call (did it exit?)" in reason
        async with Program() as p2:
            late = tools["add"](1, 1)  # the server is gone: fails at once, no hang
        assert "closed the connection" in p2.result.failures[0].reason
        with pytest.raises(CallFailedError):
            await p2.future(late.node_id)


async def test_timeout_cancels_a_call_the_server_never_answers() -> None:
    async with asyncio.timeout(20), basic_tools(timeout_s=0.3) as tools:
        start = time.perf_counter()
        async with Program() as p:
            tools["never_answers"]()
        assert time.perf_counter() - start < 2.0
        assert p.result.failures[0].reason == "ToolTimeoutError: tool 'never_answers' timed out after 0.3 s"
        assert await tools["add"](1, 2) == "3"  # the session survives the cancelled request


async def test_tool_with_invalid_schema_is_refused_at_registration() -> None:
    async with asyncio.timeout(20):
        with pytest.raises(
            ToolDefinitionError, match=r"MCP tool 'broken' .* invalid input schema at properties/x/type"
        ):
            await mcp_tools(f"{LOWLEVEL} --broken")


async def test_every_page_is_listed_and_names_become_identifiers() -> None:
    async with asyncio.timeout(20), await mcp_tools(LOWLEVEL, prefix="ll_") as tools:
        assert tools.names() == ["ll_echo", "ll_shout_it"]
        assert tools["ll_shout_it"].mcp_name == "shout-it"
        assert await tools["ll_shout_it"]("hi") == "HI"
        with pytest.raises(UnknownToolError):
            tools["shout-it"]


async def test_program_closes_the_session_when_it_ends() -> None:
    async with asyncio.timeout(20):
        async with Program() as p:
            tools = await mcp_tools(BASIC)
            pid = int(await tools["pid"]())
            assert _alive(pid) and not tools.closed
        assert tools.closed and not _alive(pid)
        await tools.aclose()  # twice: harmless
        async with Program() as p:
            tools["add"](1, 2)
        assert p.result.failures[0].reason.endswith("is closed")


async def test_program_cancelled_mid_call_still_closes_the_session() -> None:
    async with asyncio.timeout(20):
        opened: asyncio.Future[tuple[McpToolset, int]] = asyncio.get_running_loop().create_future()

        async def body() -> None:
            async with Program():
                tools = await mcp_tools(BASIC)
                opened.set_result((tools, int(await tools["pid"]())))
                await tools["sleep"](30)

        task = asyncio.create_task(body())
        tools, pid = await opened
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert tools.closed and not _alive(pid)


async def test_server_strings_and_unreachable_servers() -> None:
    async with asyncio.timeout(20):
        for bad in ("ftp://example.com/mcp", "stdio:", "python server.py", "http://"):
            with pytest.raises(UserError, match="stdio:COMMAND ARGS"):
                await mcp_tools(bad)
        with pytest.raises(ToolDefinitionError, match="timeout_s must be > 0"):
            await mcp_tools(BASIC, timeout_s=0)
        with pytest.raises(ToolError, match="cannot open an MCP session"):
            await mcp_tools("stdio:/nonexistent/agentflow-mcp-server")
        silent = f"stdio:{shlex.quote(PY)} -c 'import sys; sys.stdin.read()'"  # reads, never answers
        with pytest.raises(ToolError, match="did not answer within 0.5 s"):
            await mcp_tools(silent, connect_timeout_s=0.5)


async def test_program_closes_registered_resources_last_first_and_survives_a_failing_one() -> None:
    closed: list[str] = []

    class Resource:
        def __init__(self, name: str) -> None:
            self.name = name

        async def aclose(self) -> None:
            closed.append(self.name)
            if self.name == "bad":
                raise RuntimeError("cannot close")

    async with Program() as p:
        for name in ("first", "bad", "last"):
            p.close_on_exit(Resource(name))
        assert closed == []
    assert closed == ["last", "bad", "first"] and p.result.ok
    with pytest.raises(UserError, match="has ended"):
        p.close_on_exit(Resource("late"))


# -- MCP tools in: streamable HTTP ------------------------------------------------------------------------


async def test_streamable_http_server() -> None:
    with http_server(str(SERVERS / "basic.py"), "http") as url:
        async with asyncio.timeout(20), await mcp_tools(url, timeout_s=5) as tools:
            async with Program() as p:
                total = tools["add"](40, 2)
                stats = tools["stats"]([2.0])
                bad = tools["add"](a="forty")
                slow = [tools["sleep"](0.3) for _ in range(4)]
            assert p.result.outputs[total.node_id] == "42"
            assert p.result.outputs[stats.node_id] == {"count": 1, "sum": 2.0, "mean": 2.0}
            assert p.result.states[bad.node_id] is NodeState.FAILED
            durations = {r.node_id: r.duration_s for r in p.result.trace.records}
            assert p.result.trace.wall_s < 1.5 * max(durations[v.node_id] for v in slow)


# -- the planner on MCP tools ------------------------------------------------------------------------------


async def test_planner_builds_grammar_and_prompt_and_runs_a_plan() -> None:
    async with asyncio.timeout(20), basic_tools() as tools:
        registry = ToolRegistry(tools)
        grammar = build_grammar(registry, max_steps=3)
        assert '"add("' in grammar and '"stats("' in grammar
        system, _ = build_planner_prompt("add 1 and 2", registry)
        assert "- add(a: int, b: int = 0): Add two integers." in system["content"]
        llm = ScriptedLLM(["1. add(1, 2)\n2. stats([1.5, 2.5])\n3. join()", '{"action": "finish", "answer": "3"}'])
        result = await compile_and_run("add 1 and 2", tools=registry, model=llm)
        assert result.ok and result.answer == "3"
        assert result.run.ok and list(result.run.outputs.values()) == ["3", {"count": 2, "sum": 4.0, "mean": 2.0}]


# -- MCP tools out: `agentflow mcp serve` --------------------------------------------------------------------


def _expected_schemas() -> dict[str, dict[str, Any]]:
    module = load_tools_module(str(TOOLS_MODULE))
    return {c.name: c.openai_schema()["function"]["parameters"] for c in ToolRegistry.from_module(module)}


async def _check_served(client: Client) -> None:
    listed = {t.name: t for t in (await client.list_tools()).tools}
    assert {name: t.input_schema for name, t in listed.items()} == _expected_schemas()
    assert set(listed) == {"add", "profile", "fail", "pause", "greet"}  # the semantic function too
    assert (await client.call_tool("add", {"a": 2, "b": 3})).content[0].text == "5"  # type: ignore[union-attr]
    record = await client.call_tool("profile", {"name": "Ann"})
    assert record.structured_content == {"name": "Ann", "tags": [], "initial": "A"} and not record.is_error
    failed = await client.call_tool("fail", {"message": "out of cheese"})
    assert failed.is_error and "ValueError: out of cheese" in failed.content[0].text  # type: ignore[union-attr]
    invalid = await client.call_tool("add", {"a": "two"})
    assert invalid.is_error and "invalid arguments for 'add'" in invalid.content[0].text  # type: ignore[union-attr]


async def test_serve_stdio_and_round_trip() -> None:
    async with asyncio.timeout(25):
        async with Client(StdioServerParameters(command=PY, args=SERVE, cwd=REPO)) as client:
            await _check_served(client)
        served = f"stdio:{shlex.quote(PY)} {shlex.join(SERVE)}"
        async with Program() as p:
            tools = await mcp_tools(served, cwd=REPO)  # the program closes it: not `async with` inside one
            total = tools["add"](1, 2)
            record = tools["profile"]("Bo", tags=["x"])
            failed = tools["fail"]("nope")
        assert p.result.outputs[total.node_id] == "3"
        assert p.result.outputs[record.node_id] == {"name": "Bo", "tags": ["x"], "initial": "B"}
        assert p.result.states[failed.node_id] is NodeState.FAILED


async def test_serve_http_and_dns_rebinding_protection() -> None:
    with http_server(*SERVE, "--transport", "http", "--port") as url:
        async with asyncio.timeout(25):
            async with Client(url) as client:
                await _check_served(client)
            async with await mcp_tools(url) as tools:
                assert await tools["add"](20, 22) == "42"
            async with httpx.AsyncClient() as http:
                response = await http.post(url, headers={"Host": "evil.example:80"}, json={})
            assert response.status_code in (400, 403, 421)


async def test_semantic_function_served_in_process_on_a_scripted_backend() -> None:
    module = load_tools_module(str(TOOLS_MODULE))
    llm = ScriptedLLM(["Hello there, Ann!"])
    server = mcp_server(ToolRegistry.from_module(module), model=llm)
    async with asyncio.timeout(10), Client(server) as client:
        answer = await client.call_tool("greet", {"name": "Ann"})
        assert not answer.is_error and answer.content[0].text == "Hello there, Ann!"  # type: ignore[union-attr]
        assert "Say hello to Ann" in llm.requests[0].messages[-1]["content"]
        unknown = await client.call_tool("nope", {})
        assert unknown.is_error and "unknown tool 'nope'" in unknown.content[0].text  # type: ignore[union-attr]


def test_import_agentflow_and_its_cli_load_no_mcp() -> None:
    code = (
        "import sys, agentflow, agentflow.cli; agentflow.cli.build_parser(); "
        "loaded = [m for m in sys.modules if m == 'mcp' or m.startswith('mcp.')]; assert not loaded, loaded"
    )
    result = subprocess.run([PY, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]


def test_bench_runs_small() -> None:
    from agentflow._mcp_bench import run_mcp_bench

    report = run_mcp_bench(num_calls=5, num_parallel=3, sleep_s=0.1)
    figures = report["figures"]
    assert figures["mcp_us_p50"] > 0 and figures["direct_us_p50"] > 0 and figures["parallel_calls"] == 3
    assert report["all_pass"] == (figures["parallel_ratio"] <= 1.2)
