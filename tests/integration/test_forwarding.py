"""Any node takes any request: a client that knows one address, and does not follow
redirects, still works, even through a node that holds no replica of the shard."""

from __future__ import annotations

from pathlib import Path

from ringlock.devcluster import DevCluster
from ringlock.sharding.keys import shard_of
from tests.integration.conftest import TEST_SHARDS, make_cluster
from tests.integration.test_bad_input import Raw


def put(raw: Raw, key: bytes, value: bytes, request_id: int) -> dict[str, object]:
    return raw.request({"id": request_id, "op": "put", "shard": shard_of(key, TEST_SHARDS),
                        "key": key, "value": value})


def get(raw: Raw, key: bytes, request_id: int) -> dict[str, object]:
    return raw.request({"id": request_id, "op": "get", "shard": shard_of(key, TEST_SHARDS),
                        "key": key})


def test_every_node_relays_to_the_leader_for_a_plain_client(cluster: DevCluster) -> None:
    leaders = cluster.wait_ready()
    keys = [f"fwd-{n}".encode() for n in range(40)]
    for node_id, node in sorted(cluster.nodes.items()):
        raw = Raw(node.address)
        for n, key in enumerate(keys):
            answer = put(raw, key, b"from %d" % node_id, n + 1)
            assert "err" not in answer, answer
            assert get(raw, key, 1000 + n)["ok"][1] == b"from %d" % node_id  # type: ignore[index]
        raw.close()
    # Some of those requests landed on followers: they were relayed, not refused.
    followed = {shard_of(k, TEST_SHARDS) for k in keys}
    assert any(leaders[s] != n for s in followed for n in cluster.nodes)
    with cluster.client() as client:
        forwarded = sum(r["counters"]["forwarded"] for r in client.status())
    assert forwarded > 0


def test_the_ringlock_client_is_redirected_not_relayed(cluster: DevCluster) -> None:
    with cluster.client() as client:
        for n in range(50):
            client.put(f"direct-{n}", "v")
        forwarded = sum(r["counters"]["forwarded"] for r in client.status())
    assert forwarded == 0


def test_a_node_relays_requests_for_shards_it_holds_no_replica_of(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path / "cluster", nodes=4)  # 8 shards x 3 over 4 nodes
    try:
        cluster.start()
        with cluster.client() as client:
            replicas = client.shard_map().replicas
        elsewhere = [s for s in range(TEST_SHARDS) if 4 not in replicas[s]]
        assert elsewhere, replicas
        keys = [k for k in (f"via-4-{n}".encode() for n in range(400))
                if shard_of(k, TEST_SHARDS) in elsewhere][:20]
        raw = Raw(cluster.nodes[4].address)
        for n, key in enumerate(keys):
            assert "err" not in (answer := put(raw, key, b"x", n + 1)), answer
            assert get(raw, key, 100 + n)["ok"][1] == b"x"  # type: ignore[index]
        raw.close()
        with cluster.client() as client:
            forwarded = {r["node"]: r["counters"]["forwarded"] for r in client.status()}
        assert forwarded[4] >= len(keys)
    finally:
        cluster.stop()
