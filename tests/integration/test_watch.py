"""Watches on real node processes: every change seen once, in revision order per shard,
through kill -9 of a watched shard's leader; history replayed from an old revision; a
start older than the history gets Compacted; bad watch requests change nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from ringlock.client import AsyncClient, WatchEvent
from ringlock.devcluster import DevCluster
from ringlock.errors import BadRequest, Compacted, RequestError, WrongShard
from ringlock.sharding.keys import shard_of
from ringlock.transport.rpc import RpcConnection
from tests.integration.conftest import TEST_SHARDS, make_cluster

EVENT_TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    """One cluster for the tests that leave it whole (the last one restarts it). Small
    snapshots, so that a restarted node's history starts above revision 0."""
    dev = make_cluster(Path(tmp_path_factory.mktemp("watch")) / "cluster",
                       extra_args=("--compact-every", "40"))
    try:
        dev.start()
        yield dev
    finally:
        dev.stop()


def check_order(events: list[WatchEvent]) -> None:
    """Revisions rise strictly within each shard: nothing twice, nothing out of order."""
    last: dict[int, int] = {}
    for event in events:
        assert event.revision > last.get(event.shard, 0), (event, last)
        last[event.shard] = event.revision


async def collect(watch: object, count: int) -> list[WatchEvent]:
    events = []
    for _ in range(count):
        events.append(await watch.get(EVENT_TIMEOUT_S))  # type: ignore[attr-defined]
    return events


def test_a_prefix_watch_sees_every_change_once_through_a_leader_kill(
        cluster: DevCluster) -> None:
    async def run() -> None:
        async with AsyncClient(cluster.addresses, timeout=30) as client, \
                client.watch(prefix="w/") as watch:
            assert watch.shards == list(range(TEST_SHARDS))
            expected: list[tuple[str, bytes, bytes | None]] = []
            lease = await client.grant_lease(0.5, near="{t}")
            await client.put("w/{t}leased", "L", lease=lease)
            expected.append(("put", b"w/{t}leased", b"L"))
            await client.put("elsewhere", "not watched")

            async def write(start: int, stop: int) -> None:
                for n in range(start, stop):
                    key = f"w/{n % 20}".encode()
                    await client.put(key, f"v{n}")
                    expected.append(("put", key, f"v{n}".encode()))
                    if n % 7 == 0:
                        await client.delete(key)
                        expected.append(("delete", key, None))

            await write(0, 60)
            first = await collect(watch, len(expected))
            leaders = cluster.leaders()
            victim = leaders[shard_of(b"w/0", TEST_SHARDS)]
            cluster.kill(victim)
            await write(60, 150)
            rest = await collect(watch, len(expected) + 1 - len(first))  # + the expire
            events = first + rest
            check_order(events)
            expire = [e for e in events if e.kind == "expire"]
            assert [(e.key, e.lease) for e in expire] == [(b"w/{t}leased", lease.id)]
            seen = sorted(((e.kind, e.key, e.value) for e in events if e.kind != "expire"),
                          key=repr)
            assert seen == sorted(expected, key=repr)
            assert all(e.shard == shard_of(e.key, TEST_SHARDS) for e in events)
            assert watch.resumes >= 1, "the killed leader's streams were not resumed"
            latest = await client.get_kv("w/1")
            assert latest is not None
            assert max(e.revision for e in events if e.key == b"w/1") == latest.mod_revision
            with pytest.raises(TimeoutError):  # and nothing more
                await watch.get(0.3)

    asyncio.run(run())


def test_a_key_watch_replays_history_and_resumes_where_an_earlier_watch_stopped(
        shared: DevCluster) -> None:
    async def run() -> None:
        async with AsyncClient(shared.addresses) as client:
            for n in range(3):
                await client.put("h/key", f"{n}")
            first = await client.get_kv("h/key")
            assert first is not None
            start = first.create_revision
            async with client.watch("h/key", start_revision=start) as watch:
                replay = await collect(watch, 3)
                assert [e.value for e in replay] == [b"0", b"1", b"2"]
                assert replay[0].revision == start and replay[-1].revision == first.mod_revision
                await client.delete("h/key")
                gone = await watch.get(EVENT_TIMEOUT_S)
                assert (gone.kind, gone.value) == ("delete", None)
                resume_from = watch.revisions
            assert resume_from == {shard_of(b"h/key", TEST_SHARDS): gone.revision + 1}
            await client.put("h/key", "after")
            async with client.watch("h/key", start_revision=resume_from) as again:
                event = await again.get(EVENT_TIMEOUT_S)
                assert (event.kind, event.value) == ("put", b"after")

    asyncio.run(run())


def test_the_blocking_client_watches_a_hash_tagged_prefix_on_one_shard(
        shared: DevCluster) -> None:
    with shared.client() as client, client.watch(prefix="{u1}:") as watch:
        assert watch.revisions.keys() == {shard_of(b"{u1}:", TEST_SHARDS)}
        client.put("{u1}:name", "ada")
        client.put("{u1}x", "outside the prefix, same shard")
        client.delete("{u1}:name")
        events = [watch.get(EVENT_TIMEOUT_S) for _ in range(2)]
        assert [(e.kind, e.key, e.value) for e in events] == [
            ("put", b"{u1}:name", b"ada"), ("delete", b"{u1}:name", None)]
        with pytest.raises(TimeoutError):
            watch.get(0.3)
    with pytest.raises(StopIteration):
        next(watch)


def test_bad_watch_requests_are_refused_and_change_nothing(shared: DevCluster) -> None:
    async def run() -> None:
        shard = shard_of(b"bad", TEST_SHARDS)
        leaders = shared.leaders()
        address = shared.nodes[leaders[shard]].address
        connection = RpcConnection(address)
        bad: list[tuple[dict[str, object], type[RequestError]]] = [
            ({"op": "watch", "shard": shard}, BadRequest),  # no prefix
            ({"op": "watch", "shard": shard, "prefix": "text"}, BadRequest),
            ({"op": "watch", "shard": "0", "prefix": b""}, BadRequest),
            ({"op": "watch", "shard": shard, "prefix": b"", "start_revision": -1}, BadRequest),
            ({"op": "watch", "shard": shard, "prefix": b"", "start_revision": True},
             BadRequest),
            ({"op": "watch", "shard": shard, "prefix": b"", "exact": True}, BadRequest),
            ({"op": "watch", "shard": shard + 1, "prefix": b"bad", "exact": True},
             WrongShard),
            ({"op": "watch", "shard": TEST_SHARDS, "prefix": b""}, WrongShard),
            ({"op": "watch_cancel"}, BadRequest),
        ]
        try:
            for body, error in bad:
                with pytest.raises(error):
                    await connection.stream(dict(body), 2.0)
            assert await connection.call({"op": "watch_cancel", "watch": 12345}, 2.0) is False
            stream = await connection.stream(
                {"op": "watch", "shard": shard, "prefix": b"bad", "exact": True}, 2.0)
            assert stream.answer["start"] == stream.answer["revision"] + 1
            assert await connection.call({"op": "watch_cancel", "watch": stream.id}, 2.0)
            with pytest.raises(RequestError):  # ended by the cancel
                await stream.next(2.0)
            assert await connection.call({"op": "map"}, 2.0)  # still serving
        finally:
            await connection.close()

    asyncio.run(run())


def test_closing_the_client_ends_its_watches(shared: DevCluster) -> None:
    async def run() -> None:
        client = AsyncClient(shared.addresses)
        watch = await client.watch(prefix="q/").start()
        await client.close()
        with pytest.raises(StopAsyncIteration):
            await watch.get(1.0)
        await asyncio.sleep(0.2)
        assert not client._connections, "a closed client's watch reconnected"

    asyncio.run(run())


def test_a_start_older_than_the_history_is_compacted(shared: DevCluster) -> None:
    """A restart restores every replica from its snapshot: its history starts there."""
    async def run_writes() -> int:
        async with AsyncClient(shared.addresses) as client:
            for n in range(100):
                await client.put("{c}k", f"{n}")
            kv = await client.get_kv("{c}k")
            assert kv is not None
            return kv.create_revision

    created = asyncio.run(run_writes())
    shared.stop()
    shared.start()

    async def run_watch() -> None:
        async with AsyncClient(shared.addresses) as client:
            with pytest.raises(Compacted) as refused:
                await client.watch("{c}k", start_revision=created).start()
            floor = refused.value.floor
            assert floor > created
            async with client.watch("{c}k", start_revision=floor + 1) as watch:
                await client.put("{c}k", "new")
                events = [await watch.get(EVENT_TIMEOUT_S)]
                while events[-1].value != b"new":
                    events.append(await watch.get(EVENT_TIMEOUT_S))
            # The log after the snapshot was applied again on restart: remembered.
            assert all(e.revision > floor for e in events)
            replayed = [int(e.value or b"") for e in events[:-1]]
            assert replayed == list(range(100 - len(replayed), 100))
            check_order(events)

    asyncio.run(run_watch())
