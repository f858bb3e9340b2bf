"""The ASGI plumbing of `agentflow serve`'s middleware: bodies in, JSON and errors out.

Every error goes out in OpenAI's envelope, its `code` the HTTP status it is sent with; every float
goes out finite (a non-finite one becomes `null`), so strict JSON parsers read every answer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

__all__ = [
    "ERROR_TYPES",
    "BodyTooLarge",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "finite_json",
    "headers_of",
    "read_body",
    "resend",
    "send_error",
    "send_json",
    "with_length",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    413: "RequestTooLargeError",
    415: "UnsupportedMediaTypeError",
    429: "RateLimitError",
    503: "ServiceUnavailableError",
}


class BodyTooLarge(Exception):
    """The request body passed the route's limit."""


def headers_of(scope: Scope) -> dict[str, str]:
    """The request's headers, names lowercased, values decoded as latin-1 (what HTTP allows); last one wins."""
    headers: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        headers[bytes(name).decode("latin-1").lower()] = bytes(value).decode("latin-1")
    return headers


async def read_body(receive: Receive, *, limit_bytes: int) -> bytes:
    """The whole request body. Raises `BodyTooLarge` as soon as it passes `limit_bytes`."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break  # the client went away: what arrived is all there is
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit_bytes:
            raise BodyTooLarge(f"the request body is over {limit_bytes} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def resend(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the app the body we already read, then the client's later messages."""
    sent = False

    async def receive_again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # http.disconnect and the like

    return receive_again


def with_length(scope: Scope, length: int) -> Scope:
    headers = [(k, v) for k, v in scope.get("headers", []) if bytes(k).lower() != b"content-length"]
    headers.append((b"content-length", str(length).encode()))
    return {**scope, "headers": headers}


def finite_json(value: Any) -> Any:
    """`value` with every non-finite float replaced by None (containers copied, other values kept)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    return value


async def send_json(send: Send, status: int, payload: Any, *, headers: Mapping[str, str] | None = None) -> None:
    body = json.dumps(finite_json(payload), allow_nan=False, default=str).encode()
    extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, status: int, message: str, *, param: str | None = None) -> None:
    """OpenAI's error envelope, with the status it is sent with as its `code`."""
    error = {"message": message, "type": ERROR_TYPES.get(status, "APIError"), "param": param, "code": status}
    headers = {"www-authenticate": "Bearer"} if status == 401 else None
    await send_json(send, status, {"error": error}, headers=headers)
