"""Where the client sends a shard's request (AsyncClient._pick): the leader it knows,
a replica for a stale read, any node when it knows neither."""

from __future__ import annotations

from ringlock.client.aio import AsyncClient, ShardMap

NODES = {1: "127.0.0.1:7001", 2: "127.0.0.1:7002", 3: "127.0.0.1:7003"}


def client(replicas: dict[int, list[int]], leaders: dict[int, str]) -> AsyncClient:
    c = AsyncClient(["127.0.0.1:7001"], secret="")
    c._map = ShardMap(version=1, shards=4, nodes=dict(NODES), replicas=replicas,
                      leaders=leaders)
    return c


def test_a_known_leader_takes_every_linearizable_request() -> None:
    c = client({0: [1, 2, 3]}, {0: NODES[2]})
    assert {c._pick(0, stale_ok=False, avoid=False) for _ in range(50)} == {NODES[2]}


def test_avoiding_the_leader_picks_among_the_replicas() -> None:
    c = client({0: [1, 3]}, {0: NODES[2]})
    assert {c._pick(0, stale_ok=False, avoid=True) for _ in range(200)} == {NODES[1], NODES[3]}


def test_a_stale_read_goes_to_any_replica() -> None:
    c = client({0: [1, 2, 3]}, {0: NODES[2]})
    assert {c._pick(0, stale_ok=True, avoid=False) for _ in range(300)} == set(NODES.values())


def test_a_stale_read_with_no_replica_known_goes_to_the_leader() -> None:
    c = client({0: []}, {0: NODES[2]})
    assert {c._pick(0, stale_ok=True, avoid=False) for _ in range(50)} == {NODES[2]}


def test_with_no_leader_known_any_node_may_be_asked() -> None:
    c = client({}, {})
    assert {c._pick(0, stale_ok=False, avoid=False) for _ in range(300)} == set(NODES.values())
