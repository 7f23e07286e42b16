"""Membership changes and leadership transfer.

References are to Ongaro's thesis "Consensus: Bridging Theory and Practice":
§4.1 (one server at a time), §4.2.1 (catching up new servers: learners, "non-voting
members"), §4.2.2 (removing the current leader), §4.2.3 (disruptive servers), §3.10
(leadership transfer), and to §6 of the Raft paper ("Cluster membership changes").
"""

from __future__ import annotations

import pytest

from ringlock.errors import (
    ConfChangeInProgress,
    NotLeaderError,
    ProposalDropped,
    TransferInProgress,
)
from ringlock.raft import Configuration, Entry, EntryKind, Message, Raft, Role
from tests.unit.raft_network import ELECTION_TICK, MT, Network, config, of_type, terms_of


def _with_learner(node_id: int = 4) -> tuple[Network, Raft, Raft]:
    """A 3-voter group led by node 1 with some history, plus a new node added as learner
    and caught up."""
    net = Network.of((1, 2, 3))
    leader = net.elect(1)
    net.propose(1, b"before")
    learner = Raft(config(node_id))
    net.add(learner)
    leader.propose_conf_change("add_learner", node_id)
    net.deliver_all()
    net.tick_all(1)
    return net, leader, learner


# --------------------------------------------------------------------------- learners


def test_added_learner_receives_the_log() -> None:
    """Thesis §4.2.1: a new server joins as a non-voting member; the leader replicates
    the whole log to it (the configuration entry included) and tells it the commit."""
    net, leader, learner = _with_learner()
    assert leader.configuration == Configuration(frozenset({1, 2, 3}), frozenset({4}))
    assert learner.configuration == leader.configuration
    assert learner.log.entries == leader.log.entries
    assert learner.log.commit_index == leader.log.commit_index
    assert [e.data for e in net.applied[4]][:2] == [b"", b"before"]


def test_learner_is_not_counted_for_commit() -> None:
    """Thesis §4.2.1: non-voting members "are not considered for majorities": an entry
    stored by the leader and the learner only is not committed."""
    net, leader, learner = _with_learner()
    net.cut(1, 2)
    net.cut(1, 3)
    index = net.propose(1, b"x")
    assert leader.progress[4].match_index == index
    assert learner.log.last_index() == index
    assert leader.log.commit_index < index

    net.recover()
    net.tick_all(1)
    assert leader.log.commit_index == index


def test_learner_never_campaigns_and_is_not_asked_for_votes() -> None:
    """Thesis §4.2.1: a learner has no vote: it never starts an election, and candidates
    send it no vote requests, even when the leader is gone."""
    net, leader, learner = _with_learner()
    net.isolate(1)
    net.tick_all(6 * ELECTION_TICK)
    new = net.leader()
    assert new is not None and new.id in (2, 3) and new.term > leader.term
    assert not net.sent(MT.PRE_VOTE, MT.VOTE, frm=4)
    assert not net.sent(MT.PRE_VOTE, MT.VOTE, to=4)
    assert learner.role == Role.FOLLOWER and learner.leader == new.id


def test_learner_vote_is_not_counted() -> None:
    """Thesis §4.2.1: non-voting members are not part of any majority, so a candidate
    does not count a vote granted by a learner."""
    raft = Raft(
        config(1, pre_vote=False),
        bootstrap=Configuration(frozenset({1, 2, 3}), frozenset({4})),
    )
    raft.campaign()
    raft.step(Message(MT.VOTE_RESP, to=1, frm=4, term=1))
    assert (raft.role, raft.votes) == (Role.CANDIDATE, {1: True, 4: True})
    raft.step(Message(MT.VOTE_RESP, to=1, frm=2, term=1))
    assert raft.role == Role.LEADER


def test_configuration_takes_effect_when_appended_and_reverts_when_truncated() -> None:
    """Raft paper §6 / thesis §4.1: "a server always uses the latest configuration in its
    log, regardless of whether the entry is committed"; if that entry is removed by a
    conflicting append, the server falls back to the configuration before it."""
    raft = Raft(config(3), bootstrap=Configuration(frozenset({1, 2, 3})))
    grown = Configuration(frozenset({1, 2, 3}), frozenset({4}))
    conf_entry = Entry(2, 1, grown.encode(), EntryKind.CONF)
    raft.step(Message(MT.APPEND, to=3, frm=1, term=1, entries=(Entry(1, 1), conf_entry)))
    assert raft.configuration == grown
    assert raft.log.commit_index == 0

    raft.step(Message(MT.APPEND, to=3, frm=2, term=2, index=1, log_term=1,
                      entries=(Entry(2, 2),)))
    assert terms_of(raft) == [1, 2]
    assert raft.configuration == Configuration(frozenset({1, 2, 3}))


def test_promoted_learner_counts_for_commit() -> None:
    """Thesis §4.1-4.2.1: once caught up, the learner is promoted to voter (one server
    changes at a time); with 4 voters a majority is 3, and the new voter is one of them."""
    net, leader, learner = _with_learner()
    leader.propose_conf_change("promote", 4)
    net.deliver_all()
    assert leader.configuration == Configuration(frozenset({1, 2, 3, 4}))
    assert learner.configuration == leader.configuration

    net.cut(1, 2)
    index = net.propose(1, b"needs node 4")
    assert leader.log.commit_index == index  # 1, 3 and 4 form the majority

    net.cut(1, 3)
    index = net.propose(1, b"1 and 4 are not enough")
    assert leader.log.commit_index < index


def test_removed_follower_leaves_the_quorum_and_cannot_disrupt() -> None:
    """Thesis §4.1: after removing a voter the majority is taken over the new
    configuration; §4.2.3: the removed server, which may never learn of its removal,
    cannot disrupt the cluster (pre-vote and check-quorum keep its term unchanged)."""
    net = Network.of((1, 2, 3))
    leader = net.elect(1)
    leader.propose_conf_change("remove", 3)
    net.deliver_all()
    assert leader.configuration == Configuration(frozenset({1, 2}))
    assert 3 not in leader.progress
    assert leader.log.commit_index == leader.conf_index

    net.tick_all(6 * ELECTION_TICK)
    assert (leader.role, leader.term) == (Role.LEADER, 1)
    assert net.nodes[2].term == 1

    net.cut(1, 2)
    index = net.propose(1, b"2 of 2 needed")
    assert leader.log.commit_index < index


def test_removed_leader_steps_down_once_its_removal_commits() -> None:
    """Thesis §4.2.2: a leader removing itself manages the cluster until the change is
    committed (without counting itself), then steps down; here it hands leadership to the
    most up-to-date remaining voter, and never campaigns again."""
    net = Network.of((1, 2, 3))
    leader = net.elect(1)
    index, _ = leader.propose_conf_change("remove", 1)
    assert leader.configuration == Configuration(frozenset({2, 3}))
    assert (leader.role, leader.log.commit_index) == (Role.LEADER, index - 1)

    net.deliver_all()
    assert net.storage[2].entries[-1].index >= index
    assert leader.role == Role.FOLLOWER
    assert [m.to for m in net.sent(MT.TIMEOUT_NOW, frm=1)] == [2]
    assert (net.nodes[2].role, net.nodes[2].term) == (Role.LEADER, 2)

    since = len(net.trace)
    net.tick_all(6 * ELECTION_TICK)
    assert not of_type(net.trace[since:], MT.PRE_VOTE, MT.VOTE)
    assert leader.role == Role.FOLLOWER
    assert net.leader() is net.nodes[2]


def test_conf_change_refused_while_another_is_pending() -> None:
    """Thesis §4.1: one membership change at a time; a leader accepts the next one only
    when the previous one is committed (ConfChangeInProgress meanwhile)."""
    net = Network.of((1, 2, 3))
    leader = net.elect(1)
    net.add(Raft(config(4)))
    net.add(Raft(config(5)))
    leader.propose_conf_change("add_learner", 4)
    with pytest.raises(ConfChangeInProgress):
        leader.propose_conf_change("add_learner", 5)
    net.deliver_all()
    leader.propose_conf_change("add_learner", 5)
    assert leader.configuration.learners == {4, 5}


def test_conf_change_refused_before_leader_commits_entry_of_its_term() -> None:
    """Thesis §4.1 with its 2015 erratum (raft-dev, "bug in single-server membership
    changes"): a new leader must commit an entry of its own term before it may append a
    configuration change."""
    net = Network.of((1, 2, 3))
    net.drop_rules.append(lambda m: m.type == MT.APPEND)
    leader = net.elect(1)
    assert leader.log.commit_index == 0
    with pytest.raises(ConfChangeInProgress):
        leader.propose_conf_change("remove", 3)
    net.drop_rules.clear()
    net.tick_all(1)
    leader.propose_conf_change("remove", 3)


@pytest.mark.parametrize(
    ("change", "node"),
    [("add_learner", 2), ("promote", 2), ("promote", 9), ("remove", 9), ("demote", 2)],
)
def test_invalid_conf_change_is_dropped(change: str, node: int) -> None:
    """Only the three single-step changes on fitting nodes are accepted; the rest are
    refused with ProposalDropped and nothing is appended."""
    net = Network.of((1, 2, 3))
    leader = net.elect(1)
    last = leader.log.last_index()
    with pytest.raises(ProposalDropped):
        leader.propose_conf_change(change, node)
    assert leader.log.last_index() == last


def test_last_voter_cannot_be_removed() -> None:
    """Thesis §4.1: a configuration must keep at least one voter."""
    net = Network.of((1,))
    leader = net.elect(1)
    with pytest.raises(ProposalDropped):
        leader.propose_conf_change("remove", 1)


# ------------------------------------------------------------- leadership transfer


def test_transfer_sends_timeout_now_only_after_target_catches_up() -> None:
    """Thesis §3.10: the leader first brings the target's log up to date, then sends it
    TimeoutNow; the target starts an election at once (without pre-vote, and the others
    grant it despite a live leader) and wins the next term."""
    net = Network.of((1, 2, 3))
    leader = net.elect(1)
    net.cut(1, 3)
    for n in range(3):
        net.propose(1, f"3 misses {n}".encode())
    leader.transfer_leadership(3)
    net.deliver_all()
    assert not net.sent(MT.TIMEOUT_NOW)
    assert leader.role == Role.LEADER

    last = leader.log.last_index()
    net.recover()
    net.tick(1)
    net.deliver_all()
    (timeout_now,) = net.sent(MT.TIMEOUT_NOW)
    position = net.trace.index(timeout_now)
    caught_up = [
        m for m in net.trace[:position]
        if m.type == MT.APPEND_RESP and m.frm == 3 and not m.reject and m.index == last
    ]
    assert caught_up, "TIMEOUT_NOW went out before node 3 had the whole log"
    assert (net.nodes[3].role, net.nodes[3].term) == (Role.LEADER, 2)
    assert (leader.role, leader.leader) == (Role.FOLLOWER, 3)
    assert all(m.transfer for m in net.sent(MT.VOTE, frm=3))


def test_proposals_refused_while_transfer_in_progress() -> None:
    """Thesis §3.10: during a transfer the old leader stops accepting client requests
    (TransferInProgress); afterwards clients are pointed at the new leader."""
    net = Network.of((1, 2, 3))
    leader = net.elect(1)
    net.cut(1, 3)
    net.propose(1, b"3 misses this")
    leader.transfer_leadership(3)
    with pytest.raises(TransferInProgress):
        leader.propose(b"refused")
    with pytest.raises(TransferInProgress):
        leader.propose_conf_change("remove", 2)
    assert all(e.data != b"refused" for e in leader.log.entries)

    net.recover()
    net.tick(1)
    net.deliver_all()
    with pytest.raises(NotLeaderError) as refused:
        leader.propose(b"too late")
    assert refused.value.leader_hint == 3
    net.propose(3, b"accepted")
    assert net.nodes[3].log.commit_index == net.nodes[3].log.last_index()


def test_transfer_to_up_to_date_follower_is_immediate() -> None:
    """Thesis §3.10: when the target's log already matches, TimeoutNow goes out at once."""
    net = Network.of((1, 2, 3))
    leader = net.elect(1)
    leader.transfer_leadership(2)
    assert [m.to for m in of_type(leader.ready().messages, MT.TIMEOUT_NOW)] == [2]


def test_transfer_abandoned_after_election_timeout() -> None:
    """Thesis §3.10: "if the transfer does not complete within an election timeout, the
    prior leader aborts the transfer and resumes accepting client requests"."""
    net = Network.of((1, 2, 3))
    leader = net.elect(1)
    net.cut(1, 3)
    net.propose(1, b"3 misses this")
    leader.transfer_leadership(3)
    for _ in range(ELECTION_TICK):
        net.tick(1)
        net.deliver_all()
    assert leader.role == Role.LEADER
    index = net.propose(1, b"accepted again")
    assert leader.log.commit_index == index
    assert terms_of(net.nodes[2]) == terms_of(leader)
