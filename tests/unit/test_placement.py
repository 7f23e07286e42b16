"""Placement: every shard on R distinct nodes, every node within one replica (and one
leadership) of the mean, and a new node costs about S*R/(N+1) moves, never a reshuffle."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringlock.sharding.placement import PlacementError, plan_leaders, plan_placement


def replica_counts(plan: dict[int, list[int]], nodes: list[int]) -> dict[int, int]:
    counts = dict.fromkeys(nodes, 0)
    for holders in plan.values():
        for node in holders:
            counts[node] += 1
    return counts


def moved(before: dict[int, list[int]], after: dict[int, list[int]]) -> int:
    return sum(len(set(after[s]) - set(before.get(s, ()))) for s in after)


def assert_balanced(plan: dict[int, list[int]], nodes: list[int], replicas: int) -> None:
    for holders in plan.values():
        assert len(set(holders)) == len(holders) == replicas
        assert set(holders) <= set(nodes)
    counts = replica_counts(plan, nodes)
    assert max(counts.values()) - min(counts.values()) <= 1, counts


@given(st.integers(1, 12), st.integers(1, 128), st.integers(1, 3), st.data())
@settings(max_examples=150, deadline=None)
def test_any_placement_is_balanced_and_adding_a_node_moves_only_its_share(
    nodes: int, shards: int, replicas: int, data: st.DataObject
) -> None:
    replicas = min(replicas, nodes)
    ids = list(range(1, nodes + 1))
    first = plan_placement({}, shards, ids, replicas)
    assert_balanced(first, ids, replicas)

    grown = [*ids, nodes + 1]
    second = plan_placement(first, shards, grown, replicas)
    assert_balanced(second, grown, replicas)
    new_share = replica_counts(second, grown)[nodes + 1]
    assert moved(first, second) == new_share  # only replicas that went to the new node
    assert new_share <= -(-shards * replicas // (nodes + 1))

    gone = data.draw(st.sampled_from(grown))
    survivors = [n for n in grown if n != gone]
    if len(survivors) >= replicas:
        third = plan_placement(second, shards, survivors, replicas)
        assert_balanced(third, survivors, replicas)
        assert all(gone not in h for h in third.values())
        # The lost replicas are re-created; a few need a short chain of moves (every
        # node with room already held that shard), never a reshuffle.
        lost = sum(1 for h in second.values() if gone in h)
        assert lost <= moved(second, third) <= 2 * lost + len(survivors)


def test_adding_a_fourth_node_to_64_shards_moves_a_quarter_of_the_replicas() -> None:
    first = plan_placement({}, 64, [1, 2, 3], 3)
    second = plan_placement(first, 64, [1, 2, 3, 4], 3)
    assert moved(first, second) == 48  # 64*3/4: never a reshuffle
    assert replica_counts(second, [1, 2, 3, 4]) == {1: 48, 2: 48, 3: 48, 4: 48}


def test_a_placement_that_is_already_balanced_does_not_move() -> None:
    first = plan_placement({}, 64, [1, 2, 3, 4, 5], 3)
    assert plan_placement(first, 64, [1, 2, 3, 4, 5], 3) == first


def test_more_replicas_than_nodes_is_refused() -> None:
    with pytest.raises(PlacementError, match="at least that many nodes"):
        plan_placement({}, 8, [1, 2], 3)


@given(st.integers(1, 10), st.integers(1, 128), st.integers(1, 3))
@settings(max_examples=100, deadline=None)
def test_leaders_are_replicas_and_within_one_of_the_mean(
    nodes: int, shards: int, replicas: int
) -> None:
    replicas = min(replicas, nodes)
    ids = list(range(1, nodes + 1))
    placement = plan_placement({}, shards, ids, replicas)
    everyone_on_node_1 = {s: 1 for s in range(shards) if 1 in placement[s]}
    leaders = plan_leaders(placement, everyone_on_node_1)
    assert all(leaders[s] in placement[s] for s in range(shards))
    counts = dict.fromkeys(ids, 0)
    for node in leaders.values():
        counts[node] += 1
    assert max(counts.values()) - min(counts.values()) <= 1, counts


def test_balanced_leaders_stay_where_they_are() -> None:
    placement = plan_placement({}, 64, [1, 2, 3], 3)
    leaders = plan_leaders(placement, {})
    assert plan_leaders(placement, leaders) == leaders
