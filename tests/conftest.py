"""Tests marked `interpreted_core` patch the Raft core's classes (a planted bug) or build
values its compiled classes refuse. A patch of a compiled class is not seen by compiled
callers, and a compiled class checks its fields' types, so where this process runs the
compiled core, each such test runs in a child pytest on the interpreted core
(`PURE_ENV`), and passes or fails with it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import ringlock.raft
from ringlock.raft._native import PURE_ENV

CHILD_TIMEOUT_S = 600.0
CHILD_ENV = "RINGLOCK_TEST_CHILD"
"""Set for the child pytest: it checks that it really runs the interpreted core."""
ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "interpreted_core: runs on the interpreted Raft core (in a child pytest "
        "when this process runs the compiled one)")
    if os.environ.get(CHILD_ENV) and ringlock.raft.BUILD != "interpreted":
        raise pytest.UsageError("a child pytest for `interpreted_core` tests runs the "
                                "compiled Raft core")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    if (pyfuncitem.get_closest_marker("interpreted_core") is None
            or ringlock.raft.BUILD == "interpreted"):
        return None  # pytest calls the test as usual
    env = {name: value for name, value in os.environ.items() if name != "PYTEST_ADDOPTS"}
    env.update({PURE_ENV: "1", CHILD_ENV: "1"})
    child = subprocess.run(  # addopts emptied: its -q would hide the "1 passed" line
        [sys.executable, "-m", "pytest", "-o", "addopts=", "-p", "no:cacheprovider",
         pyfuncitem.nodeid],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    if child.returncode != 0 or "1 passed" not in child.stdout:
        pytest.fail(f"on the interpreted core (child pytest, exit {child.returncode}):\n"
                    f"{child.stdout[-4000:]}{child.stderr[-2000:]}", pytrace=False)
    return True
