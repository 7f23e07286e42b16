"""The Raft core is sans-I/O: no clock, socket, file or event loop inside.

The simulator relies on this: if the core read the time or touched a file, a seed
would no longer replay, and a planted bug could hide behind real timing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ringlock.raft
import ringlock.sim

FORBIDDEN_MODULES = {
    "asyncio", "time", "socket", "os", "io", "pathlib", "threading", "multiprocessing",
    "subprocess", "selectors", "select", "signal", "datetime", "shutil", "tempfile",
}
FORBIDDEN_CALLS = {"open", "input", "print", "exec", "eval"}
BUILD_LOADER = "_native.py"
"""Not part of the core: it runs once, when the package is imported, to choose between
the compiled modules and their sources (it reads their files). No core module imports
it (checked below)."""


def _modules(package: object) -> list[Path]:
    folder = Path(package.__file__).parent  # type: ignore[attr-defined]
    return sorted(folder.glob("*.py"))


def _imports_and_calls(path: Path) -> tuple[set[str], set[str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    imported: set[str] = set()
    called: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            called.add(node.func.id)
    return imported, called


@pytest.mark.parametrize("path", [p for p in _modules(ringlock.raft) if p.name != BUILD_LOADER],
                         ids=lambda p: p.name)
def test_raft_core_module_does_no_io(path: Path) -> None:
    imported, called = _imports_and_calls(path)
    assert not imported & FORBIDDEN_MODULES, f"{path.name} imports {imported & FORBIDDEN_MODULES}"
    assert not called & FORBIDDEN_CALLS, f"{path.name} calls {called & FORBIDDEN_CALLS}"


@pytest.mark.parametrize("path", _modules(ringlock.sim), ids=lambda p: p.name)
def test_simulated_cluster_reads_no_clock(path: Path) -> None:
    """The simulator's clock is simulated; only the runner may fork worker processes."""
    imported, _ = _imports_and_calls(path)
    allowed = {"multiprocessing"} if path.name == "runner.py" else set()
    assert not imported & (FORBIDDEN_MODULES - allowed)


def test_raft_imports_nothing_above_it() -> None:
    """The core depends on no other layer: the harness depends on it, never the reverse."""
    for path in _modules(ringlock.raft):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
                "ringlock."
            ):
                layer = node.module.split(".")[1]
                assert layer in {"raft", "errors", "invariant", "ids"}, (path.name, node.module)


def test_only_the_package_imports_the_build_loader() -> None:
    for path in _modules(ringlock.raft):
        imported = {node.module for node in ast.walk(ast.parse(path.read_text()))
                    if isinstance(node, ast.ImportFrom)}
        assert ("ringlock.raft._native" in imported) == (path.name == "__init__.py"), path.name
