"""A request's session id, from what clients send today. Pure: the server's middleware (and routers) call it.

Agents that send no agentflow fields often send a session id of some kind. In this order:

1. the body's `session_id` (vLLM's own field: it sets `Request.session_id` from it);
2. the `x-session-id` header (vLLM reads it too; Ray Serve's session routing uses it);
3. the `x-dynamo-session-id` header (NVIDIA Dynamo's);
4. the body's `prompt_cache_key` (OpenAI's cache-routing key, sent per conversation by coding agents);
5. the body's `user` (OpenAI's end-user id: may span many conversations, so the scheduler still
   checks that a session's requests extend each other, `serving._chains`).

`session_for_engine` says whether the middleware must put the id in `vllm_xargs.session_id`
(where vLLM reads it when neither of its own sources is there).

Header values that are too long or not printable ASCII are refused (`MetadataError`: a 400); an
empty one is ignored. Body values that are not strings are left to vLLM's own validation; ones
longer than `MAX_NAME_CHARS` are not used as a session (logged).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agentflow.exceptions import MetadataError
from agentflow.metadata import MAX_NAME_CHARS

__all__ = ["SESSION_HEADERS", "Session", "request_session"]

logger = logging.getLogger(__name__)

SESSION_HEADERS = ("x-session-id", "x-dynamo-session-id")
_VLLM_READS = frozenset({"body:session_id", "header:x-session-id"})  # vLLM finds these itself
_BODY_FIELDS = ("prompt_cache_key", "user")
_MAX_LOGS = 20
_logged = 0


@dataclass(frozen=True, slots=True)
class Session:
    session_id: str
    source: str  # "body:session_id", "header:x-session-id", ...

    @property
    def engine_reads_it(self) -> bool:
        """Whether vLLM sets `Request.session_id` from this source by itself."""
        return self.source in _VLLM_READS


def request_session(headers: Mapping[str, str], payload: Mapping[str, Any]) -> Session | None:
    """The request's session id by the precedence above; None: it sends none.

    Raises:
        MetadataError: a session header that is too long or not printable ASCII.
    """
    checked = {name: _header_value(headers, name) for name in SESSION_HEADERS}  # refuse bad ones wherever they are
    body_id = _body_value(payload, "session_id")
    if body_id is not None:
        return Session(body_id, "body:session_id")
    for name in SESSION_HEADERS:
        if (value := checked[name]) is not None:
            return Session(value, f"header:{name}")
    for field in _BODY_FIELDS:
        if (value := _body_value(payload, field)) is not None:
            return Session(value, f"body:{field}")
    return None


def _header_value(headers: Mapping[str, str], name: str) -> str | None:
    raw = headers.get(name)
    if raw is None:
        return None
    value = raw.strip()
    if not value:
        _log(f"empty {name} header ignored")
        return None
    if len(value) > MAX_NAME_CHARS:
        raise MetadataError(f"the {name} header is longer than {MAX_NAME_CHARS} characters")
    if not (value.isascii() and value.isprintable()):
        raise MetadataError(f"the {name} header must be printable ASCII")
    return value


def _body_value(payload: Mapping[str, Any], field: str) -> str | None:
    value = payload.get(field)
    if not isinstance(value, str) or not value.strip():
        return None  # absent, empty, or not a string (vLLM's own validation answers the last)
    if len(value) > MAX_NAME_CHARS:
        _log(f"body field {field} longer than {MAX_NAME_CHARS} characters not used as a session id")
        return None
    return value


def _log(message: str) -> None:
    global _logged
    if _logged < _MAX_LOGS:
        _logged += 1
        logger.info("%s", message)
