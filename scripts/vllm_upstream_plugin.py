"""pytest plugin of `scripts/vllm_upstream_tests.py`: vLLM's `tests/v1/core`, stock or with our scheduler.

Loaded with `-p vllm_upstream_plugin` (the script puts `scripts/` on PYTHONPATH). Read from the
environment, set by the script:

- `AGENTFLOW_UPSTREAM_MODE`: `stock` runs vLLM's tests as they are; `ours` substitutes
  `serving._scheduler.ProgramAwareScheduler` for vLLM's `Scheduler` and
  `ProgramAwareAsyncScheduler` for its `AsyncScheduler` in every test module that imported
  those names (`tests.*`, and `tests/v1/core/prefix_cache`'s modules, imported by bare name
  since that folder has no `__init__.py`): `tests/v1/core/utils.py`'s `create_scheduler` builds
  them, and so do the test modules that call `Scheduler(...)` themselves. Only module globals
  that are vLLM's very classes are replaced, after collection imported them; the tests' files
  are not edited.
- `AGENTFLOW_UPSTREAM_RESULTS`: where to write the outcome of every test (JSON) and which
  scheduler classes each test built (in both runs vLLM's `Scheduler.__init__`, which every
  scheduler's `__init__` reaches, is wrapped to count them; it then runs unchanged).
- `AGENTFLOW_UPSTREAM_DESELECT`: a JSON map of what to deselect, `path` (a whole file) or
  `path::function` (every parametrization of it) -> reason; each match is recorded, and so is
  a pattern that matched nothing.

It also stands in for the one fixture of vLLM's `tests/conftest.py` that `tests/v1/core` uses,
`caplog_vllm` (that conftest is not extracted: it imports tblib, PIL, HF runners, test assets, and
its autouse fixtures tear down distributed state after every test, which these CPU tests never set
up).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

MODE = os.environ.get("AGENTFLOW_UPSTREAM_MODE", "stock")
RESULTS_PATH = os.environ.get("AGENTFLOW_UPSTREAM_RESULTS")
if MODE not in ("stock", "ours"):
    raise pytest.UsageError(f"AGENTFLOW_UPSTREAM_MODE must be 'stock' or 'ours', not {MODE!r}")

DESELECT_PATH = os.environ.get("AGENTFLOW_UPSTREAM_DESELECT")  # JSON: {"path" or "path::function": reason}

_outcomes: dict[str, str] = {}  # node id -> passed | failed | error | skipped | xfailed | xpassed
_built: Counter[str] = Counter()  # scheduler classes built (by qualified name)
_built_by_test: dict[str, Counter[str]] = {}  # node id -> scheduler classes (by name) its run built
_current_test: str | None = None
_deselected: dict[str, str] = {}  # node id -> the pattern that deselected it
_patterns: dict[str, str] = {}
_substituted: set[str] = set()  # test modules whose Scheduler / AsyncScheduler now name ours
_substitutions: dict[type, type] = {}


def pytest_configure(config: pytest.Config) -> None:
    global _tests_dir
    _tests_dir = os.path.join(str(config.rootpath), "tests") + os.sep
    from vllm.v1.core.sched.async_scheduler import AsyncScheduler
    from vllm.v1.core.sched.scheduler import Scheduler

    original_init = Scheduler.__init__

    @functools.wraps(original_init)
    def counting_init(self: Any, *args: Any, **kwargs: Any) -> None:
        cls = type(self)
        _built[f"{cls.__module__}.{cls.__qualname__}"] += 1
        if _current_test is not None:
            _built_by_test.setdefault(_current_test, Counter())[cls.__qualname__] += 1
        original_init(self, *args, **kwargs)

    Scheduler.__init__ = counting_init  # every scheduler class ends up here (super().__init__)
    if DESELECT_PATH:
        with open(DESELECT_PATH, encoding="utf-8") as f:
            _patterns.update(json.load(f))
    if MODE == "ours":
        from serving._scheduler import ProgramAwareAsyncScheduler, ProgramAwareScheduler

        _substitutions[Scheduler] = ProgramAwareScheduler
        _substitutions[AsyncScheduler] = ProgramAwareAsyncScheduler


_tests_dir: str | None = None  # <rootdir>/tests: every module loaded from under it is a test module


def _is_test_module(name: str, module: Any) -> bool:
    # tests/v1/core/prefix_cache has no __init__.py: its modules import under their bare names.
    if name == "tests" or name.startswith("tests."):
        return True
    path = getattr(module, "__file__", None)
    return bool(path and _tests_dir and os.path.abspath(path).startswith(_tests_dir))


def _substitute() -> None:
    """Point every test module's `Scheduler` / `AsyncScheduler` at our classes (idempotent)."""
    if not _substitutions:
        return
    for name, module in list(sys.modules.items()):
        if module is None or not _is_test_module(name, module):
            continue
        for attr in ("Scheduler", "AsyncScheduler"):
            value = getattr(module, attr, None)
            if isinstance(value, type) and value in _substitutions:
                setattr(module, attr, _substitutions[value])
                _substituted.add(f"{name}.{attr}")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    _substitute()  # every test module is imported by now
    if not _patterns:
        return
    kept, dropped = [], []
    for item in items:
        function_id = item.nodeid.split("[", 1)[0]  # every parametrization of a function
        file_id = item.nodeid.split("::", 1)[0]
        pattern = function_id if function_id in _patterns else file_id if file_id in _patterns else None
        if pattern is None:
            kept.append(item)
        else:
            dropped.append(item)
            _deselected[item.nodeid] = pattern
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_runtest_setup(item: pytest.Item) -> None:
    _substitute()  # a module first imported inside an earlier test


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    global _current_test
    _current_test = item.nodeid
    try:
        return (yield)
    finally:
        _current_test = None


@pytest.fixture
def temporary_enable_log_propagate() -> Iterator[None]:
    """As vLLM's tests/conftest.py: let vLLM's logger reach the root logger (caplog)."""
    logger = logging.getLogger("vllm")
    previous = logger.propagate
    logger.propagate = True
    yield
    logger.propagate = previous


@pytest.fixture
def caplog_vllm(temporary_enable_log_propagate: None, caplog: pytest.LogCaptureFixture) -> Iterator[Any]:
    """As vLLM's tests/conftest.py."""
    with caplog.at_level(logging.INFO):
        yield caplog


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    nodeid = report.nodeid
    previous = _outcomes.get(nodeid)
    if report.when == "call" or (report.when == "setup" and not report.passed):
        if hasattr(report, "wasxfail"):
            outcome = "xpassed" if report.passed else "xfailed"
        elif report.failed:
            outcome = "failed" if report.when == "call" else "error"
        else:
            outcome = report.outcome  # passed | skipped
        _outcomes[nodeid] = outcome
    elif report.when == "teardown" and report.failed and previous not in ("failed", "error"):
        _outcomes[nodeid] = "error"  # a test whose teardown fails did not pass


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not RESULTS_PATH:
        return
    data = {
        "mode": MODE,
        "exitstatus": int(exitstatus),
        "outcomes": _outcomes,
        "schedulers_built": dict(_built),
        "built_by_test": {nodeid: dict(counts) for nodeid, counts in _built_by_test.items()},
        "substituted": sorted(_substituted),
        "deselected": _deselected,
        "unmatched_deselections": sorted(set(_patterns) - set(_deselected.values())),
    }
    with open(RESULTS_PATH, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
