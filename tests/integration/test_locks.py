"""The lock service on a real cluster: FIFO grants pushed to waiters, fencing tokens,
timeouts that leave the queue, lost locks that are loud, and lease TTLs."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from ringlock import FencedOut, LockWaitAborted, NotFound, NotHolder
from ringlock.client import AsyncClient, Lease
from ringlock.devcluster import DevCluster
from ringlock.errors import WaitSuperseded
from ringlock.sharding.keys import shard_of
from ringlock.transport.rpc import RpcConnection


def test_a_lock_is_exclusive_fifo_and_its_tokens_grow(cluster: DevCluster) -> None:
    async def run() -> None:
        clients = [AsyncClient(cluster.addresses) for _ in range(4)]
        try:
            first = clients[0].lock("jobs/1", ttl=5)
            assert await first.acquire()
            assert first.locked() and first.valid and first.token
            order: list[int] = []
            tokens: list[int] = []

            async def wait(i: int) -> None:
                lock = clients[i].lock("jobs/1", ttl=5)
                async with lock as held:
                    order.append(i)
                    assert held.token is not None
                    tokens.append(held.token)
                    await clients[i].put("jobs/1/owner", str(i), fence=held)

            waiters = []
            for i in (1, 2, 3):  # queued in this order: each waits until the last queued
                waiters.append(asyncio.ensure_future(wait(i)))
                await _until_queued(clients[0], b"jobs/1", i)
            assert not await clients[0].lock("jobs/1", ttl=5).acquire(blocking=False)
            await first.release()
            await asyncio.wait_for(asyncio.gather(*waiters), 20)
            assert order == [1, 2, 3]
            assert tokens == sorted(tokens) and tokens[0] > (first.token or 0) - 1
            assert await clients[0].get("jobs/1/owner") == b"3"
            assert await clients[0].locks() == []
        finally:
            for client in clients:
                await client.close()

    asyncio.run(run())


def test_a_stale_token_is_fenced_out_on_another_shard(cluster: DevCluster) -> None:
    with cluster.client() as client:
        with client.lock("printer", ttl=5) as held:
            old = held.token
            assert old is not None
            assert client.put("far/away/key", "1", fence=held) is None
        with client.lock("printer", ttl=5) as again:
            assert again.token is not None and again.token > old
            client.put("far/away/key", "2", fence=again)
        with pytest.raises(FencedOut):
            client.put("far/away/key", "3", fence=("printer", old))
        with pytest.raises(FencedOut):
            client.delete("far/away/key", fence=("printer", old))
        assert client.get("far/away/key") == b"2"


def test_a_waiter_that_times_out_leaves_the_queue(cluster: DevCluster) -> None:
    with cluster.client() as client:
        holder = client.lock("busy", ttl=5)
        assert holder.acquire()
        impatient = client.lock("busy", ttl=5)
        started = time.monotonic()
        assert impatient.acquire(timeout=0.5) is False
        assert 0.45 < time.monotonic() - started < 3
        [state] = client.locks()
        assert state.name == b"busy" and state.waiters == []
        assert state.token == holder.token and state.ttl_remaining is not None
        holder.release()
        assert client.locks() == []


def test_threads_of_one_process_take_turns(cluster: DevCluster) -> None:
    with cluster.client() as client:
        lock = client.lock("counter", ttl=5)
        client.put("counter/value", "0")

        def bump() -> None:
            for _ in range(5):
                with lock as held:
                    value = int(client.get("counter/value") or b"0")
                    client.put("counter/value", str(value + 1), fence=held)

        threads = [threading.Thread(target=bump) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert client.get("counter/value") == b"20"


def test_a_lost_lease_makes_the_lock_invalid_loudly(cluster: DevCluster) -> None:
    lost: list[str] = []
    with cluster.client() as client, cluster.client() as other:
        lock = client.lock("fragile", ttl=1, on_lost=lambda held: lost.append(held.lost_reason))
        assert lock.acquire()
        session = lock._inner._session
        assert session is not None
        other.revoke(session.lease)  # what an expiry on the cluster does
        deadline = time.monotonic() + 10
        while not lost and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lost and "expired" in lost[0] and not lock.valid
        with pytest.raises(FencedOut):
            client.put("fragile/data", "x", fence=lock)
        with pytest.raises(NotHolder):
            lock.release()
        with other.lock("fragile", ttl=5) as next_holder:
            assert next_holder.valid


def test_lease_ttl_remaining_counts_down_and_keepalive_restores_it(
        cluster: DevCluster) -> None:
    with cluster.client() as client:
        lease = client.grant_lease(3)
        first = client.ttl_remaining(lease)
        assert 2.0 < first <= 3.0
        time.sleep(0.6)
        later = client.ttl_remaining(lease)
        assert later < first
        client.keepalive(lease)
        assert client.ttl_remaining(lease) > later


async def _queue_length(client: AsyncClient, name: bytes) -> int:
    for state in await client.locks():
        if state.name == name:
            return len(state.waiters)
    return -1


async def _until_queued(client: AsyncClient, name: bytes, waiters: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if await _queue_length(client, name) == waiters:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"lock {name!r} never had {waiters} waiters")


def test_the_lock_command_runs_a_command_holding_the_lock_and_passes_the_token(
        cluster: DevCluster) -> None:
    env = {**os.environ, "RINGLOCK_CLUSTER": cluster.cluster}
    script = ('echo "$RINGLOCK_LOCK_NAME $RINGLOCK_FENCE_TOKEN"; '
              f'{sys.executable} -m ringlock locks --json; '
              f'{sys.executable} -m ringlock put cli/fenced yes --fenced')
    done = subprocess.run([sys.executable, "-m", "ringlock", "lock", "cli/job", "--ttl", "5",
                           "--", "sh", "-c", script], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    first, listing, ok = done.stdout.strip().splitlines()
    name, token = first.split()
    assert name == "cli/job" and int(token) > 0
    [row] = json.loads(listing)
    assert row["name"] == "cli/job" and row["token"] == int(token) and row["waiters"] == []
    assert ok == "OK"
    with cluster.client() as client:
        assert client.get("cli/fenced") == b"yes"
        with client.lock("cli/job", ttl=5) as held:
            assert held.token is not None and held.token > int(token)
            client.put("cli/fenced", "second", fence=held)  # the key's shard sees it
    stale = subprocess.run([sys.executable, "-m", "ringlock", "put", "cli/fenced", "no",
                            "--fenced"], env={**env, "RINGLOCK_LOCK_NAME": "cli/job",
                                              "RINGLOCK_FENCE_TOKEN": token},
                           capture_output=True, text=True, timeout=30, check=False)
    assert stale.returncode == 1 and "FencedOut" in stale.stderr
    busy = subprocess.run([sys.executable, "-m", "ringlock", "lock", "cli/job", "-w", "0.3",
                           "--", "true"], env=env, capture_output=True, text=True,
                          timeout=30, check=False)
    assert busy.returncode == 0  # free again: acquired at once


def test_readers_share_a_writer_waits_and_a_semaphore_admits_its_limit(
        cluster: DevCluster) -> None:
    async def run() -> None:
        async with AsyncClient(cluster.addresses) as client:
            rw = client.rwlock("config", ttl=5)
            first, second = rw.read(), rw.read()
            assert await first.acquire() and await second.acquire(blocking=False)
            writer = rw.write()
            assert not await writer.acquire(blocking=False)
            waiting = asyncio.ensure_future(writer.acquire())
            await _until_queued(client, b"config", 1)
            late_reader = rw.read()  # behind the waiting writer: it must not overtake
            assert not await late_reader.acquire(blocking=False)
            await client.put("config/value", "r", fence=first)  # readers do not fence
            await client.put("config/value", "r2", fence=second)  # each other out
            first_token, second_token = first.token, second.token
            await first.release()
            assert not waiting.done()
            await second.release()
            assert await asyncio.wait_for(waiting, 10)
            assert writer.token is not None and second_token is not None
            assert writer.token > second_token
            await client.put("config/value", "w", fence=writer)
            with pytest.raises(FencedOut):  # a later writer fences the readers out
                await client.put("config/value", "stale", fence=("config", first_token, "s"))
            await writer.release()

            slots = [client.semaphore("gpus", 2, ttl=5) for _ in range(3)]
            assert await slots[0].acquire() and await slots[1].acquire()
            assert not await slots[2].acquire(timeout=0.3)
            third = asyncio.ensure_future(slots[2].acquire())
            await _until_queued(client, b"gpus", 1)
            await slots[0].release()
            assert await asyncio.wait_for(third, 10)
            await slots[1].release()
            await slots[2].release()
            assert await client.locks() == []

    asyncio.run(run())


def test_an_election_has_one_leader_and_the_next_candidate_follows(
        cluster: DevCluster) -> None:
    async def run() -> None:
        async with AsyncClient(cluster.addresses) as a, AsyncClient(cluster.addresses) as b:
            first, second = a.election("scheduler", ttl=5), b.election("scheduler", ttl=5)
            seen: list[bytes | None] = []

            async def observe() -> None:
                async for leader in a.election("scheduler").observe():
                    seen.append(leader)
                    if len(seen) == 3:
                        return

            observer = asyncio.ensure_future(observe())
            await asyncio.sleep(0.3)  # the watch is open before the first campaign
            assert await first.campaign("node-a")
            assert await first.leader() == b"node-a"
            follower = asyncio.ensure_future(second.campaign("node-b"))
            await _until_queued(a, b"{election/scheduler}", 1)
            assert not follower.done() and await second.leader() == b"node-a"
            await first.resign()
            assert await asyncio.wait_for(follower, 10)
            assert await first.leader() == b"node-b"
            await asyncio.wait_for(observer, 10)
            assert seen == [b"node-a", None, b"node-b"]
            await second.resign()
            assert await second.leader() is None

    asyncio.run(run())


async def _held_and_raw_acquire(cluster: DevCluster, holder: AsyncClient, other: AsyncClient,
                                name: bytes, waiter: int) -> tuple[Any, RpcConnection,
                                                                  dict[str, Any]]:
    """`holder` holds lock `name`; a bare connection to its shard's leader and the
    `lock_acquire` body a waiter of `other`'s session would send: requests no client
    sends on its own (a waiter that vanishes, a wait re-attached by hand)."""
    held = holder.lock(name.decode(), ttl=30)
    assert await held.acquire()
    shard = shard_of(name, cluster.shards)
    session = await other.sessions.get(shard, 30_000, 10)
    raw = RpcConnection(cluster.nodes[cluster.group_leaders()[shard]].address)
    body = {"op": "lock_acquire", "shard": shard, "name": name, "lease": session.lease.id,
            "waiter": waiter, "wait": True}
    return held, raw, body


def test_a_waiter_whose_connection_closes_leaves_the_queue(cluster: DevCluster) -> None:
    async def run() -> None:
        async with AsyncClient(cluster.addresses) as holder, \
                AsyncClient(cluster.addresses) as other:
            # a waiter that just goes away: no cancel sent
            held, raw, body = await _held_and_raw_acquire(cluster, holder, other, b"door", 77)
            waiting = asyncio.ensure_future(raw.call(body, 30))
            await _until_queued(holder, b"door", 1)
            await raw.close()
            await _until_queued(holder, b"door", 0)
            assert waiting.done()

            cancelled = asyncio.ensure_future(other.lock("door", ttl=30).acquire())
            await _until_queued(holder, b"door", 1)
            cancelled.cancel()  # as asyncio.Lock: a cancelled acquire leaves the queue
            await _until_queued(holder, b"door", 0)
            await held.release()
            assert await holder.locks() == []

    asyncio.run(run())


def test_the_article_shapes_are_the_real_lock_and_table(cluster: DevCluster) -> None:
    from ringlock import DistributedHashTable, DistributedLock

    with cluster.client() as client:
        table = DistributedHashTable(client)
        table.put("user:42", "Ada")
        assert table.get("user:42") == "Ada" and table.get("user:43") is None
        lock = DistributedLock(client, "reports/daily", ttl=5)
        token = lock.acquire()
        assert token == lock.token and token > 0
        client.put("reports/daily/state", "running", fence=lock.held)
        other = DistributedLock(client, "reports/daily", ttl=5)
        with pytest.raises(TimeoutError):
            other.acquire(timeout=0.3)
        lock.release()
        with other:
            assert other.token is not None and other.token > token


def test_a_zero_timeout_makes_one_try_as_threading_lock(cluster: DevCluster) -> None:
    with cluster.client() as client:
        lock = client.lock("free", ttl=5)
        assert lock.acquire(timeout=0)
        assert not client.lock("free", ttl=5).acquire(timeout=0)
        lock.release()


def test_tasks_sharing_one_handle_take_turns(cluster: DevCluster) -> None:
    async def run() -> None:
        async with AsyncClient(cluster.addresses) as client:
            slot = client.semaphore("sem", 2, ttl=5)
            order: list[int] = []

            async def use(i: int) -> None:
                async with slot:
                    order.append(i)
                    [state] = await client.locks()
                    assert state.holder == slot.waiter  # one holder per handle

            await asyncio.wait_for(asyncio.gather(use(1), use(2)), 20)
            assert sorted(order) == [1, 2]
            assert await client.locks() == []

    asyncio.run(run())


def test_cancelling_one_acquire_does_not_cancel_another_sharing_its_session(
        cluster: DevCluster) -> None:
    async def run() -> None:
        async with AsyncClient(cluster.addresses) as client:
            await client.ensure_map(5)
            first = asyncio.ensure_future(client.lock("{t}a", ttl=5).acquire())
            second = asyncio.ensure_future(client.lock("{t}b", ttl=5).acquire())
            for _ in range(3):
                await asyncio.sleep(0)
            first.cancel()
            results = await asyncio.gather(first, second, return_exceptions=True)
            assert isinstance(results[0], asyncio.CancelledError)
            assert results[1] is True

    asyncio.run(run())


def test_re_attaching_waits_do_not_pile_up_on_the_node(cluster: DevCluster) -> None:
    async def run() -> None:
        async with AsyncClient(cluster.addresses) as holder, \
                AsyncClient(cluster.addresses) as other:
            held = holder.lock("dup", ttl=5)
            assert await held.acquire()
            waiting = other.lock("dup", ttl=5)
            task = asyncio.ensure_future(waiting.acquire())
            await _until_queued(holder, b"dup", 1)
            shard = shard_of(b"dup", cluster.shards)
            leader = cluster.nodes[cluster.group_leaders()[shard]].address
            for _ in range(20):  # as if keepalives kept timing out: re-attach each time
                other._lost_leader(shard)
                other._map.leaders[shard] = leader
                await asyncio.sleep(0.05)
            deadline = time.monotonic() + 10
            while sum(r.get("lock_waits_open", 0) for r in await holder.status()) > 1:
                assert time.monotonic() < deadline, "superseded waits were not answered"
                await asyncio.sleep(0.05)
            await held.release()
            assert await asyncio.wait_for(task, 10)
            await waiting.release()
            assert [r.get("lock_waits_open") for r in await holder.status()] == [0, 0, 0]

    asyncio.run(run())


def test_lock_wait_re_attaches_by_a_read_and_answers_at_the_grant(cluster: DevCluster) -> None:
    async def run() -> None:
        async with AsyncClient(cluster.addresses) as holder, \
                AsyncClient(cluster.addresses) as other:
            held, raw, acquire = await _held_and_raw_acquire(cluster, holder, other, b"gate", 5)
            first = asyncio.ensure_future(raw.call(acquire, 30))
            await _until_queued(holder, b"gate", 1)
            wait = {"op": "lock_wait", "shard": acquire["shard"], "name": b"gate", "waiter": 5}
            again = asyncio.ensure_future(raw.call(wait, 30))
            with pytest.raises(LockWaitAborted):  # a waiter that is not queued
                await raw.call({**wait, "waiter": 6}, 30)
            await held.release()
            assert (await asyncio.wait_for(again, 10))[0] == "granted"
            with pytest.raises(WaitSuperseded):  # same connection, same waiter: the older
                await asyncio.wait_for(first, 10)  # was told to ask again
            await raw.close()

    asyncio.run(run())


def test_the_lock_command_stops_its_command_when_the_lock_is_lost(
        cluster: DevCluster) -> None:
    env = {**os.environ, "RINGLOCK_CLUSTER": cluster.cluster}
    runner = subprocess.Popen([sys.executable, "-m", "ringlock", "lock", "cli/lost", "--ttl",
                               "1", "--", "sleep", "60"], env=env,
                              stderr=subprocess.PIPE, text=True)
    try:
        with cluster.client() as client:
            deadline = time.monotonic() + 20
            while not (states := client.locks()):
                assert time.monotonic() < deadline, "the command never got the lock"
                time.sleep(0.05)
            [state] = states
            client.revoke(Lease(state.lease, state.shard, 1000))  # as an expiry would
        assert runner.wait(20) == 75
        assert runner.stderr is not None and "lost" in runner.stderr.read()
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait(10)


def test_an_idle_session_gives_its_lease_back_but_a_holding_one_does_not(
        cluster: DevCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    from ringlock.client import locks as client_locks

    monkeypatch.setattr(client_locks, "IDLE_SESSION_S", 1.0)

    async def run() -> None:
        async with AsyncClient(cluster.addresses) as client:
            held = client.lock("kept", ttl=0.6)
            once = client.lock("{kept}once", ttl=0.6)  # the same shard and TTL: one session
            assert await held.acquire()
            assert await once.acquire()
            await once.release()
            session = held._session
            assert session is not None
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:  # well past IDLE_SESSION_S, still held
                assert held.valid and session.lost_reason is None
                await asyncio.sleep(0.1)
            await held.release()
            deadline = time.monotonic() + 10
            while session.lost_reason != "idle":
                assert time.monotonic() < deadline, "the idle session was kept alive"
                await asyncio.sleep(0.1)
            with pytest.raises(NotFound):
                await client.ttl_remaining(session.lease)  # given back, not left to expire
            assert await client.lock("kept", ttl=0.6).acquire(timeout=5)  # a new session

    asyncio.run(run())


def test_an_acquire_under_a_lease_the_cluster_ended_takes_a_new_session(
        cluster: DevCluster) -> None:
    async def run() -> None:
        async with AsyncClient(cluster.addresses) as client, \
                AsyncClient(cluster.addresses) as other:
            first = client.lock("{z}a", ttl=30)
            assert await first.acquire()
            session = first._session
            assert session is not None
            await first.release()
            await other.revoke(session.lease)  # ended on the cluster; the client, with a
            second = client.lock("{z}b", ttl=30)  # keepalive due in 10 s, does not know
            assert await second.acquire(timeout=10)
            assert second._session is not session and session.lost_reason is not None
            await second.release()

    asyncio.run(run())
