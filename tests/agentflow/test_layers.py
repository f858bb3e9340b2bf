"""The floor plan holds: imports run one way, no package reaches into another's private modules,
and every package can be imported first."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("agentflow", "executor", "planner", "serving", "workloads")
# What each package may import of the others (agentflow is the ground floor: it imports none of
# them, except `Program`, which runs on the executor).
ALLOWED = {
    "agentflow": set(),
    "executor": {"agentflow"},
    "planner": {"agentflow", "executor"},
    "serving": {"agentflow"},
    "workloads": {"agentflow", "executor", "planner", "serving"},
}
EXCEPTIONS = {("agentflow/program.py", "executor")}


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of the module except what sits under `if TYPE_CHECKING:` (annotations, not arrows)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    return [node for node in ast.walk(tree) if id(node) not in skipped]


def _imports() -> list[tuple[str, str, str, list[str]]]:
    """(file, importing package, imported module, imported names) for every runtime import of our packages."""
    found = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            tree = ast.parse(path.read_text())
            for node in _runtime_nodes(tree):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    modules, names = [node.module], [alias.name for alias in node.names]
                elif isinstance(node, ast.Import):
                    modules, names = [alias.name for alias in node.names], []
                else:
                    continue
                for module in modules:
                    if module.split(".")[0] in PACKAGES:
                        found.append((path.relative_to(REPO).as_posix(), package, module, names))
    return found


def test_imports_run_one_way() -> None:
    wrong = [
        (file, module)
        for file, package, module, _ in _imports()
        if (top := module.split(".")[0]) != package and top not in ALLOWED[package] and (file, top) not in EXCEPTIONS
    ]
    assert wrong == []


def test_no_package_imports_another_packages_private_modules() -> None:
    private = [
        (file, module, names)
        for file, package, module, names in _imports()
        if module.split(".")[0] != package
        and (any(part.startswith("_") for part in module.split(".")[1:]) or any(n.startswith("_") for n in names))
    ]
    assert private == []


@pytest.mark.parametrize("first", [*PACKAGES, "agentflow.program", "serving.embedded", "workloads.replay"])
def test_any_package_can_be_imported_first(first: str) -> None:
    code = f"import {first}; import agentflow; assert agentflow.Program.__name__ == 'Program'"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]


def test_agentflow_has_no_lazy_module_attributes() -> None:
    import agentflow

    assert "__getattr__" not in vars(agentflow)
