"""Throughput of the deterministic simulator: simulated client operations per second
of wall time, with every safety check and the linearizability check included.

Usage: python bench/sim_bench.py [--seeds 40] [--runs 3] [--nodes 3]

Runs the same seeds `--runs` times in one process and prints the median, then once
more over both cores (`--jobs 2`), side by side in one run. The target is 20,000
operations per second, so that CI affords 500 seeds in under 3 minutes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ringlock.sim import run_seeds


def _measure(seeds: int, nodes: int, jobs: int) -> tuple[int, float]:
    started = time.perf_counter()
    operations = 0
    for result in run_seeds(0, seeds, nodes, jobs=jobs):
        if not result.ok:
            raise SystemExit(f"seed {result.seed} failed: {result.invariant}")
        operations += result.operations
    return operations, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=3, choices=(3, 5))
    arguments = parser.parse_args()
    rates = []
    operations = 0
    for _ in range(arguments.runs):
        operations, elapsed_s = _measure(arguments.seeds, arguments.nodes, 1)
        rates.append(operations / elapsed_s)
    both_operations, both_elapsed_s = _measure(arguments.seeds, arguments.nodes, 2)
    print(f"seeds 0..{arguments.seeds - 1}, {arguments.nodes} nodes, {operations} client "
          "operations per pass")
    print(f"one process : median {statistics.median(rates):,.0f} ops/s over {arguments.runs} "
          f"runs (min {min(rates):,.0f}, max {max(rates):,.0f})")
    print(f"two processes: {both_operations / both_elapsed_s:,.0f} ops/s "
          f"({both_elapsed_s:.1f} s)")
    seconds_per_seed = operations / statistics.median(rates) / arguments.seeds
    print(f"seconds per seed (one process): {seconds_per_seed:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
