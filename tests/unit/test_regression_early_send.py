"""Regression: the leader's "send APPENDs before fsync" exception (RAFT.md, Ready docstring,
sim/node.py `leader_sends_before_sync`) is applied even when the same Ready carries the
hard state of a brand-new term. A lone voter wins its election inside one tick, without
sending a single vote request, so nothing forced its (term, vote) to disk before its
first APPEND leaves. If it crashes before the fsync, it restarts in the old term, wins
the same term again and appends a different entry at the same (index, term): two
leaders of one term (the same node id, two incarnations), log matching broken on the
learner, and state machine safety broken once both entries commit.
"""

from __future__ import annotations

from ringlock.raft import Configuration, Raft, Role
from tests.unit.raft_network import MT, Network, config


def test_lone_voter_early_appends_before_term_is_durable() -> None:
    conf = Configuration(frozenset({1}), frozenset({2}))
    net = Network([Raft(config(1), bootstrap=conf), Raft(config(2), bootstrap=conf)], conf)
    leader = net.nodes[1]

    # Incarnation 1: lone voter campaigns and wins at once; a client write arrives
    # before the node's event loop takes the Ready.
    leader.campaign()
    assert leader.role == Role.LEADER and leader.term == 1
    index, term = leader.propose(b"X")
    rd = leader.ready()
    assert rd.hard_state is not None and rd.hard_state.term == 1  # not yet durable
    # The exception of thesis §10.2.1 must not apply: the term is not durable yet.
    assert not rd.appends_may_precede_persist
    for m in rd.messages:
        if m.type == MT.APPEND and rd.appends_may_precede_persist:
            net.send(m)
    assert not net.inbox[2]

    # Crash before the fsync: nothing of rd reached the disk, nothing left the node.
    leader = net.restart(1)
    assert leader.term == 0

    # Incarnation 2: the same term again, but nobody saw incarnation 1's entry.
    leader.campaign()
    assert leader.role == Role.LEADER and leader.term == 1
    index2, term2 = leader.propose(b"Y")
    assert (index2, term2) == (index, term)
    net.deliver_all()
    net.tick_all(2)

    learner, leader = net.nodes[2], net.nodes[1]
    assert leader.log.commit_index >= index and learner.log.commit_index >= index
    applied_by_leader = {e.index: e.data for e in net.applied[1]}
    applied_by_learner = {e.index: e.data for e in net.applied[2]}
    # State machine safety: every node applies the same command at an index.
    assert applied_by_leader[index] == applied_by_learner[index] == b"Y"


def test_early_appends_allowed_once_term_and_vote_are_durable() -> None:
    conf = Configuration(frozenset({1}), frozenset({2}))
    net = Network([Raft(config(1), bootstrap=conf), Raft(config(2), bootstrap=conf)], conf)
    leader = net.nodes[1]
    leader.campaign()
    net.deliver_all()
    leader.propose(b"Z")
    rd = leader.ready()
    assert rd.hard_state is None or rd.hard_state.term == leader.term
    assert rd.appends_may_precede_persist
    assert any(m.type == MT.APPEND for m in rd.messages)
    leader.advance(rd)
