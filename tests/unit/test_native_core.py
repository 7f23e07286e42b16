"""The choice between the compiled Raft core and its sources (ringlock.raft._native):
a build runs only while it is whole and its sources match, RINGLOCK_PURE_PYTHON runs
the sources, one process never mixes the two, and the choice comes before any module
of the core is imported."""

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
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]
SHOW_BUILD = ("import ringlock.raft, ringlock.raft.core, ringlock.raft.messages as m; "
              "print(ringlock.raft.BUILD, ringlock.raft.core.__file__, m.__file__)")


def _python(code: str, cwd: Path, *, env: dict[str, str] | None = None,
            path: Path | None = None) -> subprocess.CompletedProcess[str]:
    environment = {name: value for name, value in os.environ.items()
                   if name != _native.PURE_ENV}
    environment.update(env or {})
    if path is not None:
        environment["PYTHONPATH"] = str(path)
    return subprocess.run([sys.executable, "-c", code], env=environment, capture_output=True,
                          text=True, timeout=60, check=True, cwd=cwd)


def test_this_process_runs_the_build_its_package_holds() -> None:
    """A whole build whose record matches runs compiled; anything else runs the sources.
    In CI the core must have compiled: a broken compile fails, it does not fall back."""
    fresh = (PACKAGE_DIR / _native.RECORD).exists() and (
        _native._why_not_compiled(PACKAGE_DIR) is None)
    if os.environ.get("CI"):
        assert fresh, "CI runs ringlock without a fresh compiled Raft core (setup.py)"
    if fresh and not _native.pure_requested():
        assert ringlock.raft.BUILD == "compiled"
        assert ringlock.raft.core.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    else:
        assert ringlock.raft.BUILD == "interpreted"
        assert ringlock.raft.core.__file__.endswith(".py")


def test_the_pure_python_setting_runs_the_sources(tmp_path: Path) -> None:
    shown = _python(SHOW_BUILD, tmp_path, env={_native.PURE_ENV: "1"}).stdout.split()
    assert shown == ["interpreted", str(PACKAGE_DIR / "core.py"),
                     str(PACKAGE_DIR / "messages.py")]


def test_the_pure_python_setting_reads_zero_and_empty_as_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for value, pure in (("1", True), ("yes", True), ("0", False), ("", False)):
        monkeypatch.setenv(_native.PURE_ENV, value)
        assert _native.pure_requested() is pure, value
    monkeypatch.delenv(_native.PURE_ENV)
    assert not _native.pure_requested()


def _package_copy(tmp_path: Path) -> Path:
    """ringlock's sources in tmp_path/pkg with a stand-in build of the core: an empty
    extension file for each module and the library (never loaded: the checks below
    refuse them first), and a record that matches the sources."""
    root = tmp_path / "pkg"
    shutil.copytree(PACKAGE_DIR.parent, root / "ringlock",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__", "native.json"))
    raft = root / "ringlock" / "raft"
    for name in _native.COMPILED_MODULES:
        (raft / f"{name}{SUFFIX}").write_bytes(b"")
    (root / f"{_native.SHARED_LIBRARY}{SUFFIX}").write_bytes(b"")
    (raft / _native.RECORD).write_text(json.dumps(_native.source_digests(raft)))
    return raft


def _runs_sources(raft: Path, tmp_path: Path) -> str:
    """Imports the copy's core; checks every module came from source; the warning."""
    shown = _python(SHOW_BUILD, tmp_path, path=raft.parent.parent)
    assert shown.stdout.split() == ["interpreted", str(raft / "core.py"),
                                    str(raft / "messages.py")]
    return shown.stderr


def test_a_source_changed_since_the_build_runs_interpreted_with_a_warning(
    tmp_path: Path,
) -> None:
    raft = _package_copy(tmp_path)
    with (raft / "log.py").open("a") as log:
        log.write("\n# edited after the build\n")
    assert "built from other sources (log.py changed since)" in _runs_sources(raft, tmp_path)


def test_a_missing_or_garbled_record_runs_interpreted(tmp_path: Path) -> None:
    raft = _package_copy(tmp_path)
    (raft / _native.RECORD).write_text("not json")
    assert "no readable record" in _runs_sources(raft, tmp_path)
    (raft / _native.RECORD).write_text("[1, 2]")
    assert "is not a map" in _runs_sources(raft, tmp_path)
    (raft / _native.RECORD).unlink()
    assert "no readable record" in _runs_sources(raft, tmp_path)


def test_an_incomplete_build_runs_every_module_from_source(tmp_path: Path) -> None:
    """A module missing its compiled part must not run interpreted beside compiled
    others: the whole core runs from source."""
    raft = _package_copy(tmp_path)
    (raft / f"messages{SUFFIX}").unlink()
    assert "incomplete (no messages module)" in _runs_sources(raft, tmp_path)
    (raft / f"messages{SUFFIX}").write_bytes(b"")
    (raft.parent.parent / f"{_native.SHARED_LIBRARY}{SUFFIX}").unlink()
    assert f"no {_native.SHARED_LIBRARY} library" in _runs_sources(raft, tmp_path)


def test_a_core_module_imported_before_the_choice_is_refused() -> None:
    with pytest.raises(ImportError, match="core, log, messages"):
        _native.choose(PACKAGE_DIR)
