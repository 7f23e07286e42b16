"""L1 uncontended acquire+release pairs, L2 contended cycles on one lock, and the
handoff latency of L2 (a release sent to the next holder's grant received).

L1: `lanes` loops, each taking and releasing locks of its own among 1,000 names (no
two lanes share a name, so nobody waits), as etcd's `benchmark lock`-style loops do.
L2: `contenders` clients, each its own `AsyncClient`, take and release one lock as fast
as the queue lets them. Tokens of one lock follow each other (each grant raises the
shard's revision by one, and nothing else writes to that shard), so grant i follows
release i-1, and the handoff is the time between them: CLOCK_MONOTONIC is one clock for
every process of the machine.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import statistics
import time
from typing import Any

from ringlock import eventloop
from ringlock.benchmark import collect_as_the_nodes_do
from ringlock.client.aio import AsyncClient

LOCK_NAMES = 1000
"""L1's lock names."""
TTL_S = 10.0
CONTENDED_LOCK = "bench/contended"


async def _uncontended(addresses: list[str], lanes: range, lane_count: int, seconds: float,
                       start_at: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    async with AsyncClient(addresses, timeout=10) as client:
        await client.shard_map()
        for shard in range(client.shard_count):  # sessions first: they are not the measure
            await client.sessions.get(shard, round(TTL_S * 1000), 10)
        await asyncio.sleep(max(0.0, start_at - time.time()))
        end = time.monotonic() + seconds

        async def lane(index: int) -> None:
            nonlocal errors
            names = [f"bench/lock/{n}" for n in range(index, LOCK_NAMES, lane_count)]
            turn = 0
            while time.monotonic() < end:
                lock = client.lock(names[turn % len(names)], ttl=TTL_S)
                turn += 1
                started = time.perf_counter()
                try:
                    await lock.acquire()
                    await lock.release()
                except Exception:
                    errors += 1
                    continue
                latencies.append((time.perf_counter() - started) * 1000)

        await asyncio.gather(*(lane(i) for i in lanes))
    return {"ops": len(latencies), "errors": errors, "latencies_ms": latencies}


async def _contended(addresses: list[str], contenders: int, seconds: float, name: str,
                     start_at: float) -> dict[str, Any]:
    grants: list[tuple[int, float]] = []
    releases: list[tuple[int, float]] = []
    errors = 0
    clients = [AsyncClient(addresses, timeout=10) for _ in range(contenders)]
    try:
        for client in clients:
            await client.shard_map()
        await asyncio.sleep(max(0.0, start_at - time.time()))
        end = time.monotonic() + seconds

        async def contend(client: AsyncClient) -> None:
            nonlocal errors
            lock = client.lock(name, ttl=TTL_S)
            while time.monotonic() < end:
                try:
                    await lock.acquire()
                    assert lock.token is not None
                    token = lock.token
                    grants.append((token, time.monotonic()))
                    releases.append((token, time.monotonic()))
                    await lock.release()
                except Exception:
                    errors += 1

        await asyncio.gather(*(contend(c) for c in clients))
    finally:
        for client in clients:
            await client.close()
    return {"ops": len(grants), "errors": errors, "grants": grants, "releases": releases}


def _main(args: tuple[str, tuple[Any, ...]]) -> dict[str, Any]:
    collect_as_the_nodes_do()
    kind, rest = args
    if kind == "L1":
        return eventloop.run(_uncontended(*rest))
    return eventloop.run(_contended(*rest))


def run_lock_workload(addresses: list[str], workload: str, *, seconds: float, lanes: int,
                      contenders: int, processes: int) -> dict[str, Any]:
    start_at = time.time() + 1.5 + 0.5 * processes
    jobs: list[tuple[str, tuple[Any, ...]]]
    if workload == "L1":
        jobs = [("L1", (addresses, range(p, lanes, processes), lanes, seconds, start_at))
                for p in range(min(processes, lanes))]
    else:
        name = CONTENDED_LOCK
        share = [contenders // processes + (1 if i < contenders % processes else 0)
                 for i in range(processes)]
        jobs = [("L2", (addresses, n, seconds, name, start_at)) for n in share if n]
    with multiprocessing.get_context("spawn").Pool(len(jobs)) as pool:
        parts = pool.map(_main, jobs)
    ops = sum(p["ops"] for p in parts)
    result: dict[str, Any] = {"workload": workload, "ops_per_s": round(ops / seconds),
                              "ops": ops, "errors": sum(p["errors"] for p in parts)}
    if workload == "L1":
        latencies = sorted(lat for p in parts for lat in p["latencies_ms"])
        result.update(_percentiles("pair", latencies))
    else:
        grants = dict(g for p in parts for g in p["grants"])
        releases = dict(r for p in parts for r in p["releases"])
        tokens = sorted(grants)
        handoffs = sorted((grants[b] - releases[a]) * 1000
                          for a, b in itertools.pairwise(tokens) if b == a + 1 and a in releases)
        result.update(_percentiles("handoff", handoffs))
        result["handoffs"] = len(handoffs)
    return result


def _percentiles(what: str, ordered: list[float]) -> dict[str, Any]:
    if not ordered:
        return {}
    return {f"{what}_p50_ms": round(ordered[len(ordered) // 2], 2),
            f"{what}_p99_ms": round(ordered[min(len(ordered) - 1, len(ordered) * 99 // 100)],
                                    2),
            f"{what}_mean_ms": round(statistics.fmean(ordered), 2)}
