"""Rebalancer bugs the placement simulator found (seed 154 of `python -m
ringlock.sim.placement`), pinned as pure-function tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack

from ringlock.sharding.meta import DRAINING, MetaStateMachine, encode_command
from ringlock.sharding.rebalance import ProposeMeta, ShardView, next_step, plan_actions

PEERS = {n: f"10.0.0.{n}:7000" for n in (1, 2, 3, 4)}


def _meta() -> MetaStateMachine:
    meta = MetaStateMachine.founding(4, 3, PEERS)
    meta.apply(2, encode_command("set_state", 4, DRAINING))
    assert meta.members[4].state == DRAINING
    return meta


def _proposed(actions: Sequence[object]) -> list[list[Any]]:
    return [msgpack.unpackb(a.command) for a in actions if isinstance(a, ProposeMeta)]


def test_a_silent_draining_node_stays_draining() -> None:
    """Marking it dead forgot the drain: dead -> up when it came back, and it was given
    replicas again."""
    meta = _meta()
    proposed = _proposed(plan_actions(meta, {}, heard={1, 2, 3}, silent={4}))
    assert ["set_state", 4, "dead"] not in proposed
    proposed = _proposed(plan_actions(meta, {}, heard={1, 2, 4}, silent={3}))
    assert ["set_state", 3, "dead"] in proposed


def test_an_abandoned_moves_learner_is_removed() -> None:
    """A move towards node 4 added it as a learner, then 4 was drained: the target was
    dropped, and with the voters already where they belong no new target was set, so the
    learner stayed for ever (and the drain never finished)."""
    meta = _meta()
    voters = tuple(meta.configs[0].voters)
    assert 4 not in voters
    meta.apply(3, encode_command("shard_config", 0, list(voters), [4], 7))
    assert not meta.targets
    view = ShardView(0, voters[0], voters, (4,), 7, True)
    proposed = _proposed(plan_actions(meta, {0: view}, heard={1, 2, 3, 4}, silent=set(),
                                      max_moves=4))
    targets = [p for p in proposed if p[0] == "set_target" and p[1] == 0]
    assert targets, proposed
    meta.apply(4, encode_command(*targets[0]))
    step = next_step(view, meta.targets[0])
    assert step is not None and (step.change, step.node) == ("remove", 4)
