"""Acknowledged writes survive kill -9 of a leader, of every node at once, and a torn WAL."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ringlock.client import AsyncClient
from ringlock.devcluster import DevCluster
from ringlock.errors import RequestError
from ringlock.sharding.keys import shard_of
from ringlock.transport.rpc import RpcConnection
from tests.integration.conftest import TEST_SHARDS, make_cluster

WRITERS = 8
WRITES = 10_000


def busiest_leader(cluster: DevCluster) -> int:
    leaders = cluster.wait_ready()
    counts: dict[int, int] = {}
    for node in leaders.values():
        counts[node] = counts.get(node, 0) + 1
    return max(counts, key=lambda n: counts[n])


async def write_all(cluster: DevCluster, total: int, *, kill_at: int | None = None,
                    prefix: str = "k") -> tuple[dict[str, str], list[str]]:
    """`WRITERS` clients write `total` distinct keys; at `kill_at` acknowledged writes the
    busiest leader gets kill -9. Returns the acknowledged writes and the failures."""
    acknowledged: dict[str, str] = {}
    failures: list[str] = []
    killed = False
    clients = [AsyncClient(cluster.addresses, timeout=30) for _ in range(WRITERS)]

    async def writer(index: int) -> None:
        nonlocal killed
        client = clients[index]
        for n in range(index, total, WRITERS):
            key, value = f"{prefix}{n:06d}", f"v{n}"
            try:
                await client.put(key, value)
            except RequestError as error:
                failures.append(f"{key}: {error}")
                continue
            acknowledged[key] = value
            if kill_at is not None and not killed and len(acknowledged) >= kill_at:
                killed = True
                victim = busiest_leader(cluster)
                cluster.kill(victim)

    try:
        await asyncio.gather(*(writer(i) for i in range(WRITERS)))
    finally:
        for client in clients:
            await client.close()
    return acknowledged, failures


async def read_back(cluster: DevCluster, expected: dict[str, str]) -> list[str]:
    async with AsyncClient(cluster.addresses, timeout=30) as client:
        keys = sorted(expected)
        missing = []
        for start in range(0, len(keys), 256):
            chunk = keys[start : start + 256]
            values = await asyncio.gather(*(client.get(k) for k in chunk))
            missing += [k for k, v in zip(chunk, values, strict=True)
                        if v != expected[k].encode()]
        return missing


def test_every_acknowledged_write_survives_kill_9_of_a_leader(cluster: DevCluster) -> None:
    acknowledged, failures = asyncio.run(write_all(cluster, WRITES, kill_at=WRITES // 2))
    assert not failures, failures[:5]
    assert len(acknowledged) == WRITES
    assert asyncio.run(read_back(cluster, acknowledged)) == []


def test_every_acknowledged_write_survives_kill_9_of_all_nodes(cluster: DevCluster) -> None:
    acknowledged, failures = asyncio.run(write_all(cluster, 3000))
    assert not failures, failures[:5]
    for node_id in cluster.nodes:
        cluster.signal_node(node_id, 9)
    for node_id in cluster.nodes:
        cluster.kill(node_id)
    cluster.start()
    assert asyncio.run(read_back(cluster, acknowledged)) == []


async def wait_caught_up(address: str, expected: dict[str, str], timeout: float) -> list[str]:
    """Poll one node's own replicas (stale reads, no redirect) until they hold `expected`."""
    connection = RpcConnection(address)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    lagging = sorted(expected)
    try:
        while lagging and loop.time() < deadline:
            still = []
            for key in lagging:
                body = {"op": "get", "key": key.encode(), "consistency": "stale",
                        "shard": shard_of(key.encode(), TEST_SHARDS)}
                try:
                    raw = await connection.call(body, 2.0)
                except (RequestError, TimeoutError):
                    raw = None
                    if connection.broken:
                        connection = RpcConnection(address)
                if raw is None or raw[1] != expected[key].encode():
                    still.append(key)
            lagging = still
            if lagging:
                await asyncio.sleep(0.1)
    finally:
        await connection.close()
    return lagging


def last_segment(data_dir: Path) -> Path:
    segments = sorted((data_dir / "wal").glob("*.wal"))
    assert segments, f"no WAL segment in {data_dir}"
    return segments[-1]


def test_node_with_torn_wal_tail_cuts_it_and_catches_up(cluster: DevCluster) -> None:
    acknowledged, failures = asyncio.run(write_all(cluster, 2000, prefix="a"))
    assert not failures
    victim = 3
    cluster.kill(victim)
    segment = last_segment(cluster.nodes[victim].data_dir)
    size = segment.stat().st_size
    with open(segment, "r+b") as file:
        file.truncate(size - 7)  # cut the last record mid-way, as a crash mid-write would
    more, failures = asyncio.run(write_all(cluster, 500, prefix="b"))
    assert not failures
    cluster.start_node(victim)
    log = cluster.nodes[victim].data_dir / "node.log"
    expected = {**acknowledged, **more}
    lagging = asyncio.run(wait_caught_up(cluster.nodes[victim].address, expected, 60))
    assert lagging == [], f"{len(lagging)} keys not caught up on node {victim}"
    assert "torn" in log.read_text().lower()


def test_a_node_behind_the_leaders_snapshot_catches_up_by_install_snapshot(
    tmp_path: Path,
) -> None:
    cluster = make_cluster(tmp_path / "cluster", extra_args=("--compact-every", "40"))
    try:
        cluster.start()
        victim = 3
        cluster.kill(victim)
        acknowledged, failures = asyncio.run(write_all(cluster, 2000, prefix="s"))
        assert not failures
        cluster.start_node(victim)
        lagging = asyncio.run(wait_caught_up(cluster.nodes[victim].address, acknowledged, 60))
        assert lagging == [], f"{len(lagging)} keys not caught up on node {victim}"
        with cluster.client() as client:
            report = next(r for r in client.status() if r.get("node") == victim)
        assert report["counters"]["snapshots_installed"] > 0, "caught up without a snapshot"
    finally:
        cluster.stop()
