"""Builds ringlock and, where it can, compiles the Raft core with mypyc.

The Raft core (src/ringlock/raft) is plain, strictly typed Python with no I/O. Compiled
by mypyc into C extension modules it does the same work in less CPU, and it is the
largest piece of pure computation on a replicated write's path (docs/PERFORMANCE.md).
The sources stay the truth: with no C compiler, no mypyc, or RINGLOCK_PURE_PYTHON=1 set
at build time, ringlock installs as pure Python and runs the same core interpreted.

Beside the extension modules the build writes `native.json`, the SHA-256 of each source
as mypyc read it: `ringlock.raft._native` runs the compiled modules only while every
source still matches, so an edited checkout never runs a stale build.

Only the Raft core is compiled. The state machine, the codecs and the server interpret
what clients send, and compiled code checks types at other points than interpreted
code, so they stay interpreted: every replica refuses a malformed command the same way
whatever its build.

Run by pip from the project's root (PEP 517), so the paths below are relative to it.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

RAFT = Path("src") / "ringlock" / "raft"


def _load_native() -> ModuleType:
    """ringlock.raft._native, loaded by path under another name: it names the modules
    to compile and the record the running process checks. (Importing the package
    would import the core itself, and choose a build for this process.)"""
    spec = importlib.util.spec_from_file_location("_ringlock_native", RAFT / "_native.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


NATIVE = _load_native()


def _warn(message: str) -> None:
    print(f"ringlock setup: {message}; installing the pure-Python Raft core",
          file=sys.stderr)


def _forget_build_in_place() -> None:
    """An editable install that ends up pure must not leave an earlier build running:
    remove what a build in place left in the source tree."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    for path in [*RAFT.glob("*"), *RAFT.parent.parent.glob("*")]:
        if path.name == NATIVE.RECORD or (path.name.endswith(suffixes) and (
                path.name.split(".")[0] in NATIVE.COMPILED_MODULES
                or path.name.startswith(NATIVE.SHARED_LIBRARY))):
            path.unlink(missing_ok=True)


class BuildCoreIfPossible(build_ext):
    """build_ext that falls back to the interpreted core when the C build fails, and
    records the sources the compiled modules came from, if they are still the same."""

    translated: dict[str, str] = {}
    """The sources' digests when mypyc read them (set by _extensions)."""

    def run(self) -> None:
        if not self.extensions:
            return
        record = Path(self.get_ext_fullpath("ringlock.raft.core")).parent / NATIVE.RECORD
        record.unlink(missing_ok=True)  # no record while the build is under way
        try:
            super().run()
        except Exception as error:  # no compiler, no headers: the pure core still works
            _warn(f"compiling the Raft core failed ({error})")
            _forget_build_in_place()
            return
        if NATIVE.source_digests(RAFT) != self.translated:
            _warn("a source of the Raft core changed during the build; its build is "
                  "left without a record (it will not run): build again")
            return
        partial = record.with_suffix(".partial")
        partial.write_text(json.dumps(self.translated, indent=1))
        os.replace(partial, record)


def _extensions() -> list[Any]:
    if NATIVE.pure_requested():
        _warn(f"{NATIVE.PURE_ENV} is set")
        _forget_build_in_place()
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        _warn("mypyc is not installed")
        _forget_build_in_place()
        return []
    BuildCoreIfPossible.translated = NATIVE.source_digests(RAFT)
    try:
        return list(mypycify([str(RAFT / f"{name}.py") for name in NATIVE.COMPILED_MODULES],
                             group_name=NATIVE.SHARED_LIBRARY.removesuffix("__mypyc"),
                             opt_level="3"))
    except (Exception, SystemExit) as error:  # mypyc exits on a type error
        _warn(f"mypyc could not translate the Raft core ({error!r})")
        _forget_build_in_place()
        return []


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildCoreIfPossible})
