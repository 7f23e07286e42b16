"""Where each shard's replicas live, and who leads it: balanced, and moved as little as
possible when nodes come and go. Pure functions of plain data (sans-I/O): the meta
group's leader calls them and proposes the result.

Balance. With S shards, R replicas each and N nodes, every node holds floor(S*R/N) or
ceil(S*R/N) replicas, and leads floor(S/N) or ceil(S/N) shards: each within one of the
mean, as the ring issue asks.

Few moves. A replica stays where it is unless its node is gone or holds more than its
share; only that surplus moves, onto the nodes below their share. Adding a node to N
therefore moves about S*R/(N+1) replicas, all onto the new node, never a reshuffle.

Stable. Shares depend only on the set of nodes, and every planned move goes from a node
above its share to one below it, so the rebalancer can plan again from any halfway
state (it does, every second) and carry on where it was, never moving a replica back.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence

from ringlock.invariant import invariant

Placement = dict[int, list[int]]
"""shard -> node ids of its replicas, in no particular order."""


class PlacementError(ValueError):
    """The request cannot be met (e.g. more replicas per shard than nodes)."""


def _shares(total: int, nodes: Sequence[int]) -> dict[int, int]:
    """Split `total` over `nodes` as evenly as possible; the extra units go to the lowest
    ids. Fixed for a given set of nodes, so that replanning from any intermediate state
    of a rebalance aims at the same counts and never moves a replica back."""
    base, extra = divmod(total, len(nodes))
    return {n: base + (1 if i < extra else 0) for i, n in enumerate(sorted(nodes))}


def _counts(placement: Mapping[int, Iterable[int]]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for holders in placement.values():
        for node in holders:
            counts[node] = counts.get(node, 0) + 1
    return counts


def plan_placement(current: Mapping[int, Sequence[int]], shards: int, nodes: Iterable[int],
                   replicas: int) -> Placement:
    """The new placement of `shards` shards over `nodes` (the nodes that may hold
    replicas: up and not draining), starting from `current`.

    Greedy and monotone: a shard short of copies gets one on the least loaded node that
    lacks it; then, while some node holds more than its share, one of its replicas goes
    to a node below its share (one exists that lacks the shard, since it holds fewer).
    Every move lowers the imbalance, so planning again halfway through a rebalance
    continues it and never undoes it."""
    live = sorted(set(nodes))
    if not live:
        raise PlacementError("no node may hold replicas")
    if not 1 <= replicas <= len(live):
        raise PlacementError(f"{replicas} replicas per shard need at least that many nodes "
                             f"(have {len(live)})")
    alive = set(live)
    plan: Placement = {s: sorted(set(current.get(s, ())) & alive) for s in range(shards)}
    counts = {n: 0 for n in live} | _counts(plan)
    for holders in plan.values():  # a shard with too many copies sheds the busiest
        while len(holders) > replicas:
            busiest = max(holders, key=lambda n: (counts[n], n))
            holders.remove(busiest)
            counts[busiest] -= 1
    for shard in sorted(plan, key=lambda s: (len(plan[s]), s)):
        holders = plan[shard]
        while len(holders) < replicas:
            node = min((n for n in live if n not in holders), key=lambda n: (counts[n], n))
            holders.append(node)
            counts[node] += 1
    share = _shares(shards * replicas, live)
    for _ in range(shards * replicas + 1):
        over = [n for n in live if counts[n] > share[n]]
        if not over:
            break
        giver = max(over, key=lambda n: (counts[n] - share[n], -n))
        taker = min((n for n in live if counts[n] < share[n]),
                    key=lambda n: (counts[n] - share[n], n))
        shard = min(s for s, h in plan.items() if giver in h and taker not in h)
        plan[shard].remove(giver)
        plan[shard].append(taker)
        counts[giver] -= 1
        counts[taker] += 1
    for holders in plan.values():
        holders.sort()
    _check(plan, shards, replicas, live)
    return plan


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
    share = _shares(len(placement), nodes)
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
