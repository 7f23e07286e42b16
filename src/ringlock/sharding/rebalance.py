"""The rebalancer's decisions: a pure function from what the meta group records and what
shard leaders report to the next steps, so that the node (and the simulator) only carry
them out. It runs on the meta leader, over and over; every step is re-derived from the
current state, so a step that was lost (a crash of the mover, the source, the target or
the meta leader) is simply taken again, and a move towards a node that died meanwhile is
abandoned and planned afresh.

A move of one replica, as the Raft thesis (§4.2.1) and etcd do it, one change at a time
so that a majority of the current replicas is always needed and always there:

    add the target as a learner -> it catches up by snapshot and log -> promote it
    -> move the leadership off the replica that leaves, if it leads -> remove it

At most `max_moves` shards move at once (bytes on the wire, snapshot work on the nodes).
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass, field

from ringlock.sharding.meta import (
    DEAD,
    DRAINING,
    JOINING,
    MAX_META_REPLICAS,
    META_GROUP,
    UP,
    MetaStateMachine,
    encode_command,
)
from ringlock.sharding.placement import PlacementError, plan_placement

DEFAULT_MAX_MOVES = 2
"""Shards moving at once: K in the ring issue."""
CATCH_UP_SLACK = 64
"""A learner within this many entries of its leader's commit index may be promoted."""


@dataclass(frozen=True, slots=True)
class ShardView:
    """One shard as its leader sees it now (reported to the meta leader)."""

    shard: int
    leader: int
    voters: tuple[int, ...]
    learners: tuple[int, ...]
    conf_index: int
    committed: bool
    """The configuration at conf_index is committed: a next change may be proposed."""
    caught_up: frozenset[int] = frozenset()
    """Learners close enough to the leader's log to be promoted."""


@dataclass(frozen=True, slots=True)
class ProposeMeta:
    command: bytes
    why: str


@dataclass(frozen=True, slots=True)
class ShardChange:
    """Ask `leader` to change `shard`'s membership: add_learner, promote, remove, or
    transfer (its leadership to `node`). `conf_index` is the configuration the step was
    decided on: the leader refuses the step if its configuration has moved since."""

    shard: int
    leader: int
    change: str
    node: int
    conf_index: int


Action = ProposeMeta | ShardChange


@dataclass(slots=True)
class Plan:
    actions: list[Action] = field(default_factory=list)
    moving: int = 0


def plan_actions(meta: MetaStateMachine, views: Mapping[int, ShardView], *,
                 heard: Set[int], silent: Set[int],
                 max_moves: int = DEFAULT_MAX_MOVES) -> list[Action]:
    """The next steps. `heard`: nodes that reported recently; `silent`: nodes unheard for
    longer than dead_after (disjoint from `heard`)."""
    plan = Plan()
    _member_states(meta, heard, silent, plan)
    _record_configs(meta, views, plan)
    _continue_moves(meta, views, plan)
    _start_moves(meta, plan, max_moves)
    _meta_step(meta, views, plan)
    return plan.actions


def meta_voters_wanted(meta: MetaStateMachine, current: tuple[int, ...]) -> tuple[int, ...]:
    """The meta group's voters: an odd number (a fourth voter adds no fault tolerance),
    up to MAX_META_REPLICAS, on up nodes; current voters that are up keep their seat."""
    up = meta.placeable()
    size = min(MAX_META_REPLICAS, len(up))
    if size > 1 and size % 2 == 0:
        size -= 1
    # Never shrink below the live voters just to reach an odd size: with voters {1,2,3}
    # and node 3 dead, the wanted set is {1,2} (3 leaves), never {1}, which would need
    # the dead node to commit the removal of a live one.
    live_voters = [n for n in sorted(current) if n in up]
    size = max(size, min(len(live_voters), MAX_META_REPLICAS))
    keep = live_voters[:size]
    extra = [n for n in up if n not in keep][: size - len(keep)]
    return tuple(sorted(keep + extra))


def _meta_step(meta: MetaStateMachine, views: Mapping[int, ShardView], plan: Plan) -> None:
    """The meta group follows its members too, one change at a time: a seat on a node
    that drains, dies or is removed moves to an up node. Its leader carries the step out
    on itself (the view of META_GROUP is the meta leader's own)."""
    view = views.get(META_GROUP)
    if view is None or not view.committed:
        return
    target = meta_voters_wanted(meta, view.voters)
    if not target or (set(target) == set(view.voters) and not view.learners):
        return
    step = next_step(view, target)
    if step is not None:
        plan.actions.append(step)


def _member_states(meta: MetaStateMachine, heard: Set[int], silent: Set[int],
                   plan: Plan) -> None:
    for node, member in sorted(meta.members.items()):
        if member.state in (JOINING, DEAD) and node in heard:
            plan.actions.append(ProposeMeta(encode_command("set_state", node, UP),
                                            f"node {node} is {member.state} and was heard"))
        elif member.state == UP and node in silent:
            # Only an up node: a silent draining node stays draining. Its replicas move
            # away all the same, and dead -> up on its return would forget the drain.
            plan.actions.append(ProposeMeta(encode_command("set_state", node, DEAD),
                                            f"node {node} unheard for longer than dead_after"))


def _record_configs(meta: MetaStateMachine, views: Mapping[int, ShardView],
                    plan: Plan) -> None:
    for shard, view in sorted(views.items()):
        known = meta.configs.get(shard)
        if view.committed and (known is None or view.conf_index > known.conf_index):
            plan.actions.append(ProposeMeta(
                encode_command("shard_config", shard, list(view.voters), list(view.learners),
                               view.conf_index),
                f"shard {shard} committed configuration {view.conf_index}"))


def _continue_moves(meta: MetaStateMachine, views: Mapping[int, ShardView],
                    plan: Plan) -> None:
    placeable = set(meta.placeable())
    for shard, target in sorted(meta.targets.items()):
        plan.moving += 1
        if not set(target) <= placeable:
            plan.actions.append(ProposeMeta(encode_command("set_target", shard, None),
                                            f"shard {shard}: a target node left; replan"))
            continue
        view = views.get(shard)
        if view is None or not view.committed:
            continue  # no leader known, or its last change is still committing
        step = next_step(view, target)
        if step is None:
            if set(meta.holders(shard)) == set(target):  # done, and recorded
                plan.actions.append(ProposeMeta(encode_command("set_target", shard, None),
                                                f"shard {shard}: move done"))
            continue
        plan.actions.append(step)


def next_step(view: ShardView, target: tuple[int, ...]) -> ShardChange | None:
    """The one membership change that brings `view` closest to `target`, or None."""
    voters, learners, wanted = set(view.voters), set(view.learners), set(target)

    def change(kind: str, node: int) -> ShardChange:
        return ShardChange(view.shard, view.leader, kind, node, view.conf_index)

    for node in sorted(learners - wanted):
        return change("remove", node)  # an abandoned move's learner
    for node in sorted(learners & wanted):
        return change("promote", node) if node in view.caught_up else None
    missing = sorted(wanted - voters)
    if missing:
        return change("add_learner", missing[0])
    for node in sorted(voters - wanted):
        if node == view.leader:
            heirs = sorted(voters & wanted)
            return change("transfer", heirs[0]) if heirs else None
        return change("remove", node)
    return None


def _start_moves(meta: MetaStateMachine, plan: Plan, max_moves: int) -> None:
    room = max_moves - plan.moving
    placeable = meta.placeable()
    if room <= 0 or not placeable:
        return
    replicas = min(meta.replicas, len(placeable))
    effective = {s: list(meta.targets.get(s, meta.configs[s].voters if s in meta.configs
                                          else ())) for s in range(meta.shards)}
    try:
        desired = plan_placement(effective, meta.shards, placeable, replicas)
    except PlacementError:
        return
    for shard in sorted(desired, key=lambda s: _urgency(meta, effective[s], s)):
        if room <= 0:
            break
        if shard in meta.targets:
            continue
        if set(desired[shard]) == set(effective[shard]) and not _stray_learners(meta, shard):
            continue  # settled; a learner left by an abandoned move needs a target to go
        plan.actions.append(ProposeMeta(
            encode_command("set_target", shard, desired[shard]),
            f"shard {shard}: {sorted(effective[shard])} -> {desired[shard]}"))
        room -= 1


def _stray_learners(meta: MetaStateMachine, shard: int) -> bool:
    config = meta.configs.get(shard)
    return config is not None and bool(config.learners)


def _urgency(meta: MetaStateMachine, holders: list[int], shard: int) -> tuple[int, int]:
    """Shards short of live copies first (re-replication before balance), then by id."""
    live = sum(1 for n in holders
               if n in meta.members and meta.members[n].state not in (DEAD, DRAINING))
    return (live, shard)
