"""How long and how many bytes a 4th node's arrival costs, and what clients feel meanwhile.

A probe load (a few requests in flight, half gets, half puts, over the preloaded keys)
runs from before the join to the end of the rebalance; its latencies are split into the
window at rest before the join and the window from the join to the last move done, and
their p99s compared side by side in one run, as the ring issue asks (target: during <= 3x
at rest). Bytes are the snapshot bytes the shard leaders report sending for the moves.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import Any

from ringlock.benchmark.kv import VALUE_BYTES, key_of, preload
from ringlock.client.aio import AsyncClient
from ringlock.devcluster import DevCluster

SETTLE_TIMEOUT_S = 1800.0
POLL_S = 1.0


class _Probe:
    def __init__(self, addresses: list[str], keys: int, in_flight: int) -> None:
        self.addresses, self.keys, self.in_flight = addresses, keys, in_flight
        self.samples: list[tuple[float, float]] = []
        """(monotonic time at the start, latency ms)"""
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)

    async def _run(self) -> None:
        rng = random.Random(7)
        value = bytes(VALUE_BYTES)
        async with AsyncClient(self.addresses, timeout=30) as client:
            await client.shard_map()

            async def lane() -> None:
                while not self._stop.is_set():
                    key = key_of(rng.randrange(self.keys))
                    started = time.monotonic()
                    try:
                        if rng.random() < 0.5:
                            await client.get(key)
                        else:
                            await client.put(key, value)
                    except Exception:  # counted, the probe goes on
                        self.errors += 1
                        continue
                    self.samples.append((started, (time.monotonic() - started) * 1000))

            await asyncio.gather(*(lane() for _ in range(self.in_flight)))


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2) if ordered else 0.0


def _meta_status(dev: DevCluster) -> dict[str, Any]:
    with dev.client(timeout=5) as client:
        reports: list[dict[str, Any]] = client.status(timeout=2.0)
    return next((r for r in reports if r.get("meta_leader")), {})


def rebalance_bench(dev: DevCluster, keys: int, *, rest_seconds: float = 10.0,
                    probe_in_flight: int = 8, log: Any = print) -> dict[str, Any]:
    log(f"loading {keys} keys of {VALUE_BYTES} bytes ...")
    started = time.monotonic()
    preload(dev.addresses, keys)
    load_seconds = time.monotonic() - started
    with dev.client(timeout=10) as client:
        before = client.shard_map()
    probe = _Probe(dev.addresses, keys, probe_in_flight)
    probe.start()
    time.sleep(rest_seconds)  # the at-rest window, measured by the probe
    joined_at = time.monotonic()
    new_node = max(dev.nodes) + 1
    log(f"node {new_node} joins; waiting for the rebalance to finish ...")
    dev.add_node(new_node)
    after = before
    deadline = joined_at + SETTLE_TIMEOUT_S
    while time.monotonic() < deadline:
        time.sleep(POLL_S)
        with dev.client(timeout=10) as client:
            after = client.shard_map()
        holders = [n for s in range(after.shards) for n in after.replicas.get(s, [])]
        if (not after.moving and not after.learners
                and holders.count(new_node) >= len(holders) // len(dev.nodes)):
            break
    settled_at = time.monotonic()
    probe.stop()
    moves = _meta_status(dev).get("moves", [])  # this cluster's moves: all of the join
    moved = sum(len(set(after.replicas[s]) - set(before.replicas[s]))
                for s in range(after.shards))
    rest = [ms for at, ms in probe.samples if joined_at - rest_seconds <= at < joined_at]
    during = [ms for at, ms in probe.samples if joined_at <= at < settled_at]
    rest_p99, during_p99 = _p(rest, 0.99), _p(during, 0.99)
    return {
        "keys": keys, "load_seconds": round(load_seconds, 1),
        "rebalance_seconds": round(settled_at - joined_at, 1),
        "replicas_moved": moved, "replicas_total": after.shards * after.replica_count,
        "snapshot_bytes": sum(m[2] for m in moves),
        "moves_timed": len(moves),
        "move_seconds_p50": _p([m[1] for m in moves], 0.5),
        "probe_in_flight": probe_in_flight, "probe_errors": probe.errors,
        "rest": {"ops": len(rest), "p50_ms": _p(rest, 0.5), "p99_ms": rest_p99},
        "during": {"ops": len(during), "p50_ms": _p(during, 0.5), "p99_ms": during_p99},
        "p99_ratio": round(during_p99 / rest_p99, 2) if rest_p99 else None,
    }
