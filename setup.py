"""Builds ringlock and, where it can, compiles the Raft core with mypyc.

The Raft core (src/ringlock/raft) is plain, strictly typed Python with no I/O. Compiled
by mypyc into C extension modules it does the same work in less CPU, which is most of
what a node spends on a replicated write (docs/PERFORMANCE.md). The sources stay the
truth: with no C compiler, no mypyc, or RINGLOCK_PURE_PYTHON=1 set at build time,
ringlock installs as pure Python and runs the same core interpreted.

Beside the extension modules the build writes `native.json`, the SHA-256 of each source
it compiled: `ringlock.raft._native` runs a compiled module only while its source still
matches, so an edited checkout never runs a stale build.

Only the Raft core is compiled. The state machine, the codecs and the server interpret
what clients send, and compiled code checks types at other points than interpreted
code, so they stay interpreted: every replica applies a malformed command the same way
whatever its build.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
RAFT = Path("src") / "ringlock" / "raft"
GROUP_NAME = "ringlock_raft"
"""Names the shared runtime library mypyc builds beside the modules."""


def _warn(message: str) -> None:
    print(f"ringlock setup: {message}; installing the pure-Python Raft core",
          file=sys.stderr)


def _load_native() -> ModuleType:
    """ringlock.raft._native, loaded by path: it names the modules to compile and how
    the running process checks them, and importing the package here would import the
    core itself."""
    spec = importlib.util.spec_from_file_location("_ringlock_native", HERE / RAFT / "_native.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


NATIVE = _load_native()


class BuildCoreIfPossible(build_ext):
    """build_ext that falls back to the interpreted core when the C build fails, and
    records which sources the compiled modules came from."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as error:  # no compiler, no headers: the pure core still works
            _warn(f"compiling the Raft core failed ({error})")
            return
        core = Path(self.get_ext_fullpath("ringlock.raft.core"))
        record = NATIVE.source_digests(HERE / RAFT)
        (core.parent / NATIVE.RECORD).write_text(json.dumps(record, indent=1))


def _extensions() -> list[Any]:
    if os.environ.get(NATIVE.PURE_ENV):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        _warn("mypyc is not installed")
        return []
    cwd = os.getcwd()
    os.chdir(HERE)  # mypyc names modules by their path from here
    try:
        return list(mypycify([str(RAFT / f"{name}.py") for name in NATIVE.COMPILED_MODULES],
                             group_name=GROUP_NAME, opt_level="3"))
    except Exception as error:
        _warn(f"mypyc could not translate the Raft core ({error})")
        return []
    finally:
        os.chdir(cwd)


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildCoreIfPossible})
