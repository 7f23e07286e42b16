"""The meta group's state machine and the rebalancer's pure decisions."""

from __future__ import annotations

from ringlock.sharding.clustermap import ClusterMap
from ringlock.sharding.meta import (
    DEAD,
    DRAINING,
    JOINING,
    META_GROUP,
    REMOVED,
    UP,
    MetaError,
    MetaStateMachine,
    encode_command,
)
from ringlock.sharding.rebalance import (
    ProposeMeta,
    ShardChange,
    ShardView,
    meta_voters_wanted,
    next_step,
    plan_actions,
)

PEERS = {1: "127.0.0.1:7101", 2: "127.0.0.1:7102", 3: "127.0.0.1:7103"}


def founded(shards: int = 8, peers: dict[int, str] = PEERS) -> MetaStateMachine:
    return MetaStateMachine.founding(shards, 3, peers)


class Applier:
    def __init__(self, machine: MetaStateMachine) -> None:
        self.machine = machine

    def __call__(self, op: str, *args: object) -> object:
        return self.machine.apply(self.machine.applied_index + 1, encode_command(op, *args))


def test_founding_is_the_same_on_every_node_and_balanced() -> None:
    a, b = founded(), founded()
    assert a.snapshot() == b.snapshot()
    assert a.configs[META_GROUP].voters == (1, 2, 3)
    assert all(len(c.voters) == 3 for g, c in a.configs.items() if g != META_GROUP)


def test_a_founding_meta_group_has_an_odd_number_of_seats() -> None:
    four = {n: f"127.0.0.1:{7100 + n}" for n in range(1, 5)}
    assert len(founded(peers=four).configs[META_GROUP].voters) == 3
    seven = {n: f"127.0.0.1:{7100 + n}" for n in range(1, 8)}
    assert len(founded(peers=seven).configs[META_GROUP].voters) == 5


def test_a_join_is_idempotent_and_an_address_or_id_cannot_be_taken_twice() -> None:
    apply = Applier(m := founded())
    version = apply("add_node", 4, "127.0.0.1:7104")
    assert m.members[4].state == JOINING and version == m.version
    assert apply("add_node", 4, "127.0.0.1:7104") == version  # a retried join
    assert isinstance(apply("add_node", 4, "127.0.0.1:9999"), MetaError)
    assert isinstance(apply("add_node", 5, "127.0.0.1:7104"), MetaError)
    assert isinstance(apply("add_node", 6, "no-port"), MetaError)
    assert m.version == version


def test_states_follow_the_documented_transitions() -> None:
    apply = Applier(m := founded())
    apply("add_node", 4, "127.0.0.1:7104")
    assert isinstance(apply("set_state", 4, DRAINING), MetaError)  # joining -> draining
    apply("set_state", 4, UP)
    apply("set_state", 4, DEAD)
    assert m.members[4].state == DEAD
    apply("set_state", 4, REMOVED)  # holds nothing
    assert m.members[4].state == REMOVED
    assert isinstance(apply("set_state", 4, UP), MetaError)  # removed is final
    assert isinstance(apply("add_node", 4, "127.0.0.1:7104"), MetaError)


def test_a_node_holding_replicas_cannot_be_removed() -> None:
    apply = Applier(m := founded())
    apply("set_state", 3, DRAINING)
    result = apply("set_state", 3, REMOVED)
    assert isinstance(result, MetaError) and "drain it first" in str(result)
    assert m.members[3].state == DRAINING


def test_configuration_reports_only_move_the_map_forward() -> None:
    apply = Applier(m := founded())
    assert apply("shard_config", 0, [1, 2, 3], [4], 7) is True
    version = m.version
    assert apply("shard_config", 0, [1, 2], [], 5) is False  # an older report
    assert m.configs[0].learners == (4,) and m.version == version


def test_malformed_commands_change_nothing() -> None:
    m = founded()
    before = m.snapshot()
    assert isinstance(m.apply(2, b"\xc1garbage"), MetaError)
    assert isinstance(m.apply(3, encode_command("nope", 1)), MetaError)
    assert isinstance(m.apply(4, encode_command("set_state", 1)), MetaError)
    assert isinstance(m.apply(5, encode_command("shard_config", 99, [1], [], 9)), MetaError)
    after = MetaStateMachine.restore(m.snapshot())
    after.applied_index = MetaStateMachine.restore(before).applied_index
    assert after.snapshot() == before


def test_snapshot_restore_and_the_map_round_trip() -> None:
    apply = Applier(m := founded())
    apply("add_node", 4, "127.0.0.1:7104")
    apply("set_target", 0, [1, 2, 3])
    copy = MetaStateMachine.restore(m.snapshot())
    assert copy.snapshot() == m.snapshot()
    cmap = ClusterMap.parse(m.to_map())
    assert cmap.version == m.version and cmap.address(4) == "127.0.0.1:7104"
    assert ClusterMap.parse(cmap.to_wire()) == cmap


def view(shard: int, leader: int, voters: tuple[int, ...], learners: tuple[int, ...] = (),
         caught_up: frozenset[int] = frozenset(), conf_index: int = 5) -> ShardView:
    return ShardView(shard, leader, voters, learners, conf_index, True, caught_up)


def test_a_move_goes_learner_promote_transfer_remove() -> None:
    target = (2, 3, 4)
    step = next_step(view(0, 1, (1, 2, 3)), target)
    assert step == ShardChange(0, 1, "add_learner", 4, 5)
    assert next_step(view(0, 1, (1, 2, 3), (4,)), target) is None  # not caught up yet
    step = next_step(view(0, 1, (1, 2, 3), (4,), frozenset({4})), target)
    assert step is not None and step.change == "promote"
    step = next_step(view(0, 1, (1, 2, 3, 4)), target)
    assert step is not None and (step.change, step.node) == ("transfer", 2)
    step = next_step(view(0, 2, (1, 2, 3, 4)), target)
    assert step is not None and (step.change, step.node) == ("remove", 1)
    assert next_step(view(0, 2, (2, 3, 4)), target) is None


def test_an_abandoned_learner_is_removed_first() -> None:
    step = next_step(view(0, 1, (1, 2, 3), (5,)), (1, 2, 4))
    assert step is not None and (step.change, step.node) == ("remove", 5)


def test_a_new_node_gets_targets_but_at_most_max_moves_at_once() -> None:
    apply = Applier(m := founded())
    apply("add_node", 4, "127.0.0.1:7104")
    views = {s: view(s, 1, (1, 2, 3)) for s in range(8)}
    actions = plan_actions(m, views, heard={1, 2, 3, 4}, silent=set())
    assert [a for a in actions if isinstance(a, ProposeMeta)]  # node 4 -> up
    apply("set_state", 4, UP)
    actions = plan_actions(m, views, heard={1, 2, 3, 4}, silent=set(), max_moves=2)
    targets = [a for a in actions if isinstance(a, ProposeMeta) and b"set_target" in a.command]
    assert len(targets) == 2


def test_a_silent_node_is_declared_dead_and_its_shards_are_re_placed_first() -> None:
    apply = Applier(m := founded(peers={**PEERS, 4: "127.0.0.1:7104"}))
    views = {s: view(s, 1, m.configs[s].voters) for s in range(8)}
    actions = plan_actions(m, views, heard={1, 2, 3}, silent={4})
    assert any(b"set_state" in a.command for a in actions if isinstance(a, ProposeMeta))
    apply("set_state", 4, DEAD)
    actions = plan_actions(m, views, heard={1, 2, 3}, silent={4}, max_moves=8)
    moved = {int(a.why.split()[1].rstrip(":")) for a in actions
             if isinstance(a, ProposeMeta) and b"set_target" in a.command}
    assert moved == {s for s in range(8) if 4 in m.configs[s].voters}


def test_the_meta_group_keeps_an_odd_number_of_seats_on_up_nodes() -> None:
    apply = Applier(m := founded(peers={**PEERS, 4: "127.0.0.1:7104"}))
    assert meta_voters_wanted(m, (1, 2, 3)) == (1, 2, 3)
    apply("set_state", 2, DRAINING)
    assert meta_voters_wanted(m, (1, 2, 3)) == (1, 3, 4)


def test_a_dead_meta_voter_leaves_without_the_group_shrinking_onto_one_live_node() -> None:
    """Voters {1,2,3}, node 3 dead, no spare node: 3 leaves; removing live node 2 (to get
    an odd size of 1) would need dead node 3 to commit it, and wedge the meta group."""
    apply = Applier(m := founded())
    apply("set_state", 3, DEAD)
    target = meta_voters_wanted(m, (1, 2, 3))
    assert target == (1, 2)
    step = next_step(view(META_GROUP, 1, (1, 2, 3)), target)
    assert step is not None and (step.change, step.node) == ("remove", 3)
