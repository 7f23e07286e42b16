"""Log replication and commitment, checked rule by rule against the Raft paper.

References are to "In Search of an Understandable Consensus Algorithm (Extended
Version)", Ongaro & Ousterhout: Figure 2 ("AppendEntries RPC", "Rules for Servers"),
Figure 3 (the safety properties), Figures 7 and 8, sections 5.3, 5.4 and 7, and to
the Ready contract of `ringlock.raft.messages`.
"""

from __future__ import annotations

from typing import Any

import pytest

from ringlock.errors import InvariantViolation
from ringlock.raft import Configuration, Entry, Message, Raft, Role
from tests.unit.raft_network import (
    ELECTION_TICK,
    MT,
    Network,
    assert_applied_in_order_once,
    assert_leader_append_only,
    assert_log_matching,
    assert_state_machine_safety,
    drain,
    log_of,
    make_leader,
    new_raft,
    of_type,
    terms_of,
)

CLASSIC: dict[str, Any] = {"pre_vote": False, "check_quorum": False}


def _append(
    prev_index: int, prev_term: int, entries: list[Entry], commit: int = 0, term: int = 2
) -> Message:
    return Message(
        MT.APPEND, to=1, frm=2, term=term, index=prev_index, log_term=prev_term,
        entries=tuple(entries), commit=commit,
    )


def _elect_by_ticks(net: Network, candidates: set[int]) -> Raft:
    """Let time pass on every node until one of `candidates` leads."""
    for _ in range(20 * ELECTION_TICK):
        net.tick_all()
        leader = net.leader()
        if leader is not None and leader.id in candidates:
            return leader
    raise AssertionError(f"none of {sorted(candidates)} became leader")


# --------------------------------------------------------------- AppendEntries RPC


def test_append_refused_if_term_below_current_term() -> None:
    """Figure 2, AppendEntries receiver, 1: "Reply false if term < currentTerm" (§5.1).
    The answer carries the receiver's term, so the stale leader learns it is deposed."""
    raft = new_raft(1, log_terms=[1, 1], term=3)
    raft.step(_append(2, 1, log_of([2], start=3), commit=2, term=2))
    assert terms_of(raft) == [1, 1]
    assert (raft.term, raft.leader, raft.log.commit_index) == (3, 0, 0)
    answers = drain(raft).messages
    assert [(m.type, m.to, m.term) for m in answers] == [(MT.APPEND_RESP, 2, 3)]


def test_stale_leader_steps_down_when_followers_answer_with_higher_term() -> None:
    """§5.1: "If a candidate or leader discovers that its term is out of date, it
    immediately reverts to follower state"; followers refuse its appends (Figure 2) and
    whatever it appended alone is replaced by the new leader's log (§5.3)."""
    net = Network.of((1, 2, 3))
    old = net.elect(1)
    net.isolate(1)
    for _ in range(4 * ELECTION_TICK):
        net.tick(2)
        net.tick(3)
        net.deliver_all()
    new = net.leader()
    assert new is not None and new.id in (2, 3) and new.term == 2
    stale_index = net.propose(1, b"stale")
    assert old.role == Role.LEADER and old.term == 1

    net.recover()
    net.tick(1)
    net.deliver_all()
    assert (old.role, old.term) == (Role.FOLLOWER, 2)
    net.tick_all(3)
    assert old.leader == new.id
    assert old.log.entry_at(stale_index).data != b"stale"
    assert all(e.data != b"stale" for _, e in net.applied_history)


@pytest.mark.parametrize(
    ("prev_index", "prev_term", "accepted", "hint"),
    [
        (0, 0, True, 0),
        (2, 1, True, 0),
        (3, 2, True, 0),
        (3, 1, False, 2),  # an entry at prevLogIndex, but of another term: skip that term
        (4, 2, False, 3),  # no entry at prevLogIndex at all: our last entry may match
    ],
)
def test_append_refused_without_matching_previous_entry(
    prev_index: int, prev_term: int, accepted: bool, hint: int
) -> None:
    """Figure 2, AppendEntries receiver, 2: "Reply false if log doesn't contain an entry
    at prevLogIndex whose term matches prevLogTerm" (§5.3, the consistency check)."""
    raft = new_raft(1, log_terms=[1, 1, 2], term=2)
    raft.step(_append(prev_index, prev_term, []))
    (answer,) = drain(raft).messages
    assert answer.type == MT.APPEND_RESP and answer.reject == (not accepted)
    if accepted:
        assert answer.index == prev_index
    else:
        assert (answer.index, answer.reject_hint) == (prev_index, hint)
    assert terms_of(raft) == [1, 1, 2]


@pytest.mark.parametrize(
    ("incoming", "expected_terms", "persisted"),
    [
        ([Entry(2, 2)], [1, 2], [Entry(2, 2)]),
        ([Entry(2, 1), Entry(3, 2)], [1, 1, 2], [Entry(3, 2)]),
        ([Entry(2, 1), Entry(3, 1), Entry(4, 2), Entry(5, 2)], [1, 1, 1, 2, 2], log_of([2, 2], 4)),
    ],
)
def test_append_deletes_conflicting_entry_and_all_that_follow(
    incoming: list[Entry], expected_terms: list[int], persisted: list[Entry]
) -> None:
    """Figure 2, AppendEntries receiver, 3: "If an existing entry conflicts with a new one
    (same index but different terms), delete the existing entry and all that follow it"
    (§5.3). The Ready hands the driver the entries to store from the conflict on."""
    raft = new_raft(1, log_terms=[1, 1, 1, 1], term=1, commit=1)
    raft.step(_append(1, 1, incoming))
    rd = drain(raft)
    assert terms_of(raft) == expected_terms
    assert rd.entries == persisted
    assert [(m.type, m.index, m.reject) for m in rd.messages] == [
        (MT.APPEND_RESP, incoming[-1].index, False)
    ]


def test_append_adds_only_entries_not_already_in_log() -> None:
    """Figure 2, AppendEntries receiver, 4: "Append any new entries not already in the
    log". Entries it already holds are not rewritten, and a late duplicate of an older
    append does not cut the entries that came after it."""
    raft = new_raft(1, log_terms=[1, 1], term=1)
    raft.step(_append(0, 0, log_of([1, 1, 1]), term=1))
    rd = drain(raft)
    assert terms_of(raft) == [1, 1, 1]
    assert rd.entries == [Entry(3, 1)]

    raft.step(_append(0, 0, log_of([1]), term=1))
    rd = drain(raft)
    assert terms_of(raft) == [1, 1, 1]
    assert rd.entries == []
    assert [(m.index, m.reject) for m in rd.messages] == [(1, False)]


@pytest.mark.parametrize(
    ("prev_index", "entries", "leader_commit", "expected_commit"),
    [
        (0, log_of([1]), 3, 1),  # entry 3 might be stale: only up to the last new entry
        (1, [], 3, 1),  # a heartbeat-like append vouches for entry 1 only
        (3, log_of([1, 1], 4), 4, 4),
        (3, log_of([1], 4), 2, 2),
        (3, log_of([1, 1], 4), 9, 5),
    ],
)
def test_append_sets_commit_to_min_of_leader_commit_and_last_new_entry(
    prev_index: int, entries: list[Entry], leader_commit: int, expected_commit: int
) -> None:
    """Figure 2, AppendEntries receiver, 5: "If leaderCommit > commitIndex, set
    commitIndex = min(leaderCommit, index of last new entry)"."""
    raft = new_raft(1, log_terms=[1, 1, 1], term=1)
    raft.step(_append(prev_index, 1 if prev_index else 0, entries, leader_commit, term=1))
    assert raft.log.commit_index == expected_commit


def test_commit_index_never_moves_backwards() -> None:
    """Figure 2: commitIndex only grows ("increases monotonically"); an append carrying an
    older leaderCommit leaves it alone."""
    raft = new_raft(1, log_terms=[1, 1, 1], term=1, commit=2)
    raft.step(_append(3, 1, [], commit=1, term=1))
    assert raft.log.commit_index == 2


# ------------------------------------------------------------------- leaders, commit


def test_leader_appends_proposal_and_sends_it_after_prev_index_and_term() -> None:
    """§5.3: the leader "appends the command to its log as a new entry, then issues
    AppendEntries RPCs in parallel"; each carries the index and term of the entry that
    precedes the new ones, and the leader's commitIndex. The entry is also handed to the
    driver to persist."""
    net = Network.of((1, 2, 3))
    leader = net.elect(1)
    index, term = leader.propose(b"x")
    assert (index, term) == (2, 1)
    rd = leader.ready()
    assert rd.entries == [Entry(2, 1, b"x")]
    appends = of_type(rd.messages, MT.APPEND)
    assert sorted(m.to for m in appends) == [2, 3]
    for m in appends:
        assert (m.term, m.index, m.log_term, m.commit) == (1, 1, 1, 1)
        assert m.entries == (Entry(2, 1, b"x"),)
    assert leader.log.commit_index == 1
    net.handle(1, rd)
    net.deliver_all()
    assert leader.log.commit_index == 2


@pytest.mark.parametrize(
    ("size", "acceptors", "committed"),
    [
        (1, [], True),
        (3, [], False),
        (3, [2], True),
        (3, [2, 3], True),
        (5, [], False),
        (5, [2], False),
        (5, [2, 3], True),
        (5, [2, 3, 4, 5], True),
    ],
)
def test_leader_commits_entry_once_majority_stores_it(
    size: int, acceptors: list[int], committed: bool
) -> None:
    """§5.3: "A log entry is committed once the leader that created the entry has
    replicated it on a majority of the servers"; the leader puts the new commit index in
    later AppendEntries (here: heartbeats), so the followers learn it."""
    net = Network.of(range(1, size + 1))
    leader = net.elect(1)
    for node_id in range(2, size + 1):
        if node_id not in acceptors:
            net.cut(1, node_id)
    index = net.propose(1, b"x")
    assert (leader.log.commit_index >= index) == committed
    net.tick(1)
    net.deliver_all()
    for node_id in acceptors:
        assert (net.nodes[node_id].log.commit_index >= index) == committed


def test_leader_counts_its_own_copy_only_after_advance() -> None:
    """Thesis §10.2.1 and the Ready contract: a leader may send its appends before its own
    disk write ends, but counts its own copy towards a majority only after `advance`."""
    net = Network.of((1, 2, 3))
    leader = net.elect(1)
    net.cut(1, 3)
    index, _ = leader.propose(b"x")
    rd = leader.ready()
    for m in rd.messages:
        net.send(m)
    net.step(net.inbox[2].popleft())
    net.process(2)
    (ack,) = net.inbox[1]
    net.step(net.inbox[1].popleft())
    assert (ack.type, ack.index) == (MT.APPEND_RESP, index)
    assert leader.progress[2].match_index == index
    assert leader.log.commit_index == index - 1, "one follower alone is not a majority"

    net.handle(1, rd, already_sent=True)
    assert leader.log.commit_index == index


def _figure8_network() -> Network:
    """Figure 8 (b): S1 led term 2 and stored entry 2 on S1, S2; S5 led term 3 and stored
    its own entry 2 on itself. Every node is at term 3; only entry 1 is committed."""
    voters = Configuration(frozenset(range(1, 6)))
    logs = {1: [1, 2], 2: [1, 2], 3: [1], 4: [1], 5: [1, 3]}
    return Network(
        (
            new_raft(n, range(1, 6), log_terms=terms, term=3, commit=1,
                     max_entries_per_append=1, **CLASSIC)
            for n, terms in logs.items()
        ),
        voters,
    )


def _figure8_leader_s1(net: Network) -> Raft:
    """Figure 8 (c): S1 leads term 4 and copies its entry 2 (term 2) to S3 and S4, but every
    append that would store its term-4 entry on a follower is lost."""
    net.isolate(5)
    net.drop_rules.append(
        lambda m: m.type == MT.APPEND
        and any(e.term == 4 for e in m.entries)
        and net.nodes[m.to].log.match_term(m.index, m.log_term)
    )
    s1 = net.elect(1)
    assert s1.term == 4
    assert [terms_of(net.nodes[n]) for n in range(1, 6)] == [
        [1, 2, 4], [1, 2], [1, 2], [1, 2], [1, 3]
    ]
    return s1


def test_figure8_old_term_entry_not_committed_by_counting_replicas() -> None:
    """§5.4.2 and Figure 8: "Raft never commits log entries from previous terms by
    counting replicas". In (c) entry 2 of term 2 is on a majority (S1-S4) and the leader
    knows it, yet it is not committed; (d) shows why: S5 can still be elected and
    overwrite it with its own entry 2 of term 3."""
    net = _figure8_network()
    s1 = _figure8_leader_s1(net)
    assert s1.progress[3].match_index == 2 and s1.progress[4].match_index == 2
    assert s1.log.commit_index == 1
    assert all(e.index < 2 for _, e in net.applied_history)

    net.recover()
    net.isolate(1)  # (d): S1 crashes, S5 comes back
    s5 = net.nodes[5]
    for _ in range(3):
        if s5.role == Role.LEADER:
            break
        s5.campaign()
        net.deliver_all()
    assert (s5.role, s5.term) == (Role.LEADER, 5)
    for node_id in (2, 3, 4, 5):
        assert terms_of(net.nodes[node_id]) == [1, 3, 5]
    assert s5.log.commit_index == 3
    assert_state_machine_safety(net)
    assert {e.term for _, e in net.applied_history if e.index == 2} == {3}


def test_figure8_entry_of_current_term_commits_earlier_entries() -> None:
    """§5.4.2 and Figure 8 (e): once an entry of the leader's current term is on a
    majority, it and every entry before it are committed ("Log Matching"), and S5 can no
    longer be elected."""
    net = _figure8_network()
    s1 = _figure8_leader_s1(net)
    net.drop_rules.clear()
    net.tick(1)  # a heartbeat: the answers make S1 send what was lost
    net.deliver_all()
    assert s1.log.commit_index == 3
    assert [e.term for e in net.applied[1]] == [1, 2, 4]

    net.recover()
    net.isolate(1)
    s5 = net.nodes[5]
    for _ in range(3):
        s5.campaign()
        net.deliver_all()
    assert 5 not in {n for leaders in net.leaders.values() for n in leaders}
    for node_id in (2, 3, 4):
        assert terms_of(net.nodes[node_id])[:3] == [1, 2, 4]


# --------------------------------------------------------------- Figure 7, Figure 3

FIGURE7_LEADER = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
FIGURE7_FOLLOWERS = {
    "a": [1, 1, 1, 4, 4, 5, 5, 6, 6],
    "b": [1, 1, 1, 4],
    "c": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    "d": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    "e": [1, 1, 1, 4, 4, 4, 4],
    "f": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
}


def _figure7_network(case: str) -> Network:
    """Figure 7: node 1 has the leader's log, node 2 follower (case), node 3 a copy of the
    leader's log (so node 1 can win term 8). Everyone is at term 7."""
    logs = {1: FIGURE7_LEADER, 2: FIGURE7_FOLLOWERS[case], 3: FIGURE7_LEADER}
    return Network(
        (new_raft(n, log_terms=terms, term=7) for n, terms in logs.items()),
        Configuration(frozenset({1, 2, 3})),
    )


@pytest.mark.parametrize("case", sorted(FIGURE7_FOLLOWERS))
def test_figure3_leader_append_only(case: str) -> None:
    """Figure 3, Leader Append-Only: "a leader never overwrites or deletes entries in its
    log; it only appends new entries" (§5.3), even while it forces a diverging follower
    (Figure 7) to duplicate its own log."""
    net = _figure7_network(case)
    leader = net.elect(1)
    leader.propose(b"x")
    net.deliver_all()
    assert terms_of(leader) == [*FIGURE7_LEADER, 8, 8]
    assert terms_of(net.nodes[2]) == terms_of(leader)
    assert_leader_append_only(net)
    assert len(net.leader_logs[(8, 1)]) > 1, "the leader's log was watched as it grew"


@pytest.mark.parametrize("case", sorted(FIGURE7_FOLLOWERS))
def test_figure3_log_matching(case: str) -> None:
    """Figure 3, Log Matching: "if two logs contain an entry with the same index and term,
    then the logs are identical in all entries up through the given index" (§5.3);
    checked after every delivery round while the leader repairs a Figure 7 follower."""
    net = _figure7_network(case)
    assert_log_matching(net)
    net.nodes[1].campaign()
    for _ in range(1000):
        busy = net.deliver_round()
        assert_log_matching(net)
        if not busy:
            break
    assert net.nodes[1].role == Role.LEADER
    assert terms_of(net.nodes[2]) == [*FIGURE7_LEADER, 8]


def test_figure3_leader_completeness() -> None:
    """Figure 3, Leader Completeness: "if a log entry is committed in a given term, then
    that entry will be present in the logs of the leaders for all higher-numbered terms"
    (§5.4). An entry committed on nodes 1-3 of 5 survives two leader crashes while nodes
    4 and 5 never receive it: only nodes holding it can win (§5.4.1)."""
    net = Network.of(range(1, 6))
    net.elect(1)
    net.cut(1, 4)
    net.cut(1, 5)
    index = net.propose(1, b"committed")
    first = net.nodes[1]
    assert first.log.commit_index == index
    committed = first.log.entry_at(index)

    net.recover()
    net.drop_rules.append(lambda m: m.type in (MT.APPEND, MT.SNAPSHOT) and m.to in (4, 5))
    net.isolate(1)
    second = _elect_by_ticks(net, {2, 3, 4, 5})
    assert second.id in (2, 3), "4 and 5 lack the committed entry: 2 and 3 refuse them"
    net.isolate(second.id)
    third = _elect_by_ticks(net, {2, 3, 4, 5} - {second.id})
    assert {second.id, third.id} == {2, 3}
    assert net.nodes[4].log.last_index() < index
    for (term, node_id), history in net.leader_logs.items():
        if term > committed.term:
            for log in history:
                assert log.get(index) == committed.term, f"leader {node_id} of term {term}"
    assert third.log.entry_at(index) == committed


def test_figure3_state_machine_safety() -> None:
    """Figure 3, State Machine Safety: "if a server has applied a log entry at a given
    index to its state machine, no other server will ever apply a different log entry for
    the same index" (§5.4.3). Scripted: a leader is cut off with uncommitted proposals, a
    new leader commits others, a follower crashes and restarts, the old leader rejoins."""
    net = Network.of(range(1, 6))
    net.elect(1)
    net.propose(1, b"a")
    net.propose(1, b"b")
    net.isolate(1)
    net.propose(1, b"lost-c")
    net.propose(1, b"lost-d")
    second = _elect_by_ticks(net, {2, 3, 4, 5})
    net.propose(second.id, b"e")
    net.restart(min({2, 3, 4, 5} - {second.id}))
    net.propose(second.id, b"f")
    net.recover()
    net.tick_all(3 * ELECTION_TICK)
    leader = net.leader()
    assert leader is not None
    net.propose(leader.id, b"g")
    net.tick_all(2)

    assert_state_machine_safety(net)
    applied_data = {e.data for _, e in net.applied_history}
    assert {b"a", b"b", b"e", b"f", b"g"} <= applied_data
    assert not {b"lost-c", b"lost-d"} & applied_data
    final = [[(e.index, e.term) for e in net.applied[n]] for n in (1, 2, 4, 5)]
    assert all(seq == final[0] for seq in final)


def test_committed_entries_applied_in_order_exactly_once() -> None:
    """Figure 2, all servers: "If commitIndex > lastApplied: increment lastApplied, apply
    log[lastApplied] to state machine" - each committed entry is handed out once, in log
    order, through Ready.committed_entries."""
    net = Network.of((1, 2, 3))
    leader = net.elect(1)
    for n in range(3):
        net.propose(1, f"first-{n}".encode())
    net.cut(1, 3)
    leader.propose_batch([b"batch-1", b"batch-2"])
    net.deliver_all()
    net.recover()
    net.tick_all(3)
    for node_id in (1, 2, 3):
        assert_applied_in_order_once(net, node_id)
        assert net.nodes[node_id].log.applied_index == leader.log.commit_index == 6
        assert drain(net.nodes[node_id]).committed_entries == []
    assert net.applied[1] == net.applied[2] == net.applied[3]
    assert [e.data for e in net.applied[1]][-2:] == [b"batch-1", b"batch-2"]


def test_restart_recovers_log_and_commit_and_reapplies() -> None:
    """Figure 2, persistent state: the log survives a crash (with currentTerm, votedFor);
    the restarted server rebuilds its state machine by applying the committed entries
    again, in order, and then catches up with the leader."""
    net = Network.of((1, 2, 3))
    net.elect(1)
    net.propose(1, b"x")
    net.tick_all(1)
    before = net.nodes[2]
    restarted = net.restart(2)
    assert terms_of(restarted) == terms_of(before)
    assert (restarted.term, restarted.vote) == (before.term, before.vote)
    assert restarted.log.commit_index == before.log.commit_index == 2
    net.propose(1, b"y")
    net.tick_all(1)
    assert [e.data for e in net.applied[2]] == [b"", b"x", b"y"]
    assert_applied_in_order_once(net, 2)


# ------------------------------------------------------------------------ snapshots


def test_lagging_follower_receives_snapshot_and_log_restarts_after_it() -> None:
    """§7, Log compaction: when the leader has discarded the entries a follower needs, it
    sends an InstallSnapshot (here a SNAPSHOT message); the follower replaces its log by
    the snapshot, and later entries follow the snapshot's last index."""
    net = Network.of((1, 2, 3))
    leader = net.elect(1)
    net.isolate(3)
    for n in range(5):
        net.propose(1, f"v{n}".encode())
    assert leader.log.applied_index == 6
    net.compact(1, 6)
    assert leader.log.first_index() == 7

    net.recover()
    net.tick(1)
    net.deliver_all()
    follower = net.nodes[3]
    assert net.sent(MT.SNAPSHOT, frm=1, to=3)
    assert (follower.log.snapshot_index, follower.log.commit_index) == (6, 6)
    assert net.restored[3][-1].index == 6
    assert net.storage[3].snapshot is not None and net.storage[3].snapshot.data == b"state@6"

    net.propose(1, b"after")
    net.tick_all(1)
    assert [e.index for e in follower.log.entries] == [7]
    assert [e.index for e in net.storage[3].entries] == [7]
    assert [e.data for e in net.applied[3]] == [b"after"]
    assert follower.log.commit_index == leader.log.commit_index == 7


# ------------------------------------------------------------------ take_ready


def test_take_ready_gives_none_when_idle_and_leaves_nothing_outstanding() -> None:
    """The node's driver asks every shard a message touched: an idle replica answers
    None and may be asked again at once; one with work gives the Ready that ready()
    would, which must be advanced before the next."""
    raft = new_raft(1, **CLASSIC)
    make_leader(raft)
    drain(raft)  # the election's own Ready
    assert not raft.has_ready()
    assert raft.take_ready() is None
    assert raft.take_ready() is None  # nothing was left outstanding
    raft.propose(b"x")
    rd = raft.take_ready()
    assert rd is not None
    assert [e.data for e in rd.entries] == [b"x"]
    with pytest.raises(InvariantViolation, match="before advance"):
        raft.take_ready()
    raft.advance(rd)
    assert raft.take_ready() is None
