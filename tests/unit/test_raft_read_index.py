"""Linearizable reads with ReadIndex.

References are to §8 of the Raft paper ("Client interaction": a leader must check
whether it has been deposed before answering a read-only request, by exchanging
heartbeats with a majority, and must first commit an entry of its term) and to §6.4
of Ongaro's thesis ("Processing read-only queries more efficiently").
"""

from __future__ import annotations

import pytest

from ringlock.errors import NotLeaderError
from ringlock.raft import ReadState, Role
from tests.unit.raft_network import ELECTION_TICK, MT, Network, of_type


def test_read_released_only_after_quorum_answers_heartbeat() -> None:
    """Thesis §6.4, steps 1-3: the leader records its commit index as the read index,
    sends a round of heartbeats, and releases the read only once a majority (itself and
    one follower of three) acknowledged that round."""
    net = Network.of((1, 2, 3))
    leader = net.elect(1)
    commit = leader.log.commit_index
    leader.read_index(7)
    rd = leader.ready()
    assert rd.read_states == []
    heartbeats = of_type(rd.messages, MT.HEARTBEAT)
    assert sorted(m.to for m in heartbeats) == [2, 3]
    assert len({m.context for m in heartbeats}) == 1 and heartbeats[0].context != 0
    net.handle(1, rd)
    net.inbox[3].clear()  # node 3's copy is lost

    net.step(net.inbox[2].popleft())
    net.process(2)
    assert net.read_states[1] == []
    (ack,) = net.inbox[1]
    assert (ack.type, ack.context) == (MT.HEARTBEAT_RESP, heartbeats[0].context)
    net.deliver_all()
    assert net.read_states[1] == [ReadState(commit, 7)]


@pytest.mark.parametrize("check_quorum", [True, False])
def test_partitioned_leader_never_releases_read(check_quorum: bool) -> None:
    """§8: a leader cut off from the majority may already be deposed, so it must not
    answer a read. With check-quorum it steps down after an election timeout and fails
    the read (dropped_reads); without, the read simply waits."""
    net = Network.of((1, 2, 3), check_quorum=check_quorum)
    leader = net.elect(1)
    net.isolate(1)
    leader.read_index(8)
    for _ in range(3 * ELECTION_TICK):
        net.tick(1)
        net.deliver_all()
    assert net.read_states[1] == []
    if check_quorum:
        assert leader.role == Role.FOLLOWER
        assert net.dropped_reads[1] == [8]
    else:
        assert leader.role == Role.LEADER
        assert net.dropped_reads[1] == []


def test_read_waits_until_leader_commits_entry_of_its_term() -> None:
    """§8: "a leader must have the latest information on which entries are committed ...
    at the start of its term it may not know which those are", so it first commits an
    entry of its own term (thesis §6.4, step 1); until then reads wait."""
    net = Network.of((1, 2, 3))
    net.drop_rules.append(lambda m: m.type == MT.APPEND)
    leader = net.elect(1)
    assert leader.log.commit_index == 0
    leader.read_index(9)
    for _ in range(3):
        net.tick(1)
        net.deliver_all()
    assert net.read_states[1] == []
    assert not [m for m in net.sent(MT.HEARTBEAT) if m.context], "no read round yet"

    net.drop_rules.clear()
    net.tick(1)
    net.deliver_all()
    term_start = leader.log.commit_index
    assert leader.log.term_at(term_start) == leader.term
    assert net.read_states[1] == [ReadState(term_start, 9)]


def test_read_index_covers_every_committed_write() -> None:
    """Thesis §6.4: the read index is the commit index when the read arrives, so serving
    the read once that index is applied observes every write committed before it."""
    net = Network.of((1, 2, 3))
    leader = net.elect(1)
    index = net.propose(1, b"write")
    assert leader.log.commit_index == index
    leader.read_index(5)
    net.deliver_all()
    (state,) = net.read_states[1]
    assert state.request_id == 5 and state.index >= index


def test_reads_registered_together_share_one_heartbeat_round() -> None:
    """Thesis §6.4 (batching): reads gathered before the next Ready are confirmed by a
    single round of heartbeats."""
    net = Network.of((1, 2, 3))
    leader = net.elect(1)
    since = len(net.trace)
    for request_id in (11, 12, 13):
        leader.read_index(request_id)
    net.deliver_all()
    assert [s.request_id for s in net.read_states[1]] == [11, 12, 13]
    assert len(of_type(net.trace[since:], MT.HEARTBEAT)) == 2


def test_single_voter_read_released_at_once() -> None:
    """A lone voter is its own majority: once it committed an entry of its term a read
    needs no heartbeat round."""
    net = Network.of((1,))
    leader = net.elect(1)
    leader.read_index(3)
    net.deliver_all()
    assert net.read_states[1] == [ReadState(leader.log.commit_index, 3)]
    assert not net.sent(MT.HEARTBEAT)


def test_single_voter_read_before_first_commit_is_released() -> None:
    """Thesis §6.4: a read that arrives before the leader committed an entry of its term
    waits for that commit, then needs a quorum's confirmation. A lone voter is that
    quorum by itself, so once its term's first entry commits the read must be released.

    (A single-node group hits this on every start: campaign(), then a read before the
    first Ready is handled.)"""
    net = Network.of((1,))
    leader = net.nodes[1]
    leader.campaign()
    assert leader.role == Role.LEADER and leader.log.commit_index == 0
    leader.read_index(3)
    net.deliver_all()
    assert leader.log.commit_index == 1
    net.tick_all(3 * ELECTION_TICK)
    assert net.read_states[1] == [ReadState(1, 3)]


def test_read_pending_when_group_shrinks_to_leader_alone_is_released() -> None:
    """Thesis §6.4 with §4.1: a read batch waits for a quorum of the configuration in
    force; when the other voter is removed, the leader alone is that quorum and the
    pending read must be released rather than wait for an answer that cannot come."""
    net = Network.of((1, 2))
    leader = net.elect(1)
    net.cut(1, 2)
    leader.read_index(5)
    net.deliver_all()
    assert net.read_states[1] == []
    leader.propose_conf_change("remove", 2)
    net.deliver_all()
    assert leader.configuration.voters == {1}
    assert leader.log.commit_index == leader.conf_index
    net.recover()
    net.tick_all(3 * ELECTION_TICK)
    assert leader.role == Role.LEADER
    assert [s.request_id for s in net.read_states[1]] == [5]


def test_read_index_on_follower_raises_not_leader() -> None:
    """§8: clients send requests to the leader; a follower refuses and names it."""
    net = Network.of((1, 2, 3))
    net.elect(1)
    net.tick_all(1)
    with pytest.raises(NotLeaderError) as refused:
        net.nodes[2].read_index(1)
    assert refused.value.leader_hint == 1
