"""Which Raft core this process runs: the mypyc-compiled modules, or their sources.

setup.py compiles the core's modules where it can and records the SHA-256 of each
source beside them (`native.json`). A compiled module runs only while every source
still matches its record: an edited checkout that was not rebuilt falls back to the
sources, with a warning, instead of running what it no longer says. Setting
RINGLOCK_PURE_PYTHON=1 runs the sources on purpose (a debugger, a line profiler, a
test that plants a bug by patching the core).

The choice is made once, when `ringlock.raft` is first imported, before any of its
modules is: a process never mixes the two (a compiled `Message` is not an
interpreted one).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

COMPILED_MODULES = ("config", "core", "log", "messages", "progress", "quorum")
"""The modules setup.py compiles (it reads this list from here)."""
PURE_ENV = "RINGLOCK_PURE_PYTHON"
RECORD = "native.json"
PACKAGE = "ringlock.raft"
SHARED_LIBRARY = "ringlock_raft__mypyc"
"""The runtime library mypyc builds for the modules, installed beside the package."""


def pure_requested() -> bool:
    """RINGLOCK_PURE_PYTHON set to anything but empty or 0."""
    return os.environ.get(PURE_ENV, "").strip() not in ("", "0")


class _SourceFinder:
    """Finds the core's modules as source files, ahead of the compiled ones (an
    extension module wins over a .py file in the same directory otherwise)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != PACKAGE or name not in COMPILED_MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, self.directory / f"{name}.py")


def _built(directory: Path, name: str) -> bool:
    return any((directory / f"{name}{suffix}").exists()
               for suffix in importlib.machinery.EXTENSION_SUFFIXES)


def _missing_parts(directory: Path) -> list[str]:
    """The parts of a build that are not there: each module's, and the library."""
    missing = [f"{name} module" for name in COMPILED_MODULES if not _built(directory, name)]
    if not _built(directory.parent.parent, SHARED_LIBRARY):
        missing.append(f"{SHARED_LIBRARY} library")
    return missing


def source_digests(directory: Path) -> dict[str, str]:
    """SHA-256 of each compiled module's source that is present (setup.py records
    these at build time)."""
    digests = {}
    for name in COMPILED_MODULES:
        try:
            digests[name] = hashlib.sha256((directory / f"{name}.py").read_bytes()).hexdigest()
        except OSError:
            continue  # an install without sources: nothing to disagree with
    return digests


def _why_not_compiled(directory: Path) -> str | None:
    """Why the build here must not run (None: it may): a part missing, no readable
    record, or a source that no longer matches the record."""
    missing = _missing_parts(directory)
    if missing:
        return f"the build is incomplete (no {', '.join(missing)})"
    try:
        record = json.loads((directory / RECORD).read_text())
    except (OSError, ValueError):
        return f"the build has no readable record of its sources ({RECORD})"
    if not isinstance(record, dict):
        return f"the build's record of its sources ({RECORD}) is not a map"
    stale = [name for name, digest in source_digests(directory).items()
             if record.get(name) != digest]
    if stale:
        return (f"it was built from other sources ({', '.join(f'{n}.py' for n in stale)} "
                "changed since)")
    return None


def choose(directory: Path) -> str:
    """'compiled' or 'interpreted': which core this process runs. Installs the source
    finder when it is the interpreted one and compiled modules are present."""
    early = [name for name in COMPILED_MODULES if f"{PACKAGE}.{name}" in sys.modules]
    if early:
        raise ImportError(f"{PACKAGE}: {', '.join(early)} imported before the choice of "
                          "build; import ringlock.raft._native first")
    reason = None
    if not any(_built(directory, name) for name in COMPILED_MODULES):
        return "interpreted"  # a pure install: the import system finds the sources
    if not pure_requested():
        why = _why_not_compiled(directory)
        if why is None:
            return "compiled"
        reason = (f"not running the compiled Raft core in {directory}: {why}; running its "
                  "sources instead (rebuild with `make` or `pip install -e .`)")
    # Some compiled module is here: the sources must be found ahead of it, every one.
    if not any(isinstance(finder, _SourceFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SourceFinder(directory))
    if reason is not None:
        warnings.warn(reason, RuntimeWarning, stacklevel=2)
    return "interpreted"


if __name__ == f"{PACKAGE}._native":  # not when setup.py loads this file to read its lists
    BUILD = choose(Path(__file__).parent)
    """'compiled' (mypyc) or 'interpreted': the Raft core this process runs."""
