"""How long each fault kept writes and lock grants from going through (torture figures).

A fault's write window: per shard, the time from the fault's start to the first write
to that shard invoked after the start that succeeded (its return); the fault's window
is the worst shard's. A shard that serves on through the fault gives about one write's
latency; a shard whose leader was killed gives the time to elect a new one and for the
client to find it. Writes are the register clients' put/cas/delete and the ack
writers' puts. Lock grants: per lock, the time from the fault's start to the first
grant acquired after it; the fault's window is the worst lock's (it includes waiting
for the current holder to release, so its floor is a hold's length, not zero).

Per kind, p50 and p99 over the faults of that kind (nearest rank). A fault after which
no write succeeded before the clients stopped has no window and is counted apart.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class Success:
    """A successful call: which group it went to, when it was invoked and returned."""

    group: str
    call_ns: int
    ret_ns: int


def first_success_window_s(start_ns: int, successes: Iterable[Success]) -> float | None:
    """The worst group's time from `start_ns` to the return of its first success invoked
    at or after `start_ns`; None when no group had one."""
    first: dict[str, int] = {}
    for s in successes:
        if s.call_ns >= start_ns and s.ret_ns < first.get(s.group, math.inf):
            first[s.group] = s.ret_ns
    if not first:
        return None
    return (max(first.values()) - start_ns) / NS_PER_S


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def windows_by_kind(faults: Sequence[Any], successes: Sequence[Success],
                    start_of: Callable[[Any], int | None]) -> dict[str, dict[str, Any]]:
    """kind -> {faults, measured, p50_s, p99_s, max_s, without_success} over `faults`
    (objects with `.kind`), the window of each from `start_of(fault)`."""
    by_kind: dict[str, list[float]] = {}
    missing: dict[str, int] = {}
    for fault in faults:
        start = start_of(fault)
        if start is None:
            continue
        window = first_success_window_s(start, successes)
        by_kind.setdefault(fault.kind, [])
        if window is None:
            missing[fault.kind] = missing.get(fault.kind, 0) + 1
        else:
            by_kind[fault.kind].append(window)
    summary: dict[str, dict[str, Any]] = {}
    for kind, values in sorted(by_kind.items()):
        summary[kind] = {
            "measured": len(values), "without_success": missing.get(kind, 0),
            "p50_s": round(percentile(values, 0.5), 3) if values else None,
            "p99_s": round(percentile(values, 0.99), 3) if values else None,
            "max_s": round(max(values), 3) if values else None,
        }
    return summary
