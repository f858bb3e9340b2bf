"""mini-swe-agent in a virtual environment of its own, created on first use.

Its dependencies are not ours to pin (it wants `datasets`, `textual`, any `litellm`), so it never
goes into agentflow's venv: `ensure_agent_venv()` creates `<cache>/agents/venv-<version>` (cache:
`AGENTFLOW_CACHE_DIR`, default `~/.cache/agentflow`) with the interpreter agentflow runs on and
`pip install`s the pinned release plus pytest (the agents run the tasks' tests with it). A marker
file is written only once the install imports; a half-made venv is removed and made again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agentflow.exceptions import UserError

__all__ = ["MINI_SWE_AGENT_VERSION", "AgentInstall", "agent_env", "ensure_agent_venv", "install_requirements"]

# Pinned: the bench measures one agent's traffic, and mini-swe-agent changes how it builds its
# messages between releases (v2 moved to tool calls and drops a reply that fails to parse). 2.4.6
# is the newest release on PyPI when this was written; its dependencies resolve from the registry.
MINI_SWE_AGENT_VERSION = "2.4.6"
PYTEST_REQUIREMENT = "pytest==9.2.0"  # what the agents run the tasks' tests with (agentflow's dev pin)
_MARKER = ".agentflow-ready"


@dataclass(frozen=True, slots=True)
class AgentInstall:
    venv: Path
    version: str

    @property
    def bin_dir(self) -> Path:
        return self.venv / "bin"

    @property
    def python(self) -> Path:
        return self.bin_dir / "python"

    @property
    def mini(self) -> Path:
        """mini-swe-agent's own command, `mini`."""
        return self.bin_dir / "mini"

    def builtin_config(self, name: str = "mini.yaml") -> str:
        """The text of one of mini-swe-agent's built-in configs (`minisweagent/config/<name>`)."""
        found = sorted(self.venv.glob(f"lib/python*/site-packages/minisweagent/config/{name}"))
        if not found:
            raise UserError(f"mini-swe-agent at {self.venv} has no built-in config {name}")
        return found[0].read_text()


def default_venv_dir(version: str = MINI_SWE_AGENT_VERSION) -> Path:
    root = os.environ.get("AGENTFLOW_CACHE_DIR")
    cache = Path(root).expanduser() if root else Path.home() / ".cache" / "agentflow"
    return cache / "agents" / f"venv-{version}"


def install_requirements(version: str = MINI_SWE_AGENT_VERSION) -> list[str]:
    return [f"mini-swe-agent=={version}", PYTEST_REQUIREMENT]


def agent_env(install: AgentInstall, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment mini-swe-agent runs in: its venv first on PATH, no agentflow venv, no prompts."""
    env = dict(os.environ if base is None else base)
    for key in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTEST_ADDOPTS"):
        env.pop(key, None)
    ours = Path(sys.prefix) / "bin"
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p) != ours]
    env["PATH"] = os.pathsep.join([str(install.bin_dir), *path])
    env["VIRTUAL_ENV"] = str(install.venv)
    # mini-swe-agent's own documented settings: no first-run set-up dialogue, no banner, no cost
    # lookup for a model litellm has no price for (a local server).
    env["MSWEA_CONFIGURED"] = "true"
    env["MSWEA_SILENT_STARTUP"] = "1"
    env["MSWEA_COST_TRACKING"] = "ignore_errors"
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # litellm: no fetch of its price list at import
    env["PYTHONUNBUFFERED"] = "1"
    return env


def ensure_agent_venv(
    version: str = MINI_SWE_AGENT_VERSION,
    *,
    venv: Path | None = None,
    create: bool = True,
    report: Callable[[str], None] | None = None,
) -> AgentInstall:
    """The agent's venv, created and installed on first use.

    `venv`: an existing or wanted location (default: `default_venv_dir(version)`); `create=False`:
    fail instead of installing.

    Raises:
        UserError: it cannot be created (the message says what pip said and what to do).
    """
    from filelock import FileLock

    install = AgentInstall(venv=(venv or default_venv_dir(version)).expanduser().absolute(), version=version)
    if (install.venv / _MARKER).is_file() and install.mini.is_file():
        return install
    if not create:
        raise UserError(f"mini-swe-agent {version} is not installed at {install.venv}; run without --no-install")
    install.venv.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(install.venv) + ".lock"):
        if (install.venv / _MARKER).is_file() and install.mini.is_file():
            return install
        if report is not None:
            report(f"creating mini-swe-agent {version}'s venv at {install.venv} (pip, once)")
        shutil.rmtree(install.venv, ignore_errors=True)
        base_python = getattr(sys, "_base_executable", None) or sys.executable
        _run([base_python, "-m", "venv", str(install.venv)], what="python -m venv", version=version)
        pip = [str(install.python), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        _run([*pip, *install_requirements(version)], what="pip install", version=version)
        probe = "import minisweagent, sys; sys.stdout.write(minisweagent.__version__)"
        done = _run([str(install.python), "-c", probe], what="importing minisweagent", version=version, env=True)
        if done.strip() != version:
            raise UserError(f"the agent venv at {install.venv} has mini-swe-agent {done.strip()!r}, not {version}")
        (install.venv / _MARKER).write_text(version + "\n")
    return install


def _run(argv: list[str], *, what: str, version: str, env: bool = False) -> str:
    run_env = {**os.environ, "MSWEA_SILENT_STARTUP": "1", "MSWEA_CONFIGURED": "true"} if env else None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=1800, env=run_env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UserError(_failure(what, str(exc), version)) from None
    if done.returncode != 0:
        raise UserError(_failure(what, (done.stderr or done.stdout).strip()[-1500:], version))
    return done.stdout


def _failure(what: str, detail: str, version: str) -> str:
    return (
        f"could not create mini-swe-agent's venv ({what} failed): {detail}\n"
        f"It needs the package registry once (pip install mini-swe-agent=={version} {PYTEST_REQUIREMENT}); "
        "check pip's network/index settings, or pass --agent-venv DIR of a venv that already has them"
    )
