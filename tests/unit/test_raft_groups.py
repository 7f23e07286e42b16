"""Many Raft groups share one process (one per shard): each carries its group id on
every message, and an idle follower costs only its tick."""

from __future__ import annotations

from ringlock.raft import Configuration, Raft, RaftConfig, Role
from tests.unit.raft_network import Network


def test_every_message_carries_the_group_id() -> None:
    raft = Raft(RaftConfig(node_id=1, group_id=42, seed=1),
                bootstrap=Configuration(frozenset({1, 2, 3})))
    for _ in range(40):
        raft.tick()
    ready = raft.ready()
    assert ready.messages, "an election should have started"
    assert {message.group for message in ready.messages} == {42}


def test_an_idle_follower_has_no_work_after_a_tick() -> None:
    network = Network.of((1, 2, 3))
    leader = network.elect(1)
    network.deliver_all()
    follower = network.nodes[2]
    assert leader.role == Role.LEADER and follower.role == Role.FOLLOWER
    for _ in range(5):  # below the election timeout
        follower.tick()
        assert not follower.has_ready()


def test_a_thousand_idle_groups_tick_without_output() -> None:
    followers = [
        Raft(RaftConfig(node_id=2, group_id=group, seed=group),
             bootstrap=Configuration(frozenset({1, 2, 3})))
        for group in range(1000)
    ]
    for _ in range(5):
        for raft in followers:
            raft.tick()
    assert not any(raft.has_ready() for raft in followers)
