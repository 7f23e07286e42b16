"""The choice between the compiled Raft core and its sources (ringlock.raft._native):
a build runs only while its sources match, RINGLOCK_PURE_PYTHON runs the sources, and
the choice comes before any module of the core is imported."""

from __future__ import annotations

import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ringlock.raft
import ringlock.raft.core
from ringlock.raft import _native

PACKAGE_DIR = Path(ringlock.raft.__file__).parent
SHOW_BUILD = ("import ringlock.raft, ringlock.raft.core as core; "
              "print(ringlock.raft.BUILD, core.__file__)")


def _python(code: str, *, env: dict[str, str] | None = None,
            path: Path | None = None) -> subprocess.CompletedProcess[str]:
    environment = {name: value for name, value in os.environ.items()
                   if name != _native.PURE_ENV}
    environment.update(env or {})
    if path is not None:
        environment["PYTHONPATH"] = str(path)
    return subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True,
                          text=True, timeout=60, check=True, cwd=path or PACKAGE_DIR)


def test_this_process_runs_the_build_its_package_holds() -> None:
    """A build whose record matches runs compiled; no build runs the sources. In CI
    the build must have compiled: a broken compile is a failure, not a silent fallback."""
    built = (PACKAGE_DIR / _native.RECORD).exists()
    if os.environ.get("CI"):
        assert built, "CI installed ringlock without compiling its Raft core (setup.py)"
    if built and not os.environ.get(_native.PURE_ENV):
        assert ringlock.raft.BUILD == "compiled"
        assert ringlock.raft.core.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    else:
        assert ringlock.raft.BUILD == "interpreted"
        assert ringlock.raft.core.__file__.endswith(".py")


def test_the_pure_python_setting_runs_the_sources() -> None:
    shown = _python(SHOW_BUILD, env={_native.PURE_ENV: "1"}).stdout.split()
    assert shown == ["interpreted", str(PACKAGE_DIR / "core.py")]


def _package_copy(tmp_path: Path) -> Path:
    """ringlock's sources in tmp_path with a stand-in build of the core: an extension
    file for each module (never loaded unless its record matches) and a record."""
    copy = tmp_path / "ringlock"
    shutil.copytree(PACKAGE_DIR.parent, copy,
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__", "native.json"))
    raft = copy / "raft"
    for name in _native.COMPILED_MODULES:
        (raft / f"{name}{importlib.machinery.EXTENSION_SUFFIXES[0]}").write_bytes(b"")
    (raft / _native.RECORD).write_text(json.dumps(_native.source_digests(raft)))
    return raft


def test_a_source_changed_since_the_build_runs_interpreted_with_a_warning(
    tmp_path: Path,
) -> None:
    raft = _package_copy(tmp_path)
    with (raft / "log.py").open("a") as log:
        log.write("\n# edited after the build\n")
    shown = _python(SHOW_BUILD, path=tmp_path)
    assert shown.stdout.split() == ["interpreted", str(raft / "core.py")]
    assert "built from other sources (log.py changed since)" in shown.stderr


def test_a_missing_or_garbled_record_runs_interpreted(tmp_path: Path) -> None:
    raft = _package_copy(tmp_path)
    (raft / _native.RECORD).write_text("not json")
    shown = _python(SHOW_BUILD, path=tmp_path)
    assert shown.stdout.split()[0] == "interpreted"
    assert "config.py, core.py, log.py" in shown.stderr
    (raft / _native.RECORD).unlink()
    assert _python(SHOW_BUILD, path=tmp_path).stdout.split()[0] == "interpreted"


def test_a_core_module_imported_before_the_choice_is_refused() -> None:
    with pytest.raises(ImportError, match="core, log, messages"):
        _native.choose(PACKAGE_DIR)
