"""Run seeds, check them, and say what broke and how to replay it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ringlock.checker import check_kv_history
from ringlock.checker.locks import check_lock_history
from ringlock.errors import InvariantViolation
from ringlock.sim.cluster import Simulation
from ringlock.sim.params import SimParams
from ringlock.sim.safety import SafetyViolation

CHECK_TIME_LIMIT_S = 20.0


@dataclass(slots=True)
class SeedResult:
    seed: int
    nodes: int
    ok: bool
    operations: int
    events: int
    invariant: str = ""
    detail: str = ""
    trace: list[str] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    lock_holds: int = 0

    def replay_command(self) -> str:
        return f"ringlock sim --seeds 1 --start-seed {self.seed} --nodes {self.nodes}"


def run_seed(
    seed: int,
    nodes: int = 3,
    *,
    faults: tuple[str, ...] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> SeedResult:
    """Run one seed. `overrides` pins some of the seed's drawn settings (a fault profile
    aimed at one kind of bug); the replay command then needs the same overrides."""
    params = SimParams.from_seed(seed, nodes, faults=faults)
    if overrides:
        params = dataclasses.replace(params, **overrides)
    sim = Simulation(params)
    try:
        sim.run()
    except SafetyViolation as violation:
        return _failed(sim, seed, nodes, violation.invariant, violation.detail)
    except InvariantViolation as violation:
        return _failed(sim, seed, nodes, "core invariant", str(violation))
    verdict = check_kv_history(sim.history, time_limit_s=CHECK_TIME_LIMIT_S)
    if verdict.verdict != "ok":
        name = "linearizability" if verdict.verdict == "violation" else "linearizability undecided"
        return _failed(sim, seed, nodes, name, verdict.message)
    locks = check_lock_history(sim.lock_load.holds)
    if locks.verdict != "ok":
        return _failed(sim, seed, nodes, "lock safety", locks.message)
    return SeedResult(seed, nodes, True, len(sim.history), sim.events,
                      lock_holds=len(sim.lock_load.holds))


def _failed(sim: Simulation, seed: int, nodes: int, invariant: str, detail: str) -> SeedResult:
    return SeedResult(
        seed, nodes, False, len(sim.history), sim.events, invariant, detail,
        sim.describe_trace(),
        [f"t={at / 1000:.1f}ms {text}" for at, text in sim.timeline[-20:]],
    )


def _run_one(args: tuple[int, int, tuple[str, ...] | None]) -> SeedResult:
    seed, nodes, faults = args
    return run_seed(seed, nodes, faults=faults)


def run_seeds(
    start: int, count: int, nodes: int = 3, *, jobs: int = 1,
    faults: tuple[str, ...] | None = None,
) -> Iterator[SeedResult]:
    """Yield results in seed order (whatever `jobs` is), so output is reproducible."""
    work = [(seed, nodes, faults) for seed in range(start, start + count)]
    if jobs <= 1:
        for item in work:
            yield _run_one(item)
        return
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        yield from pool.imap(_run_one, work, chunksize=4)
