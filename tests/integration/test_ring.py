"""The ring with real processes: nodes join, drain, leave and die under client load, and
shards move online between them without a failed call or a lost write.

Every wait polls a condition against a deadline (`wait_for`); every process is a
DevCluster child, stopped by its PID.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ringlock.benchmark.kv import key_of, preload
from ringlock.checker import check_kv_history
from ringlock.devcluster import DevCluster, free_base_port
from ringlock.sharding.meta import META_GROUP
from ringlock.transport.rpc import RpcConnection
from tests.integration.conftest import print_log_tails
from tests.integration.workload import Workload, read_all

SHARDS = 32
R = 3
PRELOADED = 100_000
MOVE_TIMEOUT_S = 240.0
POLL_S = 0.5

T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except Exception as error:  # a node may be down mid-test
            last = error
        else:
            if last:
                return last
        time.sleep(POLL_S)
    raise AssertionError(f"{what}: not reached in {timeout:.0f} s (last: {last!r:.300})")


def make(path: Path, nodes: int, *extra: str) -> DevCluster:
    # Room for the nodes a test adds later on the next ports.
    return DevCluster(path, nodes=nodes, base_port=free_base_port(nodes + 2), shards=SHARDS,
                      name=f"ring-{path.name}", extra_args=tuple(extra))


@pytest.fixture
def tmp_cluster(tmp_path: Path) -> Iterator[Callable[..., DevCluster]]:
    made: list[DevCluster] = []

    def factory(nodes: int, *extra: str) -> DevCluster:
        cluster = make(tmp_path / f"c{len(made)}", nodes, *extra)
        made.append(cluster)
        return cluster

    yield factory
    for cluster in made:
        cluster.stop()
        print_log_tails(cluster, 12)


def shard_map(cluster: DevCluster) -> Any:
    with cluster.client(timeout=5.0) as client:
        return client.shard_map()


def settled_over(nodes: set[int]) -> Callable[[Any], bool]:
    """Every shard: R voters, all on `nodes`, no learner, not moving; each node within one
    replica of the mean."""

    def check(m: Any) -> bool:
        if m.moving or m.learners:
            return False
        counts = Counter(n for s in range(SHARDS) for n in m.replicas.get(s, []))
        return (all(len(m.replicas.get(s, [])) == R and set(m.replicas[s]) <= nodes
                    for s in range(SHARDS))
                and set(counts) == nodes and max(counts.values()) - min(counts.values()) <= 1)

    return check


def leaders_even(cluster: DevCluster, nodes: set[int]) -> dict[int, int] | None:
    leaders = cluster.leaders()
    counts = Counter(leaders.values())
    mean = SHARDS / len(nodes)
    if len(leaders) == SHARDS and all(abs(counts.get(n, 0) - mean) <= 1 for n in nodes):
        return leaders
    return None


def check_data(cluster: DevCluster, load: Workload) -> None:
    result = load.result
    assert not result.failures, f"{len(result.failures)} failed calls: {result.failures[:5]}"
    assert result.writes > 100 and result.reads > 100, (result.writes, result.reads)
    written = read_all(cluster.addresses, b"w")
    lost = [k for k, v in result.acked.items() if written.get(k) != v]
    assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:5]}"
    preloaded = read_all(cluster.addresses, b"bench")
    assert len(preloaded) == PRELOADED
    assert preloaded[key_of(PRELOADED - 1)] == b"x" * 100


def test_a_fourth_node_joins_under_load_and_takes_a_quarter(
        tmp_cluster: Callable[..., DevCluster]) -> None:
    cluster = tmp_cluster(3).start()
    preload(cluster.addresses, PRELOADED)
    before = shard_map(cluster)
    with Workload(cluster.addresses) as load:
        cluster.add_node(4)
        after = wait_for(lambda: (m := shard_map(cluster)) and settled_over({1, 2, 3, 4})(m)
                         and m, MOVE_TIMEOUT_S, "4 nodes holding 24 replicas each")
        wait_for(lambda: leaders_even(cluster, {1, 2, 3, 4}), 60, "leaders evened out")
    moved = sum(len(set(after.replicas[s]) - set(before.replicas[s])) for s in range(SHARDS))
    assert moved / (SHARDS * R) <= 1 / 4 + 1 / SHARDS, moved
    assert Counter(n for s in range(SHARDS) for n in after.replicas[s])[4] == SHARDS * R // 4
    check_data(cluster, load)


def test_drain_then_remove_a_node_under_load(tmp_cluster: Callable[..., DevCluster]) -> None:
    cluster = tmp_cluster(4).start()
    preload(cluster.addresses, PRELOADED)
    with Workload(cluster.addresses) as load:
        with cluster.client(timeout=10.0) as client:
            client.set_node_state(4, "draining")
        wait_for(lambda: settled_over({1, 2, 3})(shard_map(cluster)), MOVE_TIMEOUT_S,
                 "node 4 drained")
        wait_for(lambda: leaders_even(cluster, {1, 2, 3}), 60, "leaders on the 3 others")
        with cluster.client(timeout=10.0) as client:
            client.set_node_state(4, "removed")
        process = cluster.nodes[4].process
        assert process is not None
        wait_for(lambda: process.poll() is not None, 30, "the removed node stops itself")
    final = wait_for(lambda: (m := shard_map(cluster)) and m.states[4] == "removed" and m,
                     10, "every node's map names node 4 removed")
    assert 4 not in final.nodes
    assert all(4 not in final.replicas[s] for s in range(SHARDS))
    check_data(cluster, load)


def test_a_dead_node_is_replaced_after_dead_after(tmp_cluster: Callable[..., DevCluster]) -> None:
    cluster = tmp_cluster(4, "--dead-after", "3").start()
    preload(cluster.addresses, PRELOADED)
    victim = 4
    assert any(victim in holders for holders in shard_map(cluster).replicas.values())
    cluster.kill(victim)
    final = wait_for(lambda: (m := shard_map(cluster)) and m.states.get(victim) == "dead"
                     and settled_over({1, 2, 3})(m) and m, MOVE_TIMEOUT_S,
                     "every shard back to 3 replicas on the live nodes")
    assert all(len(final.replicas[s]) == R for s in range(SHARDS))
    preloaded = read_all(cluster.addresses, b"bench")
    assert len(preloaded) == PRELOADED


def test_killing_the_meta_leader_mid_move_converges_and_stays_linearizable(
        tmp_cluster: Callable[..., DevCluster]) -> None:
    cluster = tmp_cluster(3).start()
    preload(cluster.addresses, PRELOADED)
    with Workload(cluster.addresses, history_clients=4) as load:
        cluster.add_node(4)
        wait_for(lambda: shard_map(cluster).moving, 60, "a move under way")
        meta_leader = wait_for(cluster.meta_leader, 10, "the meta leader")
        cluster.kill(meta_leader)
        wait_for(lambda: (n := cluster.meta_leader()) and n != meta_leader, 30,
                 "a new meta leader")
        cluster.start_node(meta_leader)
        wait_for(lambda: settled_over({1, 2, 3, 4})(shard_map(cluster)), MOVE_TIMEOUT_S,
                 "the move finished after the crash")
    verdict = check_kv_history(load.result.history)
    assert verdict.ok, verdict.message
    assert len(load.result.history) > 50
    # A call that timed out while its node was killed is allowed (outcome unknown); a
    # lost or wrong acknowledged write is not.
    load.result.failures = [f for f in load.result.failures if "Timeout" in f]
    written = read_all(cluster.addresses, b"w")
    assert all(written.get(k) == v for k, v in load.result.acked.items())


def test_a_dead_meta_voter_is_replaced_and_can_then_be_removed(
        tmp_cluster: Callable[..., DevCluster]) -> None:
    cluster = tmp_cluster(4, "--dead-after", "3").start()
    meta_voters = set(shard_map_raw(cluster)["groups"][str(META_GROUP)][0])
    assert meta_voters == {1, 2, 3}
    victim = 3
    cluster.kill(victim)
    wait_for(lambda: (m := shard_map(cluster)) and m.states.get(victim) == "dead"
             and settled_over({1, 2, 4})(m), MOVE_TIMEOUT_S,
             "every shard back to 3 replicas on the live nodes")
    wait_for(lambda: set(shard_map_raw(cluster)["groups"][str(META_GROUP)][0]) == {1, 2, 4},
             MOVE_TIMEOUT_S, "the dead node's meta seat moved to node 4")
    with cluster.client(timeout=10.0) as client:  # the meta group still commits
        client.set_node_state(victim, "removed")
        client.put("after", "removal")
        assert client.get("after") == b"removal"
    wait_for(lambda: shard_map(cluster).states[victim] == "removed", 10, "every node's map")


def shard_map_raw(cluster: DevCluster) -> Any:
    """The map as the wire carries it (the meta group's own voters included)."""

    async def fetch() -> Any:
        for address in cluster.addresses:
            connection = RpcConnection(address)
            try:
                return (await connection.call({"op": "map"}, 5.0))["map"]
            except Exception:
                continue
            finally:
                await connection.close()
        raise AssertionError("no node answered with the map")

    return asyncio.run(fetch())


def test_three_nodes_survive_the_death_of_a_meta_voter(
        tmp_cluster: Callable[..., DevCluster]) -> None:
    """With no spare node the dead voter's seats are given up, never a live node's: the
    meta group and every shard go on with the two live nodes (2 of 3 were a majority)."""
    cluster = tmp_cluster(3, "--dead-after", "3").start()
    cluster.kill(3)

    def shrunk() -> bool:
        raw = shard_map_raw(cluster)
        groups = {int(g): set(v) for g, (v, learners, _) in raw["groups"].items()}
        return raw["nodes"]["3"][1] == "dead" and all(v == {1, 2} for v in groups.values())

    wait_for(shrunk, MOVE_TIMEOUT_S, "every group, the meta group too, on nodes 1 and 2")
    with cluster.client(timeout=10.0) as client:  # the meta group still commits
        client.set_node_state(3, "removed")
        client.put("after", "removal")
        assert client.get("after") == b"removal"
    wait_for(lambda: shard_map(cluster).states[3] == "removed", 10, "every node's map")
