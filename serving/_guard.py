"""Who may call `agentflow serve`: the API key, the Host and Origin checks. Pure.

- **API key.** When the server has one (vLLM's `--api-key`, or `VLLM_API_KEY`), every
  `/agentflow/...` route and every generation route the middleware reads needs it as a bearer
  token, checked before any body is read: an unauthenticated request gets 401, never a 400 that
  describes what it sent. (vLLM's own middleware guards `/v1` too; ours sits outside it.)
- **Host.** Bound to a loopback address (the default), the server answers only requests whose
  `Host` names a loopback address: a web page cannot reach it through a DNS name it rebinds to
  127.0.0.1. Bound beyond loopback (`--host`), any name may reach it, and the key is what protects it.
- **Origin.** A request a browser makes on another site's behalf carries that site's `Origin`;
  state-changing routes refuse any `Origin` that is not the server itself.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["AccessPolicy", "split_host"]

_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def split_host(value: str) -> tuple[str, int | None]:
    """`host[:port]` (IPv6 in brackets) -> (lowercase host without brackets, port or None)."""
    text = value.strip().lower()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:  # no port, or a bare IPv6 address
            host, port_text = text, ""
    port = int(port_text) if port_text.isdigit() and len(port_text) <= 5 else None
    return host, port


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """The server's rules for who may call it (see the module docstring)."""

    token_hashes: tuple[bytes, ...] = ()  # SHA-256 of each accepted API key; empty: no key
    loopback_only: bool = True  # the server is bound to a loopback address: Host must name one
    port: int | None = None  # the server's port, when known (Origin must match it)

    @classmethod
    def for_server(cls, *, api_keys: Iterable[str | None], host: str | None, port: int | None) -> AccessPolicy:
        """The policy of a server bound to `host:port` with these API keys (empty ones ignored)."""
        hashes = tuple(hashlib.sha256(key.encode()).digest() for key in api_keys if key)
        bound, _ = split_host(host or "127.0.0.1")
        return cls(token_hashes=hashes, loopback_only=_is_loopback(bound), port=port)

    @property
    def keyed(self) -> bool:
        return bool(self.token_hashes)

    def authorized(self, headers: Mapping[str, str]) -> bool:
        """A bearer token matching one of the keys (constant time); always, when there is no key."""
        if not self.keyed:
            return True
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        digest = hashlib.sha256(token.strip().encode()).digest()
        matched = False
        for expected in self.token_hashes:
            matched |= secrets.compare_digest(digest, expected)
        return matched

    def host_allowed(self, headers: Mapping[str, str]) -> bool:
        """The `Host` header names this server (always, when it is bound beyond loopback)."""
        if not self.loopback_only or "host" not in headers:  # no Host: not a browser (HTTP/1.0 or a test)
            return True
        host, port = split_host(headers["host"])
        return _is_loopback(host) and (port is None or self.port is None or port == self.port)

    def origin_allowed(self, headers: Mapping[str, str]) -> bool:
        """No `Origin` (not a browser's cross-site request), or the server's own."""
        origin = headers.get("origin")
        if origin is None:
            return True
        parts = urlsplit(origin.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False  # "null" (sandboxed frames, file://) and anything else
        try:
            origin_port = parts.port
        except ValueError:
            return False
        same_port = self.port is None or (origin_port or (443 if parts.scheme == "https" else 80)) == self.port
        if self.loopback_only:
            return _is_loopback(parts.hostname) and same_port
        request_host, _ = split_host(headers.get("host", ""))
        return parts.hostname == request_host and same_port
