"""The routing map as nodes and clients hold it: read-only, versioned, checked on the way in.

The meta group produces it (`MetaStateMachine.to_map`); nodes pass it to each other and
to clients as plain msgpack data, so `ClusterMap.parse` treats it as untrusted input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ringlock.sharding.meta import META_GROUP, REMOVED


class MapError(ValueError):
    """A map from the wire is malformed."""


@dataclass(frozen=True, slots=True)
class ClusterMap:
    version: int = 0
    shards: int = 0
    replicas: int = 0
    nodes: dict[int, tuple[str, str]] = field(default_factory=dict)
    """node id -> (address, state)."""
    groups: dict[int, tuple[tuple[int, ...], tuple[int, ...], int]] = field(default_factory=dict)
    """group id -> (voters, learners, conf_index), as last committed and reported."""
    targets: dict[int, tuple[int, ...]] = field(default_factory=dict)

    @staticmethod
    def parse(raw: Any) -> ClusterMap:
        try:
            version, shards, replicas = raw["version"], raw["shards"], raw["replicas"]
            nodes = {int(n): (str(a), str(s)) for n, (a, s) in raw["nodes"].items()}
            groups = {int(g): (tuple(int(v) for v in voters), tuple(int(v) for v in learners),
                               int(ci))
                      for g, (voters, learners, ci) in raw["groups"].items()}
            targets = {int(g): tuple(int(n) for n in t)
                       for g, t in (raw.get("targets") or {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise MapError(f"malformed cluster map: {error!r}") from error
        if type(version) is not int or type(shards) is not int or type(replicas) is not int:
            raise MapError("cluster map version, shards and replicas must be integers")
        return ClusterMap(version, shards, replicas, nodes, groups, targets)

    def address(self, node: int) -> str | None:
        entry = self.nodes.get(node)
        return entry[0] if entry and entry[1] != REMOVED else None

    def state(self, node: int) -> str | None:
        entry = self.nodes.get(node)
        return entry[1] if entry else None

    def voters(self, group: int) -> tuple[int, ...]:
        entry = self.groups.get(group)
        return entry[0] if entry else ()

    def holders(self, group: int) -> tuple[int, ...]:
        entry = self.groups.get(group)
        return tuple(sorted(entry[0] + entry[1])) if entry else ()

    def conf_index(self, group: int) -> int:
        entry = self.groups.get(group)
        return entry[2] if entry else 0

    def groups_of(self, node: int) -> list[int]:
        return sorted(g for g, (v, lr, _) in self.groups.items() if node in v or node in lr)

    @property
    def meta_voters(self) -> tuple[int, ...]:
        return self.voters(META_GROUP)

    def peers(self) -> dict[int, str]:
        """Every member not removed, by id."""
        return {n: a for n, (a, s) in self.nodes.items() if s != REMOVED}

    def to_wire(self) -> dict[str, Any]:
        return {
            "version": self.version, "shards": self.shards, "replicas": self.replicas,
            "nodes": {str(n): [a, s] for n, (a, s) in sorted(self.nodes.items())},
            "groups": {str(g): [list(v), list(lr), ci]
                       for g, (v, lr, ci) in sorted(self.groups.items())},
            "targets": {str(g): list(t) for g, t in sorted(self.targets.items())},
        }
