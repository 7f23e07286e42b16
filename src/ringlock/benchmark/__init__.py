"""Load generators for `ringlock bench`. Benchmarks, not tests: they measure, never assert."""

from __future__ import annotations

import gc

from ringlock.server.node import GC_THRESHOLDS


def collect_as_the_nodes_do() -> None:
    """The load generator shares the machine with the nodes: it freezes what it loaded
    and collects cycles as rarely as they do (`GC_THRESHOLDS`); a library user's process
    keeps whatever settings it has."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
