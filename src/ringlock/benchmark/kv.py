"""W1 put, W2 linearizable get, W3 50/50 mix: `in_flight` requests kept outstanding.

Each worker process runs one asyncio loop with its share of the in-flight requests, each
a task that sends its next request as soon as the last one is answered (a closed loop,
as etcd's benchmark tool does), and records every latency. Keys are 16 bytes, values
100 bytes, drawn from `keys` distinct keys.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ringlock import eventloop
from ringlock.benchmark import collect_as_the_nodes_do
from ringlock.client.aio import AsyncClient

WORKLOADS = {"W1": "put", "W2": "get", "W3": "mix"}
KEY_BYTES = 16
VALUE_BYTES = 100


@dataclass
class Result:
    workload: str
    ops: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def key_of(n: int) -> bytes:
    return f"bench{n:011d}".encode()[:KEY_BYTES]


async def _worker(addresses: list[str], kind: str, in_flight: int, seconds: float,
                  keys: int, seed: int, start_at: float) -> tuple[int, int, list[float]]:
    rng = random.Random(seed)
    value = bytes(rng.randrange(256) for _ in range(VALUE_BYTES))
    latencies: list[float] = []
    errors = 0
    async with AsyncClient(addresses, timeout=10) as client:
        await client.shard_map()
        await asyncio.sleep(max(0.0, start_at - time.time()))  # every process starts together
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds

        async def one_lane() -> None:
            nonlocal errors
            while loop.time() < end:
                key = key_of(rng.randrange(keys))
                op = kind if kind != "mix" else rng.choice(("put", "get"))
                started = time.perf_counter()
                try:
                    if op == "put":
                        await client.put(key, value)
                    else:
                        await client.get(key)
                except Exception:
                    errors += 1
                    continue
                latencies.append((time.perf_counter() - started) * 1000)

        await asyncio.gather(*(one_lane() for _ in range(in_flight)))
    return len(latencies), errors, latencies


def _process_main(args: tuple[list[str], str, int, float, int, int, float]) -> tuple[
        int, int, list[float]]:
    collect_as_the_nodes_do()
    return eventloop.run(_worker(*args))


def preload(addresses: list[str], keys: int) -> None:
    """Write every key once, so that reads find values."""

    async def run() -> None:
        value = b"x" * VALUE_BYTES
        async with AsyncClient(addresses, timeout=30) as client:
            for start in range(0, keys, 512):
                await asyncio.gather(*(client.put(key_of(n), value)
                                       for n in range(start, min(keys, start + 512))))

    eventloop.run(run())


def run_workload(addresses: list[str], workload: str, *, seconds: float, in_flight: int,
                 keys: int, processes: int,
                 on_tick: Callable[[float], None] | None = None) -> Result:
    kind = WORKLOADS[workload]
    share = [in_flight // processes + (1 if i < in_flight % processes else 0)
             for i in range(processes)]
    start_at = time.time() + 1.5 + 0.5 * processes  # time for the workers to spawn
    jobs = [(addresses, kind, n, seconds, keys, i + 1, start_at)
            for i, n in enumerate(share) if n]
    started = time.monotonic() + (start_at - time.time())
    context = multiprocessing.get_context("spawn")
    with context.Pool(len(jobs)) as pool:
        pending = pool.map_async(_process_main, jobs)
        while not pending.ready():
            pending.wait(0.25)
            if on_tick is not None:
                on_tick(max(0.0, min(1.0, (time.monotonic() - started) / seconds)))
        parts = pending.get()
    elapsed = max(seconds, 1e-9)
    latencies = [lat for _, _, part in parts for lat in part]
    return Result(workload, sum(p[0] for p in parts), sum(p[1] for p in parts), elapsed,
                  latencies)


def summary(result: Result) -> dict[str, Any]:
    return {"workload": result.workload, "ops_per_s": round(result.rate),
            "ops": result.ops, "errors": result.errors,
            "p50_ms": round(result.percentile(50), 2), "p99_ms": round(result.percentile(99), 2),
            "mean_ms": round(statistics.fmean(result.latencies_ms), 2)
            if result.latencies_ms else None}


def rss_kib(pid: int) -> int:
    """Resident memory of a process, from /proc (Linux)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks
