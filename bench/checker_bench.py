"""Time `check_kv_history` on a generated linearizable history.

Usage: python bench/checker_bench.py [--ops 10000] [--keys 100] [--clients 10] [--runs 5]

Prints the median wall-clock seconds of `--runs` checks of one history built by
`generate_kv_history` (1% of ops with unknown outcome by default). The target for the
default shape is under 0.5 s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ringlock.checker import check_kv_history, generate_kv_history


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ops", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--unknown-fraction", type=float, default=0.01)
    parser.add_argument("--runs", type=int, default=5)
    arguments = parser.parse_args()
    history = generate_kv_history(arguments.seed, ops=arguments.ops, keys=arguments.keys,
                                  clients=arguments.clients,
                                  unknown_fraction=arguments.unknown_fraction)
    unknown = sum(op.ret is None for op in history)
    timings_s = []
    for _ in range(arguments.runs):
        started = time.perf_counter()
        result = check_kv_history(history, time_limit_s=60.0)
        timings_s.append(time.perf_counter() - started)
        if result.verdict != "ok":
            print(f"unexpected verdict {result.verdict}: {result.message}", file=sys.stderr)
            return 1
    print(f"history: seed {arguments.seed}, {len(history)} ops ({unknown} unknown outcome), "
          f"{arguments.keys} keys, {arguments.clients} clients")
    print(f"check_kv_history: median {statistics.median(timings_s):.4f} s over "
          f"{arguments.runs} runs (min {min(timings_s):.4f} s, max {max(timings_s):.4f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
