"""MCP tools in and out: an MCP server's tools become agentflow tools, and agentflow's tools an MCP server.

```python
from agentflow import Program
from agentflow.mcp import mcp_tools

async with Program() as p:
    fs = await mcp_tools("stdio:npx -y @modelcontextprotocol/server-filesystem /tmp", timeout_s=10)
    a = fs["read_text_file"](path="/tmp/a.txt")       # a SemanticVariable, like any @tool call
    b = fs["read_text_file"](path="/tmp/b.txt")       # independent: runs in parallel with `a`
    print(await a, await b)
# the program closed the MCP session (and stopped the server process) when it ended
```

`server` is `"stdio:COMMAND ARGS..."` (the SDK's stdio client starts the process) or the URL of a
streamable-HTTP endpoint (`http://127.0.0.1:8000/mcp`). Each MCP tool is a `McpTool`: its
schema is the server's `inputSchema`, arguments are validated against it (`jsonschema`) before
anything is sent, and it runs through the executor like an `@tool`, with its limits, timeout,
retries and cancellation; `ToolRegistry(toolset)` registers the tools for the planner. A call's
value is the result's structured content when there is some, else its text (joined), else a short
description of what came back; an `isError` result fails the call with the server's text.

The toolset owns one MCP session. It closes with `aclose()` or `async with`, and by itself when
`mcp_tools` was awaited inside a running `Program`, once that program's calls have settled. Inside
a program, leave the closing to it: calls run until the program's block ends, so a toolset
closed earlier in the block fails the calls still to come.

Out: `mcp_server(tools)` is an MCP server (the SDK's low-level `Server`) listing each tool's and
semantic function's `openai_schema()`; each `tools/call` runs inside a `Program` of its own, so
semantic functions reach the `model` backend. A dict value comes back as structured content,
anything else as text; a failed call (bad arguments, a tool that raised) as an `isError` result.

```python
await serve_mcp(ToolRegistry.from_module(my_tools), transport="http", port=8765)  # or:
# agentflow mcp serve --tools my_tools --transport http --port 8765
```

The `mcp` package is imported here only: `import agentflow` does not load it.
"""

from __future__ import annotations

import asyncio
import copy
import json
import math
import re
import shlex
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from types import TracebackType
from typing import Any, Literal

import anyio
import jsonschema
import pydantic
import referencing
from mcp import Client, MCPError, StdioServerParameters
from mcp import types as mcp_types
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server

from agentflow import _context
from agentflow.backends import LLMBackend, resolve_backend
from agentflow.calls import CallContext
from agentflow.exceptions import (
    AgentflowError,
    ArgumentValidationError,
    ToolDefinitionError,
    ToolError,
    UnknownToolError,
    UserError,
)
from agentflow.ir import CallKind, CallNode
from agentflow.program import Program
from agentflow.schema_tools import SchemaTool
from agentflow.tools import ToolRegistry, _check_options

__all__ = ["McpTool", "McpToolset", "mcp_server", "mcp_tools", "serve_mcp"]

_FORMS = "'stdio:COMMAND ARGS...' or the http(s):// URL of a streamable-HTTP endpoint"
_MAX_PAGES = 1000  # tools/list pages followed before a server's cursor is taken to be endless
_MAX_NAME_CHARS = 64
_MAX_ERRORS_SHOWN = 3


async def mcp_tools(
    server: str,
    *,
    timeout_s: float | None = None,
    retries: int = 0,
    max_concurrency: int | None = None,
    expected_duration_s: float | None = None,
    prefix: str = "",
    connect_timeout_s: float = 30.0,
    env: Mapping[str, str] | None = None,
    cwd: str | PathLike[str] | None = None,
) -> McpToolset:
    """Connect to an MCP server, list its tools (every page) and make each an agentflow tool.

    `timeout_s`, `retries`, `max_concurrency` (per tool) and `expected_duration_s` are `@tool`'s
    options, applied to every tool. Tool names become identifiers (`get-weather` ->
    `get_weather`) with `prefix` in front; the server still sees its own names. `connect_timeout_s`
    bounds the handshake and the listing. For a stdio server, `env` adds to the few variables the
    SDK passes on (PATH, HOME, ...) and `cwd` is the process's working directory.

    Inside a running `Program`, the program closes the session when it ends. A tool whose
    `inputSchema` is not a valid JSON schema raises `ToolDefinitionError` naming it; a server
    that cannot be reached or does not answer raises `ToolError`.
    """
    _check_options(
        mcp_tools,
        name="mcp_tools",
        timeout_s=timeout_s,
        retries=retries,
        max_concurrency=max_concurrency,
        expected_duration_s=expected_duration_s,
    )
    if not connect_timeout_s > 0:
        raise UserError(f"connect_timeout_s must be > 0, got {connect_timeout_s!r}")
    session = _Session(server, _transport_target(server, env=env, cwd=cwd))
    listed = await session.open(connect_timeout_s=connect_timeout_s)
    options = _ToolOptions(
        timeout_s=timeout_s, retries=retries, max_concurrency=max_concurrency, expected_duration_s=expected_duration_s
    )
    try:
        toolset = McpToolset(session, _build_tools(listed, session, prefix=prefix, options=options))
    except BaseException:
        await session.aclose()
        raise
    program = _context.current_program()
    if program is not None:
        program.close_on_exit(toolset)
    return toolset


class McpToolset:
    """The tools of one MCP server, over one session: iterate it, index it by name, close it."""

    def __init__(self, session: _Session, tools: Sequence[McpTool]) -> None:
        self.server = session.server
        self.tools = tuple(tools)
        self._session = session
        self._by_name = {t.name: t for t in self.tools}  # agentflow name -> tool

    def names(self) -> list[str]:
        """The tools' agentflow names, in the server's order."""
        return list(self._by_name)

    def __getitem__(self, name: str) -> McpTool:
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownToolError(name, list(self._by_name)) from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[McpTool]:
        return iter(self.tools)

    def __len__(self) -> int:
        return len(self.tools)

    @property
    def closed(self) -> bool:
        return self._session.closed

    async def aclose(self) -> None:
        """End the session (a stdio server's process is stopped); closing twice is harmless."""
        await self._session.aclose()

    async def __aenter__(self) -> McpToolset:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<McpToolset {self.server!r} ({state}): {', '.join(self._by_name)}>"


class McpTool(SchemaTool):
    """One tool of an MCP server: schema from its `inputSchema`, calls sent over the toolset's session.

    Outside a `Program`, calling it returns a coroutine of the value (`await add(1, 2)`).
    """

    def __init__(self, listed: mcp_types.Tool, session: _Session, *, name: str, options: _ToolOptions) -> None:
        self.mcp_name = listed.name  # the name the server knows
        self.server = session.server
        self.input_schema = listed.input_schema
        self.output_schema = listed.output_schema
        self._validator = _schema_validator(name, listed, session.server)
        self._session = session
        doc = {"name": name, "description": listed.description or listed.title or "", "parameters": listed.input_schema}
        super().__init__(
            doc,
            self._call_outside_program,
            timeout_s=options.timeout_s,
            retries=options.retries,
            max_concurrency=options.max_concurrency,
            expected_duration_s=options.expected_duration_s,
            tolerant=False,
        )

    @property
    def parameters_schema(self) -> dict[str, Any]:
        """The server's `inputSchema`, as it listed it."""
        return copy.deepcopy(self.input_schema)

    def bind(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Map arguments to names (required first, then optional) and validate them against the schema."""
        data = _as_json(self.name, self._by_name(args, kwargs))
        errors = sorted(self._validator.iter_errors(data), key=_error_path)
        if errors:
            raise ArgumentValidationError(self.name, "; ".join(_describe_error(e) for e in errors[:_MAX_ERRORS_SHOWN]))
        return data

    async def invoke(self, arguments: dict[str, Any], ctx: CallContext) -> Any:
        """Send the call; its value is what `_value` reads off the result."""
        del ctx
        return _value(self.name, await self._session.call(self.name, self.mcp_name, arguments))

    def invoke_sync(self, arguments: dict[str, Any]) -> Any:
        raise AssertionError("MCP tools are async; the executor awaits invoke()")

    async def _call_outside_program(self, *args: Any, **kwargs: Any) -> Any:
        arguments = self.bind(args, kwargs)
        return _value(self.name, await self._session.call(self.name, self.mcp_name, arguments))

    def __repr__(self) -> str:
        return f"<McpTool {self.signature_text()} from {self.server!r}>"


# -- the session --------------------------------------------------------------------------------------


class _Session:
    """One MCP client session, owned by one task.

    The SDK's client holds anyio task groups and cancel scopes, which must be entered and left
    by the same task, and whose failures cancel that task: so a task of its own enters the
    client and waits until `aclose`, and calls from any task go through its session. When the
    server goes away, the SDK fails every call in flight (and any later one) with
    CONNECTION_CLOSED: nothing waits for an answer that cannot come.
    """

    def __init__(self, server: str, target: StdioServerParameters | str) -> None:
        self.server = server
        self._target = target
        self._client: Client | None = None  # set while the session is open
        self._scope = anyio.CancelScope()  # cancels a session still opening; the SDK's shutdown stays shielded
        self._closing = asyncio.Event()
        self._owner: asyncio.Task[None] | None = None
        self._closed = False
        self._lost: str | None = None  # why an open session ended without `aclose`

    @property
    def closed(self) -> bool:
        return self._closed

    async def open(self, *, connect_timeout_s: float) -> list[mcp_types.Tool]:
        """Start the owner task; return the server's tools once it has connected and listed them."""
        listed: asyncio.Future[list[mcp_types.Tool]] = asyncio.get_running_loop().create_future()
        self._owner = asyncio.create_task(self._own(listed, connect_timeout_s), name=f"mcp session {self.server}")
        try:
            return await listed
        except BaseException:
            await self.aclose()
            raise

    async def _own(self, listed: asyncio.Future[list[mcp_types.Tool]], connect_timeout_s: float) -> None:
        _context.detach()  # the session belongs to no program
        self._scope.deadline = anyio.current_time() + connect_timeout_s
        try:
            with self._scope:
                async with Client(self._target) as client:
                    tools = await _list_all_tools(client)
                    self._scope.deadline = math.inf
                    self._client = client
                    _settle(listed, result=tools)
                    await self._closing.wait()
        except Exception as exc:
            _settle(listed, error=ToolError(f"cannot open an MCP session to {self.server!r}: {_describe(exc)}"))
            self._lost = _describe(exc)
        finally:
            self._client = None
            self._closed = True
            _settle(listed, error=ToolError(f"MCP session to {self.server!r}: {self._why_not_open(connect_timeout_s)}"))

    def _why_not_open(self, connect_timeout_s: float) -> str:
        if self._closing.is_set():
            return "closed while connecting"
        if self._scope.cancelled_caught:
            return f"the server did not answer within {connect_timeout_s:g} s"
        return "ended while connecting"

    async def call(self, tool: str, mcp_name: str, arguments: dict[str, Any]) -> mcp_types.CallToolResult:
        """Send `tools/call`; transport and protocol failures become `ToolError`s that say what happened."""
        client = self._client
        if client is None:
            if self._closing.is_set() or self._lost is None:
                raise ToolError(f"MCP tool {tool!r}: the session to {self.server!r} is closed")
            raise ToolError(f"MCP tool {tool!r}: the session to {self.server!r} ended: {self._lost}")
        try:
            return await client.call_tool(mcp_name, arguments)
        except MCPError as exc:
            raise ToolError(self._error_text(tool, exc)) from None
        except (pydantic.ValidationError, RuntimeError, anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
            raise ToolError(f"MCP tool {tool!r}: the call failed: {_describe(exc)}") from exc

    def _error_text(self, tool: str, exc: MCPError) -> str:
        if exc.code != mcp_types.CONNECTION_CLOSED:
            return f"MCP tool {tool!r}: the server answered with error {exc.code}: {exc.message}"
        if self._closing.is_set():
            return f"MCP tool {tool!r}: the session to {self.server!r} was closed during the call"
        return f"MCP tool {tool!r}: the server {self.server!r} closed the connection during the call (did it exit?)"

    async def aclose(self) -> None:
        """Let the owner task leave the client (stopping a stdio server) and wait for it; idempotent."""
        self._closing.set()
        if self._client is None:
            self._scope.cancel()  # still connecting
        owner = self._owner
        if owner is not None and not owner.done():
            # `wait`, not `await owner`: if this task is cancelled, the owner still finishes closing.
            await asyncio.wait({owner})


async def _list_all_tools(client: Client) -> list[mcp_types.Tool]:
    tools: list[mcp_types.Tool] = []
    cursor: str | None = None
    for _ in range(_MAX_PAGES):
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if cursor is None:
            return tools
    raise ToolError(f"tools/list returned more than {_MAX_PAGES} pages")


def _settle(
    future: asyncio.Future[list[mcp_types.Tool]],
    *,
    result: list[mcp_types.Tool] | None = None,
    error: BaseException | None = None,
) -> None:
    if future.done():  # the opener gave up, or an earlier outcome stands
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result or [])


def _transport_target(
    server: str, *, env: Mapping[str, str] | None, cwd: str | PathLike[str] | None
) -> StdioServerParameters | str:
    """What the SDK's `Client` connects to: stdio parameters, or the endpoint URL."""
    if not isinstance(server, str):
        raise UserError(f"an MCP server is named by a string: {_FORMS}; got {server!r}")
    scheme, sep, rest = server.partition(":")
    if sep and scheme == "stdio":
        try:
            argv = shlex.split(rest)
        except ValueError as exc:
            raise UserError(f"MCP server {server!r}: cannot split the command line: {exc}") from None
        if not argv:
            raise UserError(f"MCP server {server!r}: no command after 'stdio:'; give {_FORMS}")
        return StdioServerParameters(
            command=argv[0], args=argv[1:], env=dict(env) if env else None, cwd=None if cwd is None else str(cwd)
        )
    if scheme in ("http", "https") and rest.startswith("//") and len(rest) > 2:
        return server
    raise UserError(f"MCP server {server!r}: give {_FORMS}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return _describe(exc.exceptions[0])
    if isinstance(exc, MCPError):
        return f"MCP error {exc.code}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


# -- tools ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _ToolOptions:
    """`@tool`'s options, the same for every tool of a toolset."""

    timeout_s: float | None
    retries: int
    max_concurrency: int | None
    expected_duration_s: float | None


def _build_tools(
    listed: Sequence[mcp_types.Tool], session: _Session, *, prefix: str, options: _ToolOptions
) -> list[McpTool]:
    tools: list[McpTool] = []
    seen: dict[str, str] = {}  # agentflow name -> MCP name
    for item in listed:
        name = _agentflow_name(prefix, item.name)
        if name in seen:
            raise ToolDefinitionError(
                f"MCP tools {seen[name]!r} and {item.name!r} from {session.server!r} are both named {name!r} here"
            )
        seen[name] = item.name
        tools.append(McpTool(item, session, name=name, options=options))
    return tools


def _agentflow_name(prefix: str, mcp_name: str) -> str:
    """An identifier: plans call tools by name, in Python syntax."""
    name = re.sub(r"\W", "_", prefix + mcp_name, flags=re.ASCII)
    if not name or name[0].isdigit():
        name = f"_{name}"
    return name[:_MAX_NAME_CHARS]


def _schema_validator(name: str, listed: mcp_types.Tool, server: str) -> Any:
    """A compiled validator for the tool's input schema; `ToolDefinitionError` when it is not a valid schema."""
    schema = listed.input_schema
    validator_cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        validator_cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "the root"
        alias = "" if name == listed.name else f" (as {name!r})"
        raise ToolDefinitionError(
            f"MCP tool {listed.name!r}{alias} from {server!r} has an invalid input schema at {where}: {exc.message}"
        ) from None
    # An empty registry: `$ref`s resolve inside the schema, never over the network.
    return validator_cls(schema, registry=referencing.Registry())


def _as_json(tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """The arguments as JSON values (tuples become lists, models dicts), which is what is sent."""
    try:
        converted: dict[str, Any] = json.loads(json.dumps(arguments, default=_json_default, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ArgumentValidationError(tool, f"arguments must be JSON values: {exc}") from None
    return converted


def _json_default(value: Any) -> Any:
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def _error_path(error: Any) -> list[str]:
    return [str(p) for p in error.absolute_path]


def _describe_error(error: Any) -> str:
    where = ".".join(_error_path(error)) or "arguments"
    return f"{where}: {error.message}"


# -- results --------------------------------------------------------------------------------------------


def _value(tool: str, result: mcp_types.CallToolResult) -> Any:
    """The node's value: structured content, else the text (joined), else descriptions of the content."""
    if result.is_error:
        text = _joined_text(result.content) or "no message"
        raise ToolError(f"MCP tool {tool!r} failed: {text}")
    if result.structured_content is not None:
        return result.structured_content
    items = [_content_item(block) for block in result.content]
    if not items:
        return None
    texts = [item for item in items if isinstance(item, str)]
    if len(texts) == len(items):
        return "\n".join(texts)
    return items[0] if len(items) == 1 else items


def _joined_text(content: Sequence[mcp_types.ContentBlock]) -> str:
    return "\n".join(block.text for block in content if isinstance(block, mcp_types.TextContent))


def _content_item(block: mcp_types.ContentBlock) -> str | dict[str, Any]:
    """Text as it is; anything else as a short description (never its bytes)."""
    if isinstance(block, mcp_types.TextContent):
        return block.text
    if isinstance(block, mcp_types.ImageContent | mcp_types.AudioContent):
        return {"type": block.type, "mime_type": block.mime_type, "size_bytes": _base64_size(block.data)}
    if isinstance(block, mcp_types.ResourceLink):
        return {"type": block.type, "uri": str(block.uri), "name": block.name, "mime_type": block.mime_type}
    if isinstance(block, mcp_types.EmbeddedResource):
        resource = block.resource
        described: dict[str, Any] = {"type": block.type, "uri": str(resource.uri), "mime_type": resource.mime_type}
        if isinstance(resource, mcp_types.TextResourceContents):
            described["text"] = resource.text
        else:
            described["size_bytes"] = _base64_size(resource.blob)
        return described
    return {"type": str(getattr(block, "type", "unknown"))}


def _base64_size(data: str) -> int:
    """Bytes that base64 text decodes to, without decoding it."""
    data = data.strip()
    return len(data) * 3 // 4 - data[-2:].count("=")


# -- out: agentflow's tools as an MCP server --------------------------------------------------------------


def mcp_server(
    tools: ToolRegistry | Iterable[Any],
    *,
    model: str | LLMBackend | None = None,
    name: str = "agentflow",
) -> Server[Any]:
    """An MCP server (the SDK's low-level `Server`) for these tools and semantic functions.

    `tools/list` gives each one's `openai_schema()`; `tools/call` runs the call in a `Program` of
    its own (semantic functions on `model`, resolved on the first such call) and never raises:
    failures come back as `isError` results.
    """
    registry = tools if isinstance(tools, ToolRegistry) else ToolRegistry(tools)
    exposed = _Exposed(registry, model)
    return Server(name, on_list_tools=exposed.list_tools, on_call_tool=exposed.call_tool)


async def serve_mcp(
    tools: ToolRegistry | Iterable[Any],
    *,
    transport: Literal["stdio", "http"] = "stdio",
    host: str = "127.0.0.1",
    port: int = 8765,
    model: str | LLMBackend | None = None,
) -> None:
    """Serve `mcp_server(tools)` over stdio, or streamable HTTP at `http://HOST:PORT/mcp` until interrupted.

    Over HTTP on a loopback host, the SDK's DNS-rebinding protection checks Host and Origin.
    """
    server = mcp_server(tools, model=model)
    if transport == "stdio":
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())
    elif transport == "http":
        import uvicorn

        app = server.streamable_http_app(host=host)  # DNS-rebinding protection on for loopback hosts
        await uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning")).serve()
    else:
        raise UserError(f"transport must be 'stdio' or 'http', got {transport!r}")


class _Exposed:
    """The handlers of `mcp_server`: list the registry, run one call per program."""

    def __init__(self, registry: ToolRegistry, model: str | LLMBackend | None) -> None:
        self._registry = registry
        self._model = model
        self._backend: LLMBackend | None = None  # resolved on the first semantic-function call

    async def list_tools(self, ctx: Any, params: mcp_types.PaginatedRequestParams | None) -> mcp_types.ListToolsResult:
        del ctx, params
        return mcp_types.ListToolsResult(tools=[_listing(callee) for callee in self._registry])

    async def call_tool(self, ctx: Any, params: mcp_types.CallToolRequestParams) -> mcp_types.CallToolResult:
        del ctx
        try:
            value = await self._run(params.name, dict(params.arguments or {}))
        except Exception as exc:  # a call's failure is its result, never the server's
            return _error_result(str(exc) if isinstance(exc, AgentflowError) else f"{type(exc).__name__}: {exc}")
        return _success_result(value)

    async def _run(self, name: str, arguments: dict[str, Any]) -> Any:
        callee = self._registry.get(name)
        model = self._llm() if callee.kind is CallKind.LLM else None
        async with Program(model=model, tools=[callee]) as program:
            node = CallNode(id=program.new_node_id(), kind=callee.kind, target=callee.name, kwargs=arguments)
            program.submit(node)
        result = program.result
        if result.failures:
            raise ToolError(result.failures[0].reason)
        return result.outputs[node.id]

    def _llm(self) -> LLMBackend:
        if self._backend is None:
            self._backend = resolve_backend(self._model)
        return self._backend


def _listing(callee: Any) -> mcp_types.Tool:
    function = callee.openai_schema()["function"]
    return mcp_types.Tool(
        name=function["name"], description=function["description"] or None, input_schema=function["parameters"]
    )


def _success_result(value: Any) -> mcp_types.CallToolResult:
    if isinstance(value, pydantic.BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, dict):
        text = json.dumps(value, ensure_ascii=False, default=str)
        return mcp_types.CallToolResult(
            content=[mcp_types.TextContent(type="text", text=text)], structured_content=json.loads(text)
        )
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return mcp_types.CallToolResult(content=[mcp_types.TextContent(type="text", text=text)])


def _error_result(message: str) -> mcp_types.CallToolResult:
    return mcp_types.CallToolResult(content=[mcp_types.TextContent(type="text", text=message)], is_error=True)
