"""The pure parts of scripts/vllm_upstream_tests.py: the sdist check, what is extracted, the verdict. No download."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import sys
import tarfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "vllm_upstream_tests.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vllm_upstream_tests", _SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


up = _load()


def test_a_file_of_another_hash_is_refused(tmp_path: Path) -> None:
    wrong = tmp_path / "vllm.tar.gz"
    wrong.write_bytes(b"not the sdist")
    with pytest.raises(up.SdistError, match="SHA-256 .* is not the pinned"):
        up.verify_sdist(wrong)
    up.verify_sdist(wrong, hashlib.sha256(b"not the sdist").hexdigest())  # its own hash passes


def test_an_empty_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "vllm.tar.gz"
    empty.touch()
    with pytest.raises(up.SdistError, match="empty"):
        up.verify_sdist(empty, hashlib.sha256(b"").hexdigest())


def test_a_bad_cached_sdist_is_refused_before_any_download(tmp_path: Path) -> None:
    (tmp_path / up.SDIST_NAME).write_bytes(b"tampered")
    with pytest.raises(up.SdistError, match="refusing to extract"):
        up.fetch_sdist(tmp_path, url="http://unreachable.invalid/vllm.tar.gz")


def test_only_the_tests_and_their_helpers_are_extracted(tmp_path: Path) -> None:
    sdist = tmp_path / "sdist.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for name in (*up.EXTRACT_FILES, "tests/v1/core/test_a.py", "tests/conftest.py", "vllm/__init__.py"):
            data = f"# {name}\n".encode()
            info = tarfile.TarInfo(up.SDIST_PREFIX + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo(up.SDIST_PREFIX + "tests/v1/core/escape.py")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    root = up.extract_tests(sdist, tmp_path / "src")
    extracted = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != ".extracted")
    assert extracted == sorted([*up.EXTRACT_FILES, "tests/v1/core/test_a.py"])


def test_an_sdist_without_the_tests_is_refused(tmp_path: Path) -> None:
    sdist = tmp_path / "sdist.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        tar.addfile(tarfile.TarInfo(up.SDIST_PREFIX + "tests/__init__.py"), io.BytesIO(b""))
    with pytest.raises(up.SdistError, match="lacks"):
        up.extract_tests(sdist, tmp_path / "src")
    assert not (tmp_path / "src").exists()


def _run(mode: str, outcomes: dict[str, str], *, returncode: int = 0, built: str | None = None) -> Any:
    cls = built or ("ProgramAwareScheduler" if mode == "ours" else "Scheduler")
    return up.RunResult(
        mode=mode,
        returncode=returncode,
        wall_s=1.0,
        outcomes=outcomes,
        built_by_test={nodeid: {cls: 1} for nodeid in outcomes},
    )


def test_a_test_that_passes_on_stock_must_pass_with_ours() -> None:
    stock = _run("stock", {"t::a": "passed", "t::b": "passed", "t::c": "failed", "t::k": "passed"})
    ours = _run("ours", {"t::a": "passed", "t::b": "failed", "t::c": "failed", "t::k": "error"})
    verdict = up.compare(stock, ours, known={"t::k": "why"}, min_ran=1)
    assert verdict.regressions == ["t::b"]
    assert verdict.known == ["t::k"]
    assert any("pass on stock" in problem for problem in verdict.problems)
    fixed = up.compare(stock, _run("ours", {**ours.outcomes, "t::b": "passed"}), known={"t::k": "why"}, min_ran=1)
    assert fixed.problems == []


def test_empty_small_or_unsubstituted_runs_fail() -> None:
    outcomes = {"t::a": "passed"}
    nothing = up.compare(_run("stock", {}, returncode=5), _run("ours", {}, returncode=5), known={}, min_ran=1)
    assert any("exited 5" in problem for problem in nothing.problems)
    small = up.compare(_run("stock", outcomes), _run("ours", outcomes), known={}, min_ran=300)
    assert any("only 1 tests ran" in problem for problem in small.problems)
    stock_class = up.compare(_run("stock", outcomes), _run("ours", outcomes, built="Scheduler"), known={}, min_ran=1)
    assert any("substitution did not take" in problem for problem in stock_class.problems)
    assert any("still built vLLM's Scheduler" in problem for problem in stock_class.problems)
