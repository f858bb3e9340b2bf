"""The shipped task repositories: a tiny Python package with one bug and one failing test each.

`workloads/agents/tasks/<name>/` holds `task.json` (the statement the agent is given and the fix,
which the agent never sees) and `repo/` (what the agent works on). An agent gets a fresh copy of
`repo/` in a temporary directory, initialised as a git repository with one commit, so what it
changed is `git diff` there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from agentflow.exceptions import UserError

__all__ = ["TASKS_DIR", "Fix", "Task", "apply_fix", "copy_task", "load_tasks", "run_task_tests"]

TASKS_DIR = Path(__file__).resolve().parent / "tasks"


@dataclass(frozen=True, slots=True)
class Fix:
    """The one-line fix of a task's bug: replace `old` by `new` in `path` (relative to the repo)."""

    path: str
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class Task:
    name: str
    statement: str
    repo: Path  # the pristine repository (never modified)
    fix: Fix


def load_tasks(names: list[str] | None = None, *, root: Path = TASKS_DIR) -> list[Task]:
    """The tasks called `names` (in that order), or all of them sorted by name.

    Raises:
        UserError: an unknown name (the message lists the known ones), or a malformed task.
    """
    known = sorted(p.name for p in root.iterdir() if (p / "task.json").is_file()) if root.is_dir() else []
    if names is None:
        names = known
    if not names:
        raise UserError("no tasks given")
    if unknown := [name for name in names if name not in known]:
        raise UserError(f"unknown task(s) {', '.join(unknown)}; the shipped tasks are {', '.join(known) or 'none'}")
    return [_load_task(root / name) for name in names]


def _load_task(path: Path) -> Task:
    try:
        spec = json.loads((path / "task.json").read_text())
        fix = Fix(path=spec["fix"]["path"], old=spec["fix"]["old"], new=spec["fix"]["new"])
        statement = str(spec["statement"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"task {path.name}: malformed task.json ({exc})") from None
    if not (path / "repo").is_dir():
        raise UserError(f"task {path.name}: no repo/ directory")
    return Task(name=path.name, statement=statement, repo=path / "repo", fix=fix)


def copy_task(task: Task, dest: Path) -> Path:
    """A fresh copy of the task's repository at `dest` (must not exist), git-initialised with one commit."""
    shutil.copytree(task.repo, dest, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache", "*.pyc"))
    env = {**os.environ, "GIT_AUTHOR_NAME": "agentflow", "GIT_AUTHOR_EMAIL": "bench@agentflow.invalid"}
    env |= {"GIT_COMMITTER_NAME": env["GIT_AUTHOR_NAME"], "GIT_COMMITTER_EMAIL": env["GIT_AUTHOR_EMAIL"]}
    for argv in (
        ["git", "init", "-q", "-b", "main"],
        ["git", "add", "-A"],
        ["git", "commit", "-q", "--no-gpg-sign", "-m", f"task {task.name}"],
    ):
        done = subprocess.run(argv, cwd=dest, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            command = " ".join(argv)
            raise UserError(f"could not initialise {dest} as a git repository ({command}): {done.stderr.strip()}")
    return dest


def apply_fix(task: Task, repo: Path) -> None:
    """Apply the task's known fix to a copy (tests use it to show the failing test can pass)."""
    target = repo / task.fix.path
    text = target.read_text()
    if task.fix.old not in text:
        raise UserError(f"task {task.name}: {task.fix.old!r} not found in {task.fix.path}")
    target.write_text(text.replace(task.fix.old, task.fix.new, 1))


def run_task_tests(repo: Path, *, python: str = sys.executable, timeout_s: float = 60.0) -> bool:
    """Whether the repository's tests pass (`python -m pytest -q` in it)."""
    try:
        done = subprocess.run(
            [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS")},
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0
