"""The meta group's state machine: who is in the cluster, and where each shard lives.

The meta group is one more Raft group (id `META_GROUP`, on up to `MAX_META_REPLICAS`
nodes). Its state is small and changes rarely: the members (id, address, state), the
configuration each shard's own Raft group last committed (as its leader reported it),
and the placement the rebalancer is steering each shard towards. Every node and client
caches the resulting map and its `version`; an answer from a node whose map is newer
tells them to fetch it again.

A shard's own Raft log is the truth about its replicas; the meta group records what
shard leaders report, and only ever moves forward: a report with an older
configuration index than the one recorded is ignored, so reports that race each other
(an old leader's, a new leader's) cannot roll the map back.

Member states, as etcd and Redis Cluster operators expect them:

    joining -> up            the new node was heard from
    up -> draining           `ringlock node drain`: its replicas and leaderships move away
    draining -> up           the drain was cancelled
    up|draining -> dead      unheard of for longer than dead_after: its replicas are
                             re-created elsewhere
    dead -> up               it came back (its replicas may have moved meanwhile)
    draining|dead -> removed once it holds no replica: `ringlock node remove`

Deterministic and sans-I/O like every state machine here: no clock, no socket, no file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from ringlock.address import parse_address
from ringlock.errors import ConfigError, RinglockError
from ringlock.invariant import invariant
from ringlock.sharding.placement import plan_placement

META_GROUP = 1 << 16
"""The meta group's Raft group id: above every shard id (MAX_SHARDS is 4096)."""
MAX_META_REPLICAS = 5
"""A meta group of 5 survives 2 failures; more voters only slow its commits."""

JOINING, UP, DRAINING, DEAD, REMOVED = "joining", "up", "draining", "dead", "removed"
TRANSITIONS = {
    JOINING: {UP, REMOVED},
    UP: {DRAINING, DEAD},
    DRAINING: {UP, DEAD, REMOVED},
    DEAD: {UP, REMOVED},
    REMOVED: set(),
}
PLACEABLE = frozenset({UP})
"""States whose nodes may receive replicas."""


class MetaError(RinglockError):
    """A meta command cannot be applied (unknown node, forbidden transition...)."""


@dataclass(frozen=True, slots=True)
class Member:
    address: str
    state: str


@dataclass(frozen=True, slots=True)
class GroupConfig:
    """A Raft group's committed configuration as its leader reported it."""

    voters: tuple[int, ...]
    learners: tuple[int, ...] = ()
    conf_index: int = 0

    @property
    def members(self) -> tuple[int, ...]:
        return tuple(sorted(self.voters + self.learners))


def _is_node(value: Any) -> bool:
    """A node (or group) id: a positive int, not a bool."""
    return type(value) is int and 0 < value < 2**63


def _nodes(value: Any) -> bool:
    return type(value) is list and all(_is_node(node) for node in value)


def encode_command(op: str, *args: Any) -> bytes:
    return msgpack.packb([op, *args], use_bin_type=True)  # type: ignore[no-any-return]


class MetaStateMachine:
    def __init__(self, shards: int = 0, replicas: int = 0) -> None:
        self.shards = shards
        self.replicas = replicas
        self.applied_index = 0
        self.version = 0
        """Raised by every change a node or client routes by: members and configs."""
        self.members: dict[int, Member] = {}
        self.configs: dict[int, GroupConfig] = {}
        """shard id (and META_GROUP) -> its committed configuration."""
        self.targets: dict[int, tuple[int, ...]] = {}
        """shard -> the voters the rebalancer moves it towards; absent when settled."""

    # ------------------------------------------------------------------ founding

    @classmethod
    def founding(cls, shards: int, replicas: int, peers: dict[int, str]) -> MetaStateMachine:
        """The state every founding node computes alike from the same flags: all peers up,
        the shards placed evenly over them, the meta group on the lowest ids."""
        if not peers:
            raise ConfigError("a cluster is founded by at least one node")
        replicas = min(replicas, len(peers))
        machine = cls(shards, replicas)
        for node, address in sorted(peers.items()):
            parse_address(address)
            machine.members[node] = Member(address, UP)
        placement = plan_placement({}, shards, sorted(peers), replicas)
        for shard, holders in placement.items():
            machine.configs[shard] = GroupConfig(tuple(sorted(holders)), (), 1)
        seats = min(MAX_META_REPLICAS, len(peers))
        seats -= 1 if seats > 1 and seats % 2 == 0 else 0  # a 4th voter adds no tolerance
        machine.configs[META_GROUP] = GroupConfig(tuple(sorted(peers)[:seats]), (), 1)
        machine.applied_index = 1
        machine.version = 1
        return machine

    # ------------------------------------------------------------------ applying

    def apply(self, index: int, command: bytes) -> Any:
        """Apply one committed entry; returns the result, or a MetaError (not raised:
        a bad command is the proposer's problem, never the replica's)."""
        invariant(index > self.applied_index, f"meta apply of {index} after {self.applied_index}")
        self.applied_index = index
        if not command:
            return None
        try:
            op, *args = msgpack.unpackb(command)
            handler = self._handlers[op]
        except (ValueError, TypeError, KeyError, msgpack.ExtraData) as error:
            return MetaError(f"malformed meta command: {error!r}")
        try:
            return handler(self, *args)
        except TypeError as error:
            return MetaError(f"meta command {op!r} with bad arguments: {error}")
        except MetaError as error:
            return error

    def _add_node(self, node: int, address: str) -> int:
        if type(node) is not int or node <= 0 or node == META_GROUP:
            raise MetaError(f"node ids are positive integers, got {node!r}")
        if type(address) is not str:
            raise MetaError(f"bad address for node {node}: {address!r:.40} is not a string")
        try:
            parse_address(address)
        except ConfigError as error:
            raise MetaError(f"bad address for node {node}: {error}") from error
        known = self.members.get(node)
        if known is not None:
            if known.state == REMOVED:
                raise MetaError(f"node {node} was removed; a new node needs a new id")
            if known.address != address:
                raise MetaError(f"node {node} is already a member at {known.address}")
            return self.version  # a retried join
        for other, member in self.members.items():
            if member.address == address and member.state != REMOVED:
                raise MetaError(f"address {address} belongs to node {other}")
        self.members[node] = Member(address, JOINING)
        self.version += 1
        return self.version

    def _set_state(self, node: int, state: str) -> int:
        if not _is_node(node) or type(state) is not str:
            raise MetaError(f"set_state takes a node id and a state, got {node!r:.40}, "
                            f"{state!r:.40}")
        member = self.members.get(node)
        if member is None:
            raise MetaError(f"node {node} is not a member")
        if state == member.state:
            return self.version
        if state not in TRANSITIONS.get(member.state, set()):
            raise MetaError(f"node {node} cannot go from {member.state} to {state}")
        if state == REMOVED:
            holding = sorted(s for s, c in self.configs.items() if node in c.members)
            if holding:
                raise MetaError(f"node {node} still holds replicas of {len(holding)} groups "
                                f"(first: {holding[:5]}); drain it first")
        self.members[node] = Member(member.address, state)
        self.version += 1
        return self.version

    def _shard_config(self, group: int, voters: list[int], learners: list[int],
                      conf_index: int) -> bool:
        if type(group) is not int or (group != META_GROUP and not 0 <= group < self.shards):
            raise MetaError(f"no group {group!r:.40}")
        if (not _nodes(voters) or not _nodes(learners) or type(conf_index) is not int
                or conf_index < 0):
            raise MetaError(f"group {group}: a configuration is voters, learners (lists of "
                            f"node ids) and a conf_index, got {voters!r:.40}, "
                            f"{learners!r:.40}, {conf_index!r:.40}")
        known = self.configs.get(group)
        if known is not None and conf_index <= known.conf_index:
            return False  # an older (or the same) report: the map only moves forward
        if not voters or set(voters) & set(learners):
            raise MetaError(f"group {group}: bad configuration {voters} / {learners}")
        self.configs[group] = GroupConfig(tuple(sorted(voters)), tuple(sorted(learners)),
                                          conf_index)
        target = self.targets.get(group)
        if target is not None and set(target) == set(voters) and not learners:
            del self.targets[group]  # the move is done
        self.version += 1
        return True

    def _set_target(self, group: int, voters: list[int] | None) -> bool:
        if type(group) is not int or not 0 <= group < self.shards:
            raise MetaError(f"no shard {group!r:.40}")
        if voters is None:
            return self.targets.pop(group, None) is not None
        if not _nodes(voters):
            raise MetaError(f"shard {group}: a target is a list of node ids, got {voters!r:.40}")
        if len(set(voters)) != len(voters) or not voters:
            raise MetaError(f"shard {group}: target {voters} must be distinct nodes")
        for node in voters:
            member = self.members.get(node)
            if member is None or member.state not in PLACEABLE:
                raise MetaError(f"shard {group}: node {node} cannot take replicas")
        self.targets[group] = tuple(sorted(voters))
        return True

    _handlers: dict[str, Any] = {
        "add_node": _add_node,
        "set_state": _set_state,
        "shard_config": _shard_config,
        "set_target": _set_target,
    }

    # ------------------------------------------------------------------- reading

    def placeable(self) -> list[int]:
        return sorted(n for n, m in self.members.items() if m.state in PLACEABLE)

    def holders(self, group: int) -> tuple[int, ...]:
        config = self.configs.get(group)
        return config.members if config else ()

    def to_map(self) -> dict[str, Any]:
        """The routing map nodes and clients cache (plain msgpack-able data)."""
        return {
            "version": self.version,
            "shards": self.shards,
            "replicas": self.replicas,
            "nodes": {str(n): [m.address, m.state] for n, m in sorted(self.members.items())},
            "groups": {str(g): [list(c.voters), list(c.learners), c.conf_index]
                       for g, c in sorted(self.configs.items())},
            "targets": {str(g): list(t) for g, t in sorted(self.targets.items())},
        }

    # --------------------------------------------------------------- snapshots

    def close(self) -> None:
        """Nothing here is shared with other groups: nothing to give back."""

    def snapshot(self) -> bytes:
        return msgpack.packb([  # type: ignore[no-any-return]
            self.shards, self.replicas, self.applied_index, self.version,
            [[n, m.address, m.state] for n, m in sorted(self.members.items())],
            [[g, list(c.voters), list(c.learners), c.conf_index]
             for g, c in sorted(self.configs.items())],
            [[g, list(t)] for g, t in sorted(self.targets.items())],
        ], use_bin_type=True)

    @classmethod
    def restore(cls, data: bytes) -> MetaStateMachine:
        shards, replicas, applied, version, members, configs, targets = msgpack.unpackb(
            data, strict_map_key=False)
        machine = cls(shards, replicas)
        machine.applied_index = applied
        machine.version = version
        machine.members = {n: Member(a, s) for n, a, s in members}
        machine.configs = {g: GroupConfig(tuple(v), tuple(lr), i) for g, v, lr, i in configs}
        machine.targets = {g: tuple(t) for g, t in targets}
        return machine
