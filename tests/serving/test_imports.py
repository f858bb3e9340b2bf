"""The serving layer keeps vLLM behind one lazily imported adapter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agentflow.exceptions import UserError
from serving.engine import EngineConfig

REPO = Path(__file__).resolve().parents[2]


def test_importing_serving_does_not_import_vllm() -> None:
    code = "import sys, agentflow, serving, executor, planner, workloads; sys.exit('vllm' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, check=False).returncode == 0


def test_only_the_adapter_imports_vllm() -> None:
    """In the product: serving/_vllm.py. (The tests' CPU harness builds schedulers from vLLM's own parts.)"""
    offenders = [
        path.relative_to(REPO).as_posix()
        for package in ("agentflow", "executor", "planner", "serving", "workloads")
        for path in (REPO / package).glob("**/*.py")
        if path.name != "_vllm.py" and _imports_vllm(path.read_text())
    ]
    assert offenders == []


def _imports_vllm(source: str) -> bool:
    return any(line.strip().startswith(("import vllm", "from vllm")) for line in source.splitlines())


def test_engine_config_checks_cpu_limits() -> None:
    with pytest.raises(UserError, match="multiple of 32"):
        EngineConfig(block_size=16)
    with pytest.raises(UserError, match="kv_cache_bytes"):
        EngineConfig(kv_cache_bytes=0)


def test_equal_configs_are_equal_keys() -> None:
    assert EngineConfig() == EngineConfig(model_dir=EngineConfig().model_dir)
    assert hash(EngineConfig(kv_cache_bytes=1)) == hash(EngineConfig(kv_cache_bytes=1))


def test_missing_vllm_is_engine_unavailable_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    # A None entry in sys.modules makes `import vllm` raise ImportError, as if uninstalled.
    code = (
        "import sys; sys.modules['vllm'] = None\n"
        "from pathlib import Path\n"
        "from agentflow.exceptions import EngineUnavailableError\n"
        "from serving import EmbeddedEngine, EngineConfig\n"
        f"engine = EmbeddedEngine(EngineConfig(model_dir=Path({str(tmp_path)!r})))\n"
        "try:\n"
        "    engine.start()\n"
        "except EngineUnavailableError as exc:\n"
        "    assert 'make install' in str(exc), exc\n"
        "else:\n"
        "    sys.exit('no error')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
