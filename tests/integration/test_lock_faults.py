"""The lock under fire, with real processes: 20 client processes x 100 acquisitions of one
lock while the lock shard's leader is killed (kill -9) and a holder is paused (SIGSTOP)
past its TTL; leases across a leader failover; 1,000 waiters woken one at a time."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ringlock.checker.locks import LockHold, check_lock_history
from ringlock.client import AsyncClient
from ringlock.devcluster import DevCluster
from ringlock.errors import NotFound
from ringlock.sharding.keys import shard_of

WORKER = Path(__file__).with_name("lock_worker.py")
CLIENTS = 20
ACQUISITIONS = 100
LOCK = "jobs/the-one"
TTL_S = 5.0
PAUSED_CLIENT = 0
PAUSE_AT = 10
"""The paused client's acquisition at which it is stopped."""
PAUSE_S = 2 * TTL_S
KILL_AFTER_HOLDS = 600
RUN_LIMIT_S = 300.0
FAILOVER_TTL_MS = 5000


def test_20_clients_keep_one_lock_exclusive_fifo_and_fenced_under_kill_9_and_sigstop(
        cluster: DevCluster, tmp_path: Path) -> None:
    shards = cluster.shards
    lock_shard = shard_of(LOCK.encode(), shards)
    outputs = [tmp_path / f"client-{i}.jsonl" for i in range(CLIENTS)]
    workers = [subprocess.Popen(
        [sys.executable, str(WORKER), cluster.cluster, LOCK, str(ACQUISITIONS), str(i),
         str(out), str(PAUSE_AT if i == PAUSED_CLIENT else -1), str(TTL_S)],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        for i, out in enumerate(outputs)]
    snapshots: list[tuple[int, list[int]]] = []
    stop_sampling = threading.Event()
    sampler = threading.Thread(target=_sample_queues, args=(cluster, snapshots, stop_sampling))
    sampler.start()
    killed: int | None = None
    paused = resumed = False
    try:
        deadline = time.monotonic() + RUN_LIMIT_S
        marker = Path(str(outputs[PAUSED_CLIENT]) + ".holding")
        while any(w.poll() is None for w in workers):
            assert time.monotonic() < deadline, "the workers did not finish in time"
            if not paused and marker.exists():
                workers[PAUSED_CLIENT].send_signal(signal.SIGSTOP)
                paused, paused_at = True, time.monotonic()
            if paused and not resumed and time.monotonic() - paused_at > PAUSE_S:
                workers[PAUSED_CLIENT].send_signal(signal.SIGCONT)
                resumed = True
            if killed is None and _count_lines(outputs) >= KILL_AFTER_HOLDS:
                killed = cluster.group_leaders().get(lock_shard)
                assert killed is not None
                cluster.kill(killed)
                killed_at = time.monotonic()
            if killed is not None and not cluster.nodes[killed].running \
                    and time.monotonic() - killed_at > 1.0:
                cluster.start_node(killed)
            time.sleep(0.05)
    finally:
        stop_sampling.set()
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGCONT)
                worker.kill()
            worker.wait(10)
        sampler.join(10)
    assert paused and resumed and killed is not None
    records = [json.loads(line) for out in outputs for line in out.read_text().splitlines()]
    holds = [r for r in records if "token" in r]
    assert not [r for r in records if "error" in r], [r for r in records if "error" in r][:3]
    assert len(holds) == CLIENTS * ACQUISITIONS

    # No two holders at once, and tokens grow in grant order (the simulator's checker).
    verdict = check_lock_history([
        LockHold(LOCK, r["client"], r["token"], _us(r["acquired"]),
                 None if r["released"] is None else _us(r["released"])) for r in holds])
    assert verdict.verdict == "ok", verdict

    # The paused holder: every write after its lease ran out was refused.
    [paused_hold] = [r for r in holds if "after_pause" in r]
    assert paused_hold["released"] is None and paused_hold["release"] == "not holder"
    assert paused_hold["after_pause"] == ["fenced", "fenced"]

    # Every acknowledged fenced write is in the log, once, in token order; nothing else.
    with cluster.client() as client:
        log = (client.get("fenced/log") or b"").decode()
    entries = [tuple(map(int, e.split(":"))) for e in log.split(";") if e]
    written = sorted((r["client"], r["token"]) for r in holds if r["write"] == "ok")
    assert sorted(entries) == written
    assert [t for _, t in entries] == sorted(t for _, t in entries)
    assert len(written) >= len(holds) - 20  # only holds that lost their lease wrote nothing

    # FIFO: in every sampled queue, the waiters were granted in queue order.
    token_of = {r["waiter"]: r["token"] for r in holds}
    assert len(snapshots) > 20
    for holder, queue in snapshots:
        granted = [token_of[w] for w in queue if w in token_of]
        assert granted == sorted(granted), (holder, queue)
        if holder in token_of and granted:
            assert token_of[holder] < granted[0]


def test_leases_kept_alive_survive_a_leader_failover_and_unkept_ones_expire(
        cluster: DevCluster) -> None:
    async def run() -> None:
        async with AsyncClient(cluster.addresses) as client:
            await client.ensure_map(10)
            leaders = cluster.group_leaders()
            victim = max(set(leaders.values()), key=list(leaders.values()).count)
            shards = [s for s, n in sorted(leaders.items()) if n == victim and s < cluster.shards]
            # A TTL well above the 1-2 s an election takes, as etcd's minimum TTL is: the
            # keepalives must get through to the new leader before the client gives up.
            kept = [await client.sessions.get(s, FAILOVER_TTL_MS, 10) for s in shards]
            unkept = [await client.grant_lease_on(s, FAILOVER_TTL_MS) for s in shards]
            cluster.kill(victim)
            deadline = time.monotonic() + 3 * FAILOVER_TTL_MS / 1000
            while time.monotonic() < deadline:
                assert all(s.valid() for s in kept), [s.lost_reason for s in kept]
                await asyncio.sleep(0.1)
            for session in kept:
                assert await client.ttl_remaining(session.lease) > 0
                assert session.keepalives >= 3
            for lease in unkept:
                try:
                    await client.ttl_remaining(lease)
                except NotFound:
                    continue
                raise AssertionError(f"lease {lease.id} outlived its TTL without keepalives")
            cluster.start_node(victim)

    asyncio.run(run())


def test_one_release_wakes_exactly_one_of_1000_waiters(cluster: DevCluster) -> None:
    async def run() -> None:
        async with AsyncClient(cluster.addresses) as holder, \
                AsyncClient(cluster.addresses) as crowd:
            first = holder.lock("crowded", ttl=30)
            assert await first.acquire()
            locks = [crowd.lock("crowded", ttl=60) for _ in range(1000)]
            tasks = [asyncio.ensure_future(lock.acquire()) for lock in locks]
            deadline = time.monotonic() + 60
            while await _waiters(holder, b"crowded") < 1000:
                assert time.monotonic() < deadline, "the 1,000 waiters did not all queue"
                await asyncio.sleep(0.05)
            shard = shard_of(b"crowded", crowd.shard_count)
            [session] = _sessions(crowd)
            current = first
            for _ in range(3):
                leader = crowd._connections[crowd._map.leaders[shard]]
                before, keepalives = leader.frames_in, session.keepalives
                pushed_before = await _pushed(holder)
                await current.release()
                done, _ = await asyncio.wait(tasks, timeout=10,
                                             return_when=asyncio.FIRST_COMPLETED)
                assert len(done) == 1
                # One request on the same connection: its answer comes after any frame the
                # node sent before it, so every push this release caused is in by then.
                await crowd.ttl_remaining(session.lease)
                assert len([t for t in tasks if t.done()]) == 1
                frames = leader.frames_in - before - (session.keepalives - keepalives)
                if current is not first:
                    frames -= 1  # the releaser is one of the crowd: its own answer
                assert frames == 2, f"{frames - 1} frames woke the crowd, not 1"
                assert await _pushed(holder) - pushed_before == 1
                [task] = done
                tasks.remove(task)
                current = locks[[lock.locked() for lock in locks].index(True)]
                locks.remove(current)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(run())


def _sessions(client: AsyncClient) -> list[Any]:
    return [f.result() for f in client.sessions._sessions.values() if f.done()]


async def _pushed(client: AsyncClient) -> int:
    return sum(int(r.get("lock_grants_pushed", 0)) for r in await client.status())


async def _waiters(client: AsyncClient, name: bytes) -> int:
    for state in await client.locks():
        if state.name == name:
            return len(state.waiters)
    return 0


def _sample_queues(cluster: DevCluster, into: list[tuple[int, list[int]]],
                   stop: threading.Event) -> None:
    """The cluster's view of the queue, as often as it answers (bounded by `stop`)."""
    with cluster.client(timeout=2) as client:
        while not stop.wait(0.05):
            try:
                states = client.locks()
            except Exception:  # a leader is down: sample again
                continue
            for state in states:
                if state.name == LOCK.encode() and state.waiters:
                    into.append((state.holder, [w for w, _ in state.waiters]))


def _count_lines(paths: list[Path]) -> int:
    return sum(p.read_text().count("\n") for p in paths if p.exists())


def _us(seconds: float) -> int:
    return round(seconds * 1_000_000)
