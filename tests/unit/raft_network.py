"""An in-memory network of Raft replicas, and small helpers, for the unit tests.

`Network` plays the driver of every replica, as `ringlock.raft.messages.Ready`
describes it: for each Ready it first saves the hard state, entries and snapshot
into the node's `Storage` (what a restart would find on disk), then routes the
messages, then applies the committed entries and records the read states, and
finally calls `advance`. Messages wait in per-node inboxes until `deliver_all`
steps them; links can be cut, nodes isolated, and single messages lost through
`drop_rules`.

Everything is deterministic: replicas are seeded, nothing sleeps, time passes
only through `tick`, and every loop is bounded (`deliver_all` raises if the
network has not settled after `max_rounds` rounds).

The network also records what the Figure 3 properties of the Raft paper talk
about (who led which term, each leader's log over time, every applied entry), so
tests can check them with the `assert_*` helpers at the end of this module.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from ringlock.raft import (
    Configuration,
    Entry,
    HardState,
    Message,
    MessageType,
    Raft,
    RaftConfig,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
)

ELECTION_TICK = 10
HEARTBEAT_TICK = 1
MT = MessageType


# ----------------------------------------------------------------- single replicas


def config(node_id: int, **overrides: Any) -> RaftConfig:
    """The tests' standard config (election_tick=10, heartbeat_tick=1, seed=0)."""
    values: dict[str, Any] = {
        "election_tick": ELECTION_TICK,
        "heartbeat_tick": HEARTBEAT_TICK,
        "seed": 0,
    }
    values.update(overrides)
    return RaftConfig(node_id=node_id, **values)


def log_of(terms: Iterable[int], start: int = 1) -> list[Entry]:
    """Entries start, start+1, ... with the given terms (a log as drawn in the paper)."""
    return [Entry(start + offset, term) for offset, term in enumerate(terms)]


def new_raft(
    node_id: int,
    voters: Iterable[int] = (1, 2, 3),
    *,
    log_terms: Iterable[int] = (),
    term: int = 0,
    vote: int = 0,
    commit: int = 0,
    **overrides: Any,
) -> Raft:
    """A replica of a group bootstrapped with `voters`, restarted from the given state."""
    return Raft(
        config(node_id, **overrides),
        bootstrap=Configuration(frozenset(voters)),
        hard_state=HardState(term, vote, commit),
        entries=log_of(log_terms),
    )


def drain(raft: Raft) -> Ready:
    """Take the replica's Ready and advance it at once (as if persisted and sent)."""
    rd = raft.ready()
    raft.advance(rd)
    return rd


def of_type(messages: Iterable[Message], *types: MessageType) -> list[Message]:
    return [m for m in messages if m.type in types]


def terms_of(raft: Raft) -> list[int]:
    """The terms of the replica's entries, from its first one (the paper's drawing)."""
    return [e.term for e in raft.log.entries]


def make_candidate(raft: Raft) -> None:
    """Turn a follower into a candidate of the next term (needs pre_vote=False)."""
    assert not raft.config.pre_vote, "make_candidate needs a config with pre_vote=False"
    raft.campaign()
    assert raft.role == Role.CANDIDATE


def make_leader(raft: Raft) -> None:
    """Elect the replica by stepping granted votes from every other voter into it."""
    make_candidate(raft)
    for voter in sorted(raft.configuration.voters - {raft.id}):
        if raft.role == Role.LEADER:
            break
        raft.step(Message(MT.VOTE_RESP, to=raft.id, frm=voter, term=raft.term))
    assert raft.role == Role.LEADER


# ------------------------------------------------------------------------ storage


@dataclass
class Storage:
    """What one replica has made durable: its state after a crash."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)

    def save(self, rd: Ready) -> None:
        """Persist a Ready: snapshot, then entries (replacing from the first), then state."""
        if rd.snapshot is not None:
            self.snapshot = rd.snapshot
            self.entries = [e for e in self.entries if e.index > rd.snapshot.meta.index]
        if rd.entries:
            first = rd.entries[0].index
            self.entries = [e for e in self.entries if e.index < first] + list(rd.entries)
        if rd.hard_state is not None:
            self.hard_state = rd.hard_state

    def compact(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.entries = [e for e in self.entries if e.index > snapshot.meta.index]


# ------------------------------------------------------------------------ network


class NetworkNotSettled(AssertionError):
    """`deliver_all` ran out of rounds: the replicas keep producing work."""


class Network:
    """Replicas by id, wired together in memory. See the module docstring."""

    def __init__(self, rafts: Iterable[Raft], bootstrap: Configuration | None = None) -> None:
        self.nodes: dict[int, Raft] = {}
        self.storage: dict[int, Storage] = {}
        self.bootstrap: dict[int, Configuration | None] = {}
        self.inbox: dict[int, deque[Message]] = {}
        self.applied: dict[int, list[Entry]] = {}
        """Entries applied by each node's current state machine, in order."""
        self.restored: dict[int, list[SnapshotMeta]] = {}
        """Snapshots each node's state machine was restored from (restart or SNAPSHOT)."""
        self.applied_history: list[tuple[int, Entry]] = []
        """Every (node, entry) applied, across restarts: for state machine safety."""
        self.read_states: dict[int, list[ReadState]] = {}
        self.dropped_reads: dict[int, list[int]] = {}
        self.trace: list[Message] = []
        """Every message sent, in order, delivered or not."""
        self.lost: list[Message] = []
        self.drop_rules: list[Callable[[Message], bool]] = []
        """A message matching any rule is lost (cleared by `recover`)."""
        self.leaders: dict[int, set[int]] = {}
        """Term -> nodes seen as leader of that term."""
        self.leader_logs: dict[tuple[int, int], list[dict[int, int]]] = {}
        """(term, node) -> that leader's log (index -> term) at each observation."""
        self._cuts: set[frozenset[int]] = set()
        self._isolated: set[int] = set()
        for raft in rafts:
            self.add(raft, bootstrap)

    @classmethod
    def of(cls, ids: Iterable[int] = (1, 2, 3), **overrides: Any) -> Network:
        """A brand-new group of `ids`, every node bootstrapped with all of them as voters."""
        voters = Configuration(frozenset(ids))
        return cls(
            (Raft(config(node_id, **overrides), bootstrap=voters) for node_id in sorted(ids)),
            voters,
        )

    def add(self, raft: Raft, bootstrap: Configuration | None = None) -> None:
        """Wire in a replica; its current state counts as already persisted."""
        node_id = raft.id
        self.nodes[node_id] = raft
        self.bootstrap[node_id] = bootstrap
        self.storage[node_id] = Storage(
            HardState(raft.term, raft.vote, raft.log.commit_index),
            raft.log.snapshot,
            list(raft.log.entries),
        )
        self.inbox[node_id] = deque()
        self.applied[node_id] = []
        self.restored[node_id] = []
        self.read_states[node_id] = []
        self.dropped_reads[node_id] = []
        self._observe(node_id)

    # -- faults ----------------------------------------------------------------------

    def cut(self, a: int, b: int) -> None:
        """Lose every message between a and b, both ways."""
        self._cuts.add(frozenset((a, b)))

    def isolate(self, node_id: int) -> None:
        """Lose every message to or from the node."""
        self._isolated.add(node_id)

    def recover(self) -> None:
        """Heal every cut and isolation and forget the drop rules."""
        self._cuts.clear()
        self._isolated.clear()
        self.drop_rules.clear()

    def reachable(self, frm: int, to: int) -> bool:
        return (
            to in self.nodes
            and frm not in self._isolated
            and to not in self._isolated
            and frozenset((frm, to)) not in self._cuts
        )

    def restart(self, node_id: int) -> Raft:
        """Crash the node and start it again from its storage; its inbox is lost."""
        old = self.nodes[node_id]
        disk = self.storage[node_id]
        raft = Raft(
            old.config,
            bootstrap=self.bootstrap[node_id],
            hard_state=disk.hard_state,
            snapshot=disk.snapshot,
            entries=list(disk.entries),
        )
        self.nodes[node_id] = raft
        self.inbox[node_id].clear()
        # A fresh state machine, restored from the node's own snapshot.
        self.applied[node_id] = []
        if disk.snapshot is not None:
            self.restored[node_id].append(disk.snapshot.meta)
        self._observe(node_id)
        return raft

    # -- driving ---------------------------------------------------------------------

    def send(self, m: Message) -> None:
        self.trace.append(m)
        if not self.reachable(m.frm, m.to) or any(rule(m) for rule in self.drop_rules):
            self.lost.append(m)
            return
        self.inbox[m.to].append(m)

    def process(self, node_id: int) -> bool:
        """Handle one Ready of the node, in the documented order; False if it had none."""
        raft = self.nodes[node_id]
        if not raft.has_ready():
            return False
        self.handle(node_id, raft.ready())
        return True

    def handle(self, node_id: int, rd: Ready, *, already_sent: bool = False) -> None:
        """Persist, send, apply and advance a Ready that was taken from the node.

        `already_sent`: the test routed `rd.messages` itself, earlier (a leader may send
        its appends before persisting, Ready's documented exception)."""
        raft = self.nodes[node_id]
        self.storage[node_id].save(rd)
        if not already_sent:
            for m in rd.messages:
                self.send(m)
        if rd.snapshot is not None:
            self.applied[node_id] = []
            self.restored[node_id].append(rd.snapshot.meta)
        for entry in rd.committed_entries:
            self.applied[node_id].append(entry)
            self.applied_history.append((node_id, entry))
        self.read_states[node_id].extend(rd.read_states)
        self.dropped_reads[node_id].extend(rd.dropped_reads)
        raft.advance(rd)
        self._observe(node_id)

    def step(self, m: Message) -> None:
        self.nodes[m.to].step(m)
        self._observe(m.to)

    def deliver_round(self) -> bool:
        """Each node in turn steps its queued messages and handles its Ready. False if
        there was nothing to do."""
        busy = False
        for node_id in sorted(self.nodes):
            inbox = self.inbox[node_id]
            while inbox:
                self.step(inbox.popleft())
                busy = True
            busy = self.process(node_id) or busy
        return busy

    def deliver_all(self, max_rounds: int = 1000) -> None:
        """Deliver rounds until nothing is left to do."""
        for _ in range(max_rounds):
            if not self.deliver_round():
                return
        raise NetworkNotSettled(f"network still busy after {max_rounds} rounds")

    def tick(self, node_id: int, times: int = 1) -> None:
        """Let `times` ticks pass on one node, without delivering anything."""
        for _ in range(times):
            self.nodes[node_id].tick()
            self._observe(node_id)

    def tick_all(self, times: int = 1, *, deliver: bool = True) -> None:
        """Tick every node `times` times; by default deliver everything after each tick."""
        for _ in range(times):
            for node_id in sorted(self.nodes):
                self.tick(node_id)
            if deliver:
                self.deliver_all()

    def elect(self, node_id: int) -> Raft:
        """Make the node campaign now and deliver until the election is over."""
        raft = self.nodes[node_id]
        raft.campaign()
        self._observe(node_id)
        self.deliver_all()
        assert raft.role == Role.LEADER, f"node {node_id} lost its election: {raft.status()}"
        return raft

    def propose(self, node_id: int, data: bytes, *, deliver: bool = True) -> int:
        index, _ = self.nodes[node_id].propose(data)
        if deliver:
            self.deliver_all()
        return index

    def compact(self, node_id: int, index: int) -> Snapshot:
        """Snapshot the node's state machine at applied `index` and cut its log there."""
        raft = self.nodes[node_id]
        raft.compact(index, f"state@{index}".encode())
        snapshot = raft.log.snapshot
        assert snapshot is not None
        self.storage[node_id].compact(snapshot)
        return snapshot

    # -- looking -----------------------------------------------------------------------

    def leader(self) -> Raft | None:
        """The node that leads the highest term among current leaders, if any."""
        leading = [r for r in self.nodes.values() if r.role == Role.LEADER]
        return max(leading, key=lambda r: r.term) if leading else None

    def sent(self, *types: MessageType, frm: int | None = None, to: int | None = None) -> list[
        Message
    ]:
        """Messages of the trace with these types (all types if none), optionally filtered."""
        return [
            m
            for m in self.trace
            if (not types or m.type in types)
            and (frm is None or m.frm == frm)
            and (to is None or m.to == to)
        ]

    def _observe(self, node_id: int) -> None:
        raft = self.nodes[node_id]
        if raft.role != Role.LEADER:
            return
        self.leaders.setdefault(raft.term, set()).add(node_id)
        history = self.leader_logs.setdefault((raft.term, node_id), [])
        log = {e.index: e.term for e in raft.log.entries}
        if not history or history[-1] != log:
            history.append(log)


# ------------------------------------------------------------ Figure 3 properties


def assert_election_safety(net: Network) -> None:
    """At most one leader can be elected in a given term."""
    for term, leaders in net.leaders.items():
        assert len(leaders) <= 1, f"term {term} had leaders {sorted(leaders)}"


def assert_leader_append_only(net: Network) -> None:
    """A leader never overwrites or deletes entries in its log; it only appends."""
    for (term, node_id), history in net.leader_logs.items():
        for before, after in pairwise(history):
            first_after = min(after, default=max(before, default=0) + 1)
            for index, entry_term in before.items():
                if index < first_after:
                    continue  # compacted into a snapshot, not deleted
                assert after.get(index) == entry_term, (
                    f"leader {node_id} of term {term} changed entry {index}: "
                    f"term {entry_term} -> {after.get(index)}"
                )


def assert_log_matching(net: Network) -> None:
    """If two logs hold an entry with the same index and term, the logs are identical in
    all entries up through that index."""
    logs = {n: {e.index: e for e in r.log.entries} for n, r in net.nodes.items()}
    ids = sorted(logs)
    for position, a in enumerate(ids):
        for b in ids[position + 1 :]:
            common = sorted(set(logs[a]) & set(logs[b]))
            matching = [i for i in common if logs[a][i].term == logs[b][i].term]
            if not matching:
                continue
            upto = matching[-1]
            for index in common:
                if index <= upto:
                    assert logs[a][index] == logs[b][index], (
                        f"nodes {a} and {b} agree on entry {upto} but differ at {index}"
                    )


def assert_state_machine_safety(net: Network) -> None:
    """No two servers ever apply a different entry at the same index."""
    seen: dict[int, tuple[int, Entry]] = {}
    for node_id, entry in net.applied_history:
        first = seen.setdefault(entry.index, (node_id, entry))
        assert first[1] == entry, (
            f"index {entry.index}: node {first[0]} applied {first[1]}, node {node_id} {entry}"
        )


def assert_applied_in_order_once(net: Network, node_id: int) -> None:
    """The node's state machine saw consecutive indexes, each once, after its snapshot."""
    raft = net.nodes[node_id]
    restored = net.restored[node_id]
    start = restored[-1].index + 1 if restored else 1
    indexes = [e.index for e in net.applied[node_id]]
    assert indexes == list(range(start, start + len(indexes))), indexes
    assert raft.log.applied_index == (indexes[-1] if indexes else start - 1)
