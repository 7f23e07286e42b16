"""Where each shard's replicas live, and who leads it: balanced, and moved as little as
possible when nodes come and go. Pure functions of plain data (sans-I/O): the meta
group's leader calls them and proposes the result.

Balance. With S shards, R replicas each and N nodes, every node holds floor(S*R/N) or
ceil(S*R/N) replicas, and leads floor(S/N) or ceil(S/N) shards: each within one of the
mean, as the ring issue asks.

Few moves. A replica stays where it is unless its node is gone or holds more than its
share; only that surplus moves, onto the nodes below their share. Adding a node to N
therefore moves about S*R/(N+1) replicas, all onto the new node, never a reshuffle.

When the greedy choice is stuck (every node with room already holds a replica of the
shard), a short chain of moves is found by breadth-first search: node A gives a replica
of some shard to B, which frees room on A... until a node with room is reached.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence

from ringlock.invariant import invariant

Placement = dict[int, list[int]]
"""shard -> node ids of its replicas, in no particular order."""


class PlacementError(ValueError):
    """The request cannot be met (e.g. more replicas per shard than nodes)."""


def _shares(total: int, nodes: Sequence[int], current: Mapping[int, int]) -> dict[int, int]:
    """Split `total` over `nodes` as evenly as possible; the extra units go to the nodes
    that hold the most now (fewest moves), ties by id."""
    base, extra = divmod(total, len(nodes))
    ranked = sorted(nodes, key=lambda n: (-current.get(n, 0), n))
    return {n: base + (1 if i < extra else 0) for i, n in enumerate(ranked)}


def _counts(placement: Mapping[int, Iterable[int]]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for holders in placement.values():
        for node in holders:
            counts[node] = counts.get(node, 0) + 1
    return counts


def plan_placement(current: Mapping[int, Sequence[int]], shards: int, nodes: Iterable[int],
                   replicas: int) -> Placement:
    """The new placement of `shards` shards over `nodes` (the nodes that may hold
    replicas: up and not draining), starting from `current`."""
    live = sorted(set(nodes))
    if not live:
        raise PlacementError("no node may hold replicas")
    if not 1 <= replicas <= len(live):
        raise PlacementError(f"{replicas} replicas per shard need at least that many nodes "
                             f"(have {len(live)})")
    alive = set(live)
    plan: Placement = {s: sorted(set(current.get(s, ())) & alive) for s in range(shards)}
    for holders in plan.values():  # a shard with too many copies keeps the first R
        del holders[replicas:]
    share = _shares(shards * replicas, live, _counts(plan))
    _shed_surplus(plan, share)
    _fill(plan, share, replicas, live)
    for holders in plan.values():
        holders.sort()
    _check(plan, shards, replicas, live)
    return plan


def _shed_surplus(plan: Placement, share: Mapping[int, int]) -> None:
    """Take replicas away from nodes above their share, from the shards that have the
    most copies first (they stay safest), so the freed slots can go elsewhere."""
    counts = _counts(plan)
    for node in sorted(counts):
        surplus = counts[node] - share[node]
        if surplus <= 0:
            continue
        held = sorted((s for s, h in plan.items() if node in h),
                      key=lambda s: (-len(plan[s]), s))
        for shard in held[:surplus]:
            plan[shard].remove(node)


def _fill(plan: Placement, share: Mapping[int, int], replicas: int,
          live: Sequence[int]) -> None:
    counts = {n: 0 for n in live} | _counts(plan)
    for shard in sorted(plan, key=lambda s: (len(plan[s]), s)):
        while len(plan[shard]) < replicas:
            room = [n for n in live if counts[n] < share[n] and n not in plan[shard]]
            if room:
                node = max(room, key=lambda n: (share[n] - counts[n], -n))
                plan[shard].append(node)
                counts[node] += 1
                continue
            _place_by_chain(plan, shard, share, counts, live)


def _place_by_chain(plan: Placement, shard: int, share: Mapping[int, int],
                    counts: dict[int, int], live: Sequence[int]) -> None:
    """Give `shard` a replica on some node A that lacks it and is full, and make room on
    A by moving one of A's other replicas along a chain ending at a node with room."""
    start = [n for n in live if n not in plan[shard]]
    parent: dict[int, tuple[int, int] | None] = {n: None for n in start}
    queue = deque(start)
    while queue:
        node = queue.popleft()
        if counts[node] < share[node] and node not in start:
            # Walk back: each step moves `moved` from `giver` to `node`.
            receiver = node
            step = parent[receiver]
            while step is not None:
                giver, moved = step
                plan[moved].remove(giver)
                plan[moved].append(receiver)
                receiver, step = giver, parent[giver]
            plan[shard].append(receiver)
            counts[node] += 1
            return
        for moved in sorted(s for s, h in plan.items() if node in h and s != shard):
            for other in live:
                if other not in parent and other not in plan[moved]:
                    parent[other] = (node, moved)
                    queue.append(other)
    raise PlacementError(f"no way to give shard {shard} another replica")


def _check(plan: Placement, shards: int, replicas: int, live: Sequence[int]) -> None:
    counts = {n: 0 for n in live} | _counts(plan)
    for shard, holders in plan.items():
        invariant(len(holders) == replicas and len(set(holders)) == replicas,
                  f"shard {shard} has replicas {holders}, wanted {replicas} distinct")
    invariant(max(counts.values()) - min(counts.values()) <= 1,
              f"replicas per node out of balance: {counts}")
    invariant(len(plan) == shards, "a shard was lost from the plan")


def plan_leaders(placement: Mapping[int, Sequence[int]],
                 current: Mapping[int, int]) -> dict[int, int]:
    """A leader per shard among its replicas, each node leading floor or ceil of the
    mean where the placement allows it (it does for balanced placements), keeping
    current leaders where it can."""
    nodes = sorted({n for holders in placement.values() for n in holders})
    share = _shares(len(placement), nodes, _counts({s: [n] for s, n in current.items()
                                                    if n in placement.get(s, ())}))
    leaders: dict[int, int] = {}
    counts = dict.fromkeys(nodes, 0)
    for shard, holders in sorted(placement.items()):
        keep = current.get(shard, 0)
        if keep in holders and counts[keep] < share[keep]:
            leaders[shard] = keep
            counts[keep] += 1
    for shard, holders in sorted(placement.items()):
        if shard in leaders:
            continue
        node = min(holders, key=lambda n: (counts[n] - share[n], n))
        leaders[shard] = node
        counts[node] += 1
    _even_leaders(placement, leaders, counts)
    return leaders


def _even_leaders(placement: Mapping[int, Sequence[int]], leaders: dict[int, int],
                  counts: dict[int, int]) -> None:
    """While some node leads two or more shards more than another, move one leadership
    from a most-loaded node to a least-loaded one along a chain (A's shard to B, B's
    shard to C...) found breadth-first. Bounded by the number of shards."""
    for _ in range(len(placement) * len(counts) + 1):
        high, low = max(counts.values()), min(counts.values())
        if high - low <= 1:
            return
        chain = None
        for start in sorted(n for n in counts if counts[n] == high):
            chain = _leader_chain(placement, leaders, counts, start, high - 2)
            if chain is not None:
                break
        if chain is None:
            return  # the placement allows no better spread
        start, receiver, parent = chain
        counts[receiver] += 1
        counts[start] -= 1
        step = parent[receiver]
        while step is not None:
            giver, shard = step
            leaders[shard] = receiver
            receiver, step = giver, parent[giver]


def _leader_chain(placement: Mapping[int, Sequence[int]], leaders: Mapping[int, int],
                  counts: Mapping[int, int], start: int, ceiling: int
                  ) -> tuple[int, int, dict[int, tuple[int, int] | None]] | None:
    parent: dict[int, tuple[int, int] | None] = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for shard in sorted(s for s, n in leaders.items() if n == node):
            for other in placement[shard]:
                if other in parent:
                    continue
                parent[other] = (node, shard)
                if counts[other] <= ceiling:
                    return start, other, parent
                queue.append(other)
    return None
