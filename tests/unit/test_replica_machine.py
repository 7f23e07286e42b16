"""A replica gives back what its state machine shares with the node's other shards (the
watch history's budget) when a leader's snapshot replaces that machine."""

from __future__ import annotations

import functools

from ringlock.raft.config import RaftConfig
from ringlock.raft.messages import Configuration, Ready, Snapshot, SnapshotMeta
from ringlock.server.replica import ShardReplica
from ringlock.statemachine.history import HistoryBudget
from ringlock.statemachine.kv import ShardStateMachine, encode


def test_a_machine_replaced_by_a_snapshot_gives_its_history_back() -> None:
    budget = HistoryBudget()
    replica: ShardReplica[ShardStateMachine] = ShardReplica(
        RaftConfig(node_id=1, group_id=7), [1], hard_state=None, snapshot=None, entries=[],
        address_of=lambda node: None,
        restore=functools.partial(ShardStateMachine.restore, history_budget=budget),
        empty=functools.partial(ShardStateMachine, budget))
    replaced = replica.sm
    for index in range(1, 4):
        replaced.apply(index, encode("put", 0, 0, b"k%d" % index, b"x" * 100, 0, False))
    assert budget.events == 3

    leaders = ShardStateMachine()
    leaders.apply(1, encode("put", 0, 0, b"other", b"y", 0, False))
    meta = SnapshotMeta(10, 2, Configuration(frozenset({1})))
    replica.apply(Ready(snapshot=Snapshot(meta, leaders.snapshot())))

    assert replica.sm is not replaced and replaced.history.released
    assert budget.events == 0 and budget.bytes == 0
    assert replica.sm.history.budget is budget and replica.sm.get(b"other") is not None
