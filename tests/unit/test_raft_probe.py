"""A follower whose log diverged over a long tail is brought back in a few round trips:
the rejection names the follower's last entry that could match and its term, and the
leader skips whole terms (etcd's findConflictByTerm), instead of one entry per trip."""

from __future__ import annotations

from tests.unit.raft_network import MT, Network, new_raft

TAIL = 200


def test_diverged_tail_is_skipped_a_term_at_a_time() -> None:
    deposed = new_raft(1, log_terms=[1] + [2] * TAIL, term=3)
    net = Network([
        deposed,
        new_raft(2, log_terms=[1] + [3] * TAIL, term=3),
        new_raft(3, log_terms=[1] + [3] * TAIL, term=3),
    ])
    leader = net.elect(2)
    net.deliver_all()
    rejections = net.sent(MT.APPEND_RESP, frm=1)
    assert sum(1 for m in rejections if m.reject) <= 3
    assert deposed.log.last_index() == leader.log.last_index()
    assert all(
        deposed.log.term_at(i) == leader.log.term_at(i)
        for i in range(1, leader.log.last_index() + 1)
    )


def test_find_conflict_by_term_stops_at_the_snapshot() -> None:
    raft = new_raft(1, log_terms=[5, 5, 5])
    assert raft.log.find_conflict_by_term(3, 4) == 0
    assert raft.log.find_conflict_by_term(3, 5) == 3
