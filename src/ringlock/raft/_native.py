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


def _compiled_here(directory: Path) -> bool:
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    return any((directory / f"core{suffix}").exists() for suffix in suffixes)


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


def _stale_sources(directory: Path) -> list[str]:
    """The compiled modules whose source no longer matches the build's record."""
    try:
        record = json.loads((directory / RECORD).read_text())
    except (OSError, ValueError):
        return list(COMPILED_MODULES)
    if not isinstance(record, dict):
        return list(COMPILED_MODULES)
    return [name for name, digest in source_digests(directory).items()
            if record.get(name) != digest]


def choose(directory: Path) -> str:
    """'compiled' or 'interpreted': which core this process runs. Installs the source
    finder when it is the interpreted one and compiled modules are present."""
    early = [name for name in COMPILED_MODULES if f"{PACKAGE}.{name}" in sys.modules]
    if early:
        raise ImportError(f"{PACKAGE}: {', '.join(early)} imported before the choice of "
                          "build; import ringlock.raft._native first")
    if not _compiled_here(directory):
        return "interpreted"
    if os.environ.get(PURE_ENV):
        reason = None
    else:
        stale = _stale_sources(directory)
        if not stale:
            return "compiled"
        reason = (f"the compiled Raft core in {directory} was built from other sources "
                  f"({', '.join(f'{name}.py' for name in stale)} changed since): running "
                  "the sources instead; rebuild with `make` or `pip install -e .`")
    if not any(isinstance(finder, _SourceFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SourceFinder(directory))
    if reason is not None:
        warnings.warn(reason, RuntimeWarning, stacklevel=2)
    return "interpreted"


BUILD = choose(Path(__file__).parent)
"""'compiled' (mypyc) or 'interpreted': the Raft core this process runs."""
