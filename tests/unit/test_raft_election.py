"""Leader election, checked rule by rule against the Raft paper.

References are to "In Search of an Understandable Consensus Algorithm (Extended
Version)", Ongaro & Ousterhout (Figure 2, "Rules for Servers" and "RequestVote
RPC"; Figure 3; sections 5.1, 5.2, 5.4.1) and, for pre-vote and check-quorum, to
Ongaro's thesis "Consensus: Bridging Theory and Practice" (sections 9.6, 6.2).

Tests that check the paper's classic algorithm build replicas with
``pre_vote=False, check_quorum=False``; the others use the defaults.
"""

from __future__ import annotations

from typing import Any

import pytest

from ringlock.errors import ConfigError
from ringlock.raft import Configuration, HardState, Message, MessageType, Raft, Role
from tests.unit.raft_network import (
    ELECTION_TICK,
    MT,
    Network,
    assert_election_safety,
    config,
    drain,
    make_candidate,
    make_leader,
    new_raft,
    of_type,
)

CLASSIC: dict[str, Any] = {"pre_vote": False, "check_quorum": False}


def _put_in_role(raft: Raft, role: Role) -> None:
    if role == Role.CANDIDATE:
        make_candidate(raft)
    elif role == Role.LEADER:
        make_leader(raft)
    drain(raft)
    assert raft.role == role


# --------------------------------------------------------------- Rules for Servers


def test_node_starts_as_follower() -> None:
    """§5.2: "When servers start up, they begin as followers"."""
    raft = new_raft(1)
    assert (raft.role, raft.term, raft.vote, raft.leader) == (Role.FOLLOWER, 0, 0, 0)


@pytest.mark.parametrize("role", [Role.FOLLOWER, Role.CANDIDATE, Role.LEADER])
@pytest.mark.parametrize(
    "kind",
    [MT.APPEND, MT.HEARTBEAT, MT.APPEND_RESP, MT.HEARTBEAT_RESP, MT.VOTE, MT.VOTE_RESP],
)
def test_higher_term_in_any_message_makes_node_follower(role: Role, kind: MessageType) -> None:
    """Figure 2, Rules for Servers, all servers: "If RPC request or response contains term
    T > currentTerm: set currentTerm = T, convert to follower" (§5.1)."""
    raft = new_raft(1, **CLASSIC)
    _put_in_role(raft, role)
    raft.step(Message(kind, to=1, frm=2, term=5))
    assert raft.term == 5
    assert raft.role == Role.FOLLOWER
    expected_leader = 2 if kind in (MT.APPEND, MT.HEARTBEAT) else 0
    assert raft.leader == expected_leader


@pytest.mark.parametrize(
    ("size", "answers", "outcome"),
    [
        # wins: votes from a majority (its own included)
        (1, {}, Role.LEADER),
        (3, {2: True}, Role.LEADER),
        (3, {2: True, 3: True}, Role.LEADER),
        (5, {2: True, 3: True}, Role.LEADER),
        (5, {2: False, 3: True, 4: True}, Role.LEADER),
        # loses: a majority refused
        (3, {2: False, 3: False}, Role.FOLLOWER),
        (5, {2: True, 3: False, 4: False, 5: False}, Role.FOLLOWER),
        # undecided: keeps waiting
        (3, {}, Role.CANDIDATE),
        (5, {2: True}, Role.CANDIDATE),
        (5, {2: False, 3: False}, Role.CANDIDATE),
    ],
)
def test_candidate_becomes_leader_only_with_majority_of_votes(
    size: int, answers: dict[int, bool], outcome: Role
) -> None:
    """Figure 2, candidates: "If votes received from majority of servers: become leader";
    §5.2: a candidate stays one until it wins, another server wins, or time runs out."""
    raft = new_raft(1, range(1, size + 1), **CLASSIC)
    raft.campaign()
    for voter, granted in answers.items():
        raft.step(Message(MT.VOTE_RESP, to=1, frm=voter, term=1, reject=not granted))
    assert raft.role == outcome
    assert raft.term == 1


@pytest.mark.parametrize("kind", [MT.APPEND, MT.HEARTBEAT])
@pytest.mark.parametrize("leader_term", [1, 2])
def test_candidate_becomes_follower_on_append_from_leader(
    kind: MessageType, leader_term: int
) -> None:
    """Figure 2, candidates: "If AppendEntries RPC received from new leader: convert to
    follower"; §5.2: the leader's term must be at least the candidate's current term."""
    raft = new_raft(1, **CLASSIC)
    make_candidate(raft)
    raft.step(Message(kind, to=1, frm=2, term=leader_term))
    assert (raft.role, raft.term, raft.leader) == (Role.FOLLOWER, leader_term, 2)


def test_candidate_starts_new_election_on_timeout() -> None:
    """Figure 2, candidates: "If election timeout elapses: start new election" (§5.2: by
    incrementing its term and sending RequestVote RPCs again)."""
    raft = new_raft(1, log_terms=[1, 1], term=1, **CLASSIC)
    make_candidate(raft)
    drain(raft)
    assert raft.term == 2
    for _ in range(2 * ELECTION_TICK):
        raft.tick()
    assert (raft.role, raft.term, raft.vote) == (Role.CANDIDATE, 3, 1)
    votes = of_type(drain(raft).messages, MT.VOTE)
    assert sorted(m.to for m in votes) == [2, 3]
    assert all((m.term, m.index, m.log_term) == (3, 2, 1) for m in votes)


def test_follower_starts_election_on_timeout() -> None:
    """Figure 2, followers: "If election timeout elapses without receiving AppendEntries
    RPC from current leader or granting vote to candidate: convert to candidate"; §5.2:
    increment currentTerm, vote for self, send RequestVote RPCs to all other servers."""
    raft = new_raft(1, **CLASSIC)
    for _ in range(2 * ELECTION_TICK):
        raft.tick()
    assert (raft.role, raft.term, raft.vote) == (Role.CANDIDATE, 1, 1)
    rd = drain(raft)
    assert rd.hard_state == HardState(term=1, vote=1, commit=0)
    assert sorted(m.to for m in of_type(rd.messages, MT.VOTE)) == [2, 3]


def test_follower_times_out_into_pre_candidate_without_raising_term() -> None:
    """Thesis §9.6 (pre-vote): a server that times out first asks whether it could win,
    with the term it would use, and changes neither its term nor its vote meanwhile."""
    raft = new_raft(1, term=4)
    drain(raft)
    for _ in range(2 * ELECTION_TICK):
        raft.tick()
    assert (raft.role, raft.term, raft.vote) == (Role.PRE_CANDIDATE, 4, 0)
    rd = drain(raft)
    assert rd.hard_state is None
    pre_votes = of_type(rd.messages, MT.PRE_VOTE)
    assert sorted(m.to for m in pre_votes) == [2, 3]
    assert all(m.term == 5 for m in pre_votes)


@pytest.mark.parametrize("start_role", [Role.FOLLOWER, Role.CANDIDATE])
def test_election_timeout_is_randomised_within_range(start_role: Role) -> None:
    """§5.2: "election timeouts are chosen randomly from a fixed interval"; here the
    interval is [election_tick, 2*election_tick), drawn anew for every term."""
    raft = new_raft(1, **CLASSIC)
    observed: set[int] = set()
    for _ in range(300):
        if start_role == Role.FOLLOWER:
            raft.step(Message(MT.HEARTBEAT, to=1, frm=2, term=raft.term + 1))
        else:
            raft.campaign()
        drain(raft)
        term = raft.term
        ticks = 0
        while raft.term == term:
            raft.tick()
            ticks += 1
            assert ticks <= 2 * ELECTION_TICK, "no election after 2*election_tick ticks"
        observed.add(ticks)
    assert observed == set(range(ELECTION_TICK, 2 * ELECTION_TICK))


def test_election_timeouts_differ_between_nodes_and_repeat_with_seed() -> None:
    """§5.2: randomised timeouts spread out the servers so that usually one times out
    first; with a fixed seed a run is reproducible."""

    def first_timeouts(seed: int) -> list[int]:
        timeouts = []
        for node_id in range(1, 6):
            raft = new_raft(node_id, range(1, 6), seed=seed, **CLASSIC)
            ticks = 0
            while raft.role == Role.FOLLOWER:
                raft.tick()
                ticks += 1
            timeouts.append(ticks)
        return timeouts

    assert first_timeouts(7) == first_timeouts(7)
    assert len(set(first_timeouts(7))) > 1


@pytest.mark.parametrize("heartbeat_tick", [1, 3])
def test_leader_sends_heartbeats_every_heartbeat_tick(heartbeat_tick: int) -> None:
    """Figure 2, leaders: send empty AppendEntries (heartbeats) "during idle periods to
    prevent election timeouts" (§5.2); here one per heartbeat_tick ticks to every peer."""
    raft = new_raft(1, heartbeat_tick=heartbeat_tick, **CLASSIC)
    make_leader(raft)
    drain(raft)
    for tick in range(1, 3 * heartbeat_tick + 1):
        raft.tick()
        heartbeats = of_type(drain(raft).messages, MT.HEARTBEAT)
        if tick % heartbeat_tick:
            assert heartbeats == []
        else:
            assert sorted(m.to for m in heartbeats) == [2, 3]
            assert all(m.term == raft.term and m.commit == 0 for m in heartbeats)


# ------------------------------------------------------------------ RequestVote RPC


@pytest.mark.parametrize("kind", [MT.VOTE, MT.PRE_VOTE])
def test_vote_refused_if_term_below_current_term(kind: MessageType) -> None:
    """Figure 2, RequestVote receiver: "Reply false if term < currentTerm" (§5.1). A
    stale VOTE is dropped unanswered (the candidate learns the term from the others); a
    stale PRE_VOTE is refused explicitly with our term."""
    raft = new_raft(1, term=3)
    raft.step(Message(kind, to=1, frm=2, term=2, index=10, log_term=2))
    assert (raft.term, raft.vote, raft.role) == (3, 0, Role.FOLLOWER)
    answers = drain(raft).messages
    assert not [m for m in answers if not m.reject]
    if kind == MT.PRE_VOTE:
        assert [(m.type, m.term, m.reject) for m in answers] == [(MT.PRE_VOTE_RESP, 3, True)]


@pytest.mark.parametrize(
    ("earlier_vote", "candidate", "granted"),
    [(0, 2, True), (0, 3, True), (2, 2, True), (3, 3, True), (2, 3, False), (3, 2, False)],
)
def test_vote_at_most_once_per_term(earlier_vote: int, candidate: int, granted: bool) -> None:
    """Figure 2, RequestVote receiver: grant only "If votedFor is null or candidateId";
    §5.2: "each server will vote for at most one candidate in a given term, on a
    first-come-first-served basis"."""
    raft = new_raft(1, term=1, vote=earlier_vote)
    raft.step(Message(MT.VOTE, to=1, frm=candidate, term=1))
    answers = drain(raft).messages
    assert [(m.type, m.to, m.term, m.reject) for m in answers] == [
        (MT.VOTE_RESP, candidate, 1, not granted)
    ]
    assert raft.vote == (candidate if granted else earlier_vote)


def test_vote_refused_to_second_candidate_of_same_term() -> None:
    """§5.2: once a server voted in a term it refuses every other candidate of that term,
    but answers a retransmitted request of the candidate it voted for the same way."""
    raft = new_raft(1)
    raft.step(Message(MT.VOTE, to=1, frm=2, term=2))
    raft.step(Message(MT.VOTE, to=1, frm=3, term=2))
    raft.step(Message(MT.VOTE, to=1, frm=2, term=2))
    answers = [(m.to, m.reject) for m in drain(raft).messages]
    assert answers == [(2, False), (3, True), (2, False)]
    assert (raft.term, raft.vote) == (2, 2)


@pytest.mark.parametrize("kind", [MT.VOTE, MT.PRE_VOTE])
@pytest.mark.parametrize(
    ("last_index", "last_term", "granted"),
    [
        (3, 2, True),  # same last term, same length
        (4, 2, True),  # same last term, longer
        (2, 2, False),  # same last term, shorter: the last-index rule
        (1, 3, True),  # higher last term wins although shorter: the last-term rule
        (9, 1, False),  # lower last term loses although longer: the last-term rule
        (0, 0, False),  # empty log
    ],
)
def test_vote_only_for_log_at_least_as_up_to_date(
    kind: MessageType, last_index: int, last_term: int, granted: bool
) -> None:
    """Figure 2, RequestVote receiver: grant only if "candidate's log is at least as
    up-to-date as receiver's log"; §5.4.1: "If the logs have last entries with different
    terms, then the log with the later term is more up-to-date. If the logs end with the
    same term, then whichever log is longer is more up-to-date"."""
    raft = new_raft(1, log_terms=[1, 2, 2], term=2)
    raft.step(Message(kind, to=1, frm=2, term=3, index=last_index, log_term=last_term))
    answers = drain(raft).messages
    assert [m.reject for m in answers] == [not granted]
    if kind == MT.VOTE:
        assert (raft.term, raft.vote) == (3, 2 if granted else 0)
    else:
        assert (raft.term, raft.vote) == (2, 0)  # pre-votes change nothing


def test_vote_and_term_reach_hard_state_with_the_vote_response() -> None:
    """Figure 2, "Persistent state on all servers: currentTerm, votedFor (Updated on
    stable storage before responding to RPCs)": the Ready carrying the granted vote also
    carries the new HardState, which the driver persists before sending."""
    raft = new_raft(1, term=1)
    raft.step(Message(MT.VOTE, to=1, frm=3, term=2))
    rd = raft.ready()
    assert rd.hard_state == HardState(term=2, vote=3, commit=0)
    assert [(m.type, m.to, m.reject) for m in rd.messages] == [(MT.VOTE_RESP, 3, False)]
    raft.advance(rd)
    assert raft.ready().hard_state is None


def test_candidate_vote_for_itself_reaches_hard_state_with_its_requests() -> None:
    """Figure 2, persistent state: the candidate's new term and its vote for itself are
    in the same Ready as its RequestVote messages (persisted before they are sent)."""
    raft = new_raft(1, **CLASSIC)
    raft.campaign()
    rd = raft.ready()
    assert rd.hard_state == HardState(term=1, vote=1, commit=0)
    assert sorted(m.to for m in of_type(rd.messages, MT.VOTE)) == [2, 3]


def test_restarted_node_does_not_vote_twice_in_same_term() -> None:
    """Figure 2, persistent state (votedFor survives a crash): after a restart from its
    storage a server still refuses a second candidate of the term it voted in."""
    net = Network.of((1, 2, 3))
    net.step(Message(MT.VOTE, to=1, frm=2, term=1))
    net.process(1)
    assert net.storage[1].hard_state == HardState(term=1, vote=2, commit=0)

    restarted = net.restart(1)
    assert (restarted.term, restarted.vote) == (1, 2)
    restarted.step(Message(MT.VOTE, to=1, frm=3, term=1))
    assert [(m.to, m.reject) for m in drain(restarted).messages] == [(3, True)]
    assert restarted.vote == 2


# ------------------------------------------------------------- pre-vote, check-quorum


def test_pre_vote_changes_neither_term_nor_vote() -> None:
    """Thesis §9.6: a pre-vote is granted like a vote (same log rule) but the voter keeps
    its term and vote, so nothing needs persisting."""
    raft = new_raft(1, log_terms=[1], term=2)
    raft.step(Message(MT.PRE_VOTE, to=1, frm=2, term=3, index=1, log_term=1))
    rd = drain(raft)
    assert [(m.type, m.term, m.reject) for m in rd.messages] == [(MT.PRE_VOTE_RESP, 3, False)]
    assert rd.hard_state is None
    assert (raft.term, raft.vote, raft.role) == (2, 0, Role.FOLLOWER)


def test_pre_vote_keeps_rejoining_node_from_raising_term_or_deposing_leader() -> None:
    """Thesis §9.6: with pre-vote, a server partitioned away keeps timing out but cannot
    win a pre-vote, so its term does not grow; when it rejoins it neither forces a new
    term on the others nor deposes the leader."""
    net = Network.of((1, 2, 3))
    leader = net.elect(1)
    net.isolate(3)
    net.propose(1, b"while 3 is away")
    net.tick_all(10 * ELECTION_TICK)
    assert net.nodes[3].term == 1
    assert net.sent(MT.PRE_VOTE, frm=3), "the isolated node should have tried"

    net.recover()
    net.tick_all(3 * ELECTION_TICK)
    assert leader.role == Role.LEADER
    assert {r.term for r in net.nodes.values()} == {1}
    assert net.nodes[3].leader == 1
    assert net.nodes[3].log.commit_index == leader.log.commit_index
    assert [m.term for m in net.sent(MT.VOTE)] == [1, 1], "no election after the first"


def test_without_pre_vote_rejoining_node_deposes_leader() -> None:
    """§9.6 of the thesis, the problem pre-vote solves: in the classic algorithm a
    rejoining server with an inflated term makes the leader step down."""
    net = Network.of((1, 2, 3), **CLASSIC)
    net.elect(1)
    net.isolate(3)
    net.tick_all(5 * ELECTION_TICK)
    assert net.nodes[3].term > 1

    net.recover()
    inflated = net.nodes[3].term
    while net.nodes[3].term == inflated:
        net.tick(3)
    net.deliver_all()
    assert net.nodes[1].role == Role.FOLLOWER
    assert net.nodes[1].term == inflated + 1
    assert net.nodes[3].role == Role.LEADER


def test_check_quorum_leader_steps_down_when_cut_off() -> None:
    """Thesis §6.2 (check-quorum): a leader that has not heard from a majority for an
    election timeout steps down, so clients stop waiting on it."""
    net = Network.of((1, 2, 3))
    leader = net.elect(1)
    net.isolate(1)
    ticks = 0
    while leader.role == Role.LEADER:
        net.tick(1)
        net.deliver_all()
        ticks += 1
        assert ticks <= 2 * ELECTION_TICK, "still leader after two election timeouts"
    assert (leader.role, leader.term, leader.leader) == (Role.FOLLOWER, 1, 0)


def test_check_quorum_leader_with_majority_stays_leader() -> None:
    """Thesis §6.2: a leader that hears from a majority (one follower of two here) keeps
    its leadership however long it runs."""
    net = Network.of((1, 2, 3))
    leader = net.elect(1)
    net.isolate(3)
    net.tick_all(5 * ELECTION_TICK)
    assert (leader.role, leader.term) == (Role.LEADER, 1)


def test_follower_hearing_live_leader_ignores_vote_requests() -> None:
    """Thesis §4.2.3 (with check-quorum): a server that heard from a current leader within
    the minimum election timeout neither grants a vote nor updates its term."""
    net = Network.of((1, 2, 3))
    net.elect(1)
    follower = net.nodes[2]
    follower.step(Message(MT.VOTE, to=2, frm=3, term=2, index=9, log_term=9))
    assert (follower.term, follower.vote, follower.leader) == (1, 1, 1)
    assert of_type(drain(follower).messages, MT.VOTE_RESP) == []


# ---------------------------------------------------------------- Figure 3 property


def test_figure3_election_safety() -> None:
    """Figure 3, Election Safety: "at most one leader can be elected in a given term"
    (§5.2). Two candidates split the first election; later a partition leaves an old
    leader believing it leads while the majority elects another, in a later term."""
    net = Network.of(range(1, 6), **CLASSIC)
    net.nodes[1].campaign()
    net.nodes[2].campaign()
    net.deliver_all()
    assert [n for n, r in net.nodes.items() if r.role == Role.LEADER] == [1]

    for minority in (1, 2):
        for majority in (3, 4, 5):
            net.cut(minority, majority)
    net.elect(3)
    leaders_now = {n: r.term for n, r in net.nodes.items() if r.role == Role.LEADER}
    assert leaders_now == {1: 1, 3: 2}, "two leaders at once, but of different terms"

    net.nodes[4].campaign()
    net.nodes[5].campaign()
    net.deliver_all()
    net.recover()
    net.tick_all(5 * ELECTION_TICK)
    assert_election_safety(net)
    assert net.leaders[1] == {1}
    assert net.leaders[2] == {3}
    assert len([r for r in net.nodes.values() if r.role == Role.LEADER]) == 1


# ------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "bad",
    [
        {"node_id": 0},
        {"node_id": -1},
        {"group_id": -1},
        {"heartbeat_tick": 0},
        {"election_tick": 1, "heartbeat_tick": 1},
        {"election_tick": 3, "heartbeat_tick": 5},
        {"max_entries_per_append": 0},
        {"max_inflight_appends": 0},
        {"max_pending_reads": 0},
        {"max_uncommitted_entries": 0},
    ],
)
def test_bad_config_values_raise_config_error(bad: dict[str, Any]) -> None:
    """Configuration is checked once, when a replica is built: bad values are refused
    with ConfigError (a ValueError) before any state is touched."""
    settings: dict[str, Any] = {"node_id": 1, **bad}
    node_id = settings.pop("node_id")
    cfg = config(node_id, **settings)
    with pytest.raises(ConfigError):
        cfg.validate()
    with pytest.raises(ConfigError):
        Raft(cfg, bootstrap=Configuration(frozenset({1, 2, 3})))


def test_good_config_validates_to_itself() -> None:
    """The standard test config is accepted and returned unchanged by validate()."""
    cfg = config(1)
    assert cfg.validate() is cfg
