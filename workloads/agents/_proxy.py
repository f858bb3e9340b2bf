"""One forwarding proxy per agent: the ground truth of which requests were whose.

Each agent is pointed at its own port; the proxy forwards every request to the server as it is
(body and headers, `Host` aside) and keeps, per generation request, the `id` of the response: the
server's request id (`chatcmpl-...`), which is the key of the scheduler's `attributions`. The
agent is not touched and sends nothing that names it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AgentProxy", "ProxyGroup", "Turn", "response_id", "usage_of"]

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "content-encoding",
    }
)
_GENERATION_SUFFIXES = ("/chat/completions", "/completions")


@dataclass(slots=True)
class Turn:
    """One generation request an agent sent, as the proxy saw it."""

    started_s: float  # monotonic
    finished_s: float
    status: int
    response_id: str | None  # the response's `id`; None: no JSON body with one (an error)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0


def response_id(body: bytes, content_type: str) -> str | None:
    """The `id` of a chat/completions response: a JSON body's, or a stream's first chunk's."""
    if "text/event-stream" in content_type:
        for line in body.splitlines():
            if line.startswith(b"data:") and (data := line[5:].strip()) and data != b"[DONE]":
                found = _json_field(data, "id")
                if isinstance(found, str):
                    return found
        return None
    found = _json_field(body, "id")
    return found if isinstance(found, str) else None


def usage_of(body: bytes, content_type: str) -> tuple[int, int, int]:
    """(prompt tokens, of them cached, completion tokens) from a response's `usage`; zeros if absent."""
    usage: Any = None
    if "text/event-stream" in content_type:
        for line in body.splitlines():
            if line.startswith(b"data:") and (data := line[5:].strip()) and data != b"[DONE]":
                usage = _json_field(data, "usage") or usage
    else:
        usage = _json_field(body, "usage")
    if not isinstance(usage, dict):
        return 0, 0, 0
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return _int(usage.get("prompt_tokens")), _int(cached), _int(usage.get("completion_tokens"))


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _json_field(data: bytes, key: str) -> Any:
    try:
        parsed = json.loads(data)
    except ValueError:
        return None
    return parsed.get(key) if isinstance(parsed, dict) else None


@dataclass
class AgentProxy:
    """The proxy of one agent (`agent` names it in the report): its port and the turns it forwarded."""

    agent: str
    upstream: str  # http://host:port of the server
    port: int = 0  # bound port, once started
    turns: list[Turn] = field(default_factory=list)
    other_requests: int = 0  # anything else forwarded (model lists, ...)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def record(self, *, path: str, started_s: float, status: int, body: bytes, content_type: str) -> Turn | None:
        """Book a forwarded exchange; a generation request becomes a `Turn`."""
        if not path.rstrip("/").endswith(_GENERATION_SUFFIXES):
            self.other_requests += 1
            return None
        prompt, cached, completion = usage_of(body, content_type)
        turn = Turn(
            started_s=started_s,
            finished_s=time.monotonic(),
            status=status,
            response_id=response_id(body, content_type) if status == 200 else None,
            prompt_tokens=prompt,
            cached_tokens=cached,
            completion_tokens=completion,
        )
        self.turns.append(turn)
        return turn

    def response_ids(self) -> list[str]:
        return [turn.response_id for turn in self.turns if turn.response_id is not None]


class ProxyGroup:
    """The agents' proxies, served on loopback ports by one aiohttp app each, in the caller's event loop."""

    def __init__(self, upstream: str, agents: list[str], *, timeout_s: float = 900.0) -> None:
        self.proxies = [AgentProxy(agent=name, upstream=upstream.rstrip("/")) for name in agents]
        self._timeout_s = timeout_s
        self._runners: list[Any] = []
        self._session: Any = None

    async def start(self) -> None:
        import aiohttp
        from aiohttp import web

        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._timeout_s), auto_decompress=False
        )
        for proxy in self.proxies:
            app = web.Application(client_max_size=64 * 1024**2)
            app.router.add_route("*", "/{tail:.*}", self._handler(proxy))
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            server = getattr(site, "_server", None)
            sockets = getattr(server, "sockets", None) or []
            if not sockets:
                raise RuntimeError("the agent proxy did not bind a port")
            proxy.port = int(sockets[0].getsockname()[1])
            self._runners.append(runner)

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _handler(self, proxy: AgentProxy) -> Any:
        from aiohttp import web

        async def handle(request: web.Request) -> web.StreamResponse:
            body = await request.read()
            headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
            started = time.monotonic()
            url = proxy.upstream + request.path_qs
            async with self._session.request(request.method, url, data=body, headers=headers) as upstream:
                content_type = upstream.headers.get("Content-Type", "")
                out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
                if "text/event-stream" in content_type:
                    response = web.StreamResponse(status=upstream.status, headers=out_headers)
                    await response.prepare(request)
                    chunks = []
                    async for chunk in upstream.content.iter_any():
                        chunks.append(chunk)
                        await response.write(chunk)
                    await response.write_eof()
                    data = b"".join(chunks)
                else:
                    data = await upstream.read()
                    response = web.Response(status=upstream.status, body=data, headers=out_headers)
            proxy.record(
                path=request.path, started_s=started, status=upstream.status, body=data, content_type=content_type
            )
            return response

        return handle
