"""Regression: a ReadIndex round is sent once and never retried. If its heartbeats (or their
answers) are lost, the batch waits for ever, although the leader keeps a quorum and
keeps heartbeating: periodic heartbeats carry context 0 (`_tick_leader` ->
`_broadcast_heartbeat(0)`), so their answers release nothing. etcd's periodic
heartbeat carries the last pending read context for exactly this reason. The read only
completes if another read happens to come by, or fails when the leader steps down.
"""

from __future__ import annotations

from ringlock.raft import ReadState, Role
from tests.unit.raft_network import ELECTION_TICK, MT, Network


def test_read_round_is_retried_after_lost_heartbeats() -> None:
    net = Network.of((1, 2, 3))
    leader = net.elect(1)
    commit = leader.log.commit_index

    # Lose the one round of read heartbeats (a short burst of loss on both links).
    net.drop_rules.append(lambda m: m.type == MT.HEARTBEAT and m.context != 0)
    leader.read_index(7)
    net.deliver_all()
    assert net.lost, "the read round was lost"
    net.drop_rules.clear()

    # The network is healthy again for many heartbeat intervals; the leader keeps its
    # quorum the whole time.
    for _ in range(5 * ELECTION_TICK):
        net.tick_all()
    assert leader.role == Role.LEADER
    assert net.read_states[1] == [ReadState(commit, 7)], (
        f"read still pending after {5 * ELECTION_TICK} healthy heartbeat rounds"
    )
