"""One Raft replica as a plain object: no clock, no socket, no file.

Theory of operation
-------------------
The driver feeds the replica three kinds of input:

  * `step(message)`   a message from a peer;
  * `tick()`          one unit of logical time passed (the driver picks the unit);
  * `propose(data)`, `propose_conf_change(...)`, `read_index(request_id)`,
    `transfer_leadership(to)`, `compact(index, data)`   requests of the local user.

and takes the output from `ready()`: a `Ready` of what to persist, what to send,
what to apply; `advance(ready)` then tells the replica that all of it was done.
Everything random (the election timeout) comes from a generator seeded by the
config, so the same inputs give the same outputs.

Rules kept here (Raft paper figures 2 and 3, and the thesis):
  * Election safety: one vote per term, persisted before the answer is sent;
    votes only for a log at least as up to date as ours (§5.4.1).
  * Pre-vote (thesis §9.6) and check-quorum: a node that was cut off does not
    raise its term on rejoining, and a node that hears a live leader ignores
    votes (leader stickiness); a leader that cannot reach a quorum for an
    election timeout steps down.
  * Commit only by counting replicas of an entry of the current term (§5.4.2);
    the leader counts its own copy only once the driver has persisted it.
  * Membership: one voter at a time, learners first (thesis §4.1). A
    configuration takes effect as soon as its entry is in the log, and a leader
    accepts a new change only once the previous one and an entry of its own
    term are committed.
  * ReadIndex (thesis §6.4): a read waits for an entry of the leader's term to
    be committed, records the commit index, and is released once a quorum
    acknowledged a heartbeat sent after it was registered.

Must never import asyncio, time, socket, os or anything that does I/O.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ringlock.errors import (
    ConfChangeInProgress,
    InvariantViolation,
    NotLeaderError,
    ProposalDropped,
    TransferInProgress,
)
from ringlock.invariant import invariant
from ringlock.raft import quorum
from ringlock.raft.config import RaftConfig
from ringlock.raft.log import RaftLog
from ringlock.raft.messages import (
    Configuration,
    Entry,
    EntryKind,
    HardState,
    Message,
    MessageType,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
)
from ringlock.raft.progress import Progress, ProgressState

MT = MessageType
MAX_APPLY_BATCH = 4096
"""Committed entries handed out by one Ready, at most."""


@dataclass(slots=True)
class _ReadBatch:
    """Reads registered together; released by one quorum of heartbeat answers."""

    index: int
    request_ids: list[int]
    acks: set[int] = field(default_factory=set)


class Raft:
    """A Raft replica of one group. See the module docstring for the contract."""

    def __init__(
        self,
        config: RaftConfig,
        *,
        bootstrap: Configuration | None = None,
        hard_state: HardState | None = None,
        snapshot: Snapshot | None = None,
        entries: list[Entry] | None = None,
    ) -> None:
        """Start (or restart from persisted state) a replica.

        `bootstrap` is the configuration of a brand-new group; it is ignored once the
        log or a snapshot carries a configuration. A node joining an existing group
        passes none and stays passive until the leader's log names it.
        """
        self.config = config.validate()
        self.id = config.node_id
        self.group = config.group_id
        self._rng = random.Random(config.seed * 1_000_003 + self.id * 7_919 + self.group)
        self.log = RaftLog(snapshot, entries)
        self.term = 0
        self.vote = 0
        self._restore_hard_state(hard_state or HardState())
        self._persisted_hard_state = HardState(self.term, self.vote, self.log.commit_index)
        self.role = Role.FOLLOWER
        self.leader = 0
        self._bootstrap = bootstrap or Configuration(frozenset())
        self.configuration = self._bootstrap
        self.conf_index = 0
        self._conf_term = 0
        self._reload_configuration()

        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._randomized_election_timeout = 0
        self._ticks = 0
        self.votes: dict[int, bool] = {}
        self.progress: dict[int, Progress] = {}
        self.lead_transferee = 0
        self._msgs: list[Message] = []
        self._pending_broadcast = False
        self._reads_waiting_for_commit: list[int] = []
        self._reads_to_register: list[int] = []
        self._read_batches: dict[int, _ReadBatch] = {}
        self._next_read_batch = 0
        self._read_states: list[ReadState] = []
        self._dropped_reads: list[int] = []
        self._soft_state = SoftState(0, Role.FOLLOWER)
        self._ready_outstanding = False
        self._reset_election_timer()

    # ---------------------------------------------------------------- persisted state

    def _restore_hard_state(self, hard_state: HardState) -> None:
        invariant(
            hard_state.commit <= self.log.last_index(),
            f"persisted commit {hard_state.commit} beyond last index {self.log.last_index()}",
        )
        self.term = hard_state.term
        self.vote = hard_state.vote
        self.log.commit_to(hard_state.commit)

    def _reload_configuration(self) -> None:
        """The configuration in force is the last one in the log, else the snapshot's."""
        for entry in reversed(self.log.entries):
            if entry.kind == EntryKind.CONF:
                self._set_configuration(Configuration.decode(entry.data), entry.index, entry.term)
                return
        if self.log.snapshot is not None:
            meta = self.log.snapshot.meta
            self._set_configuration(meta.configuration, meta.index, meta.term)
        else:
            self._set_configuration(self._bootstrap, 0, 0)

    def _set_configuration(self, configuration: Configuration, index: int, term: int) -> None:
        invariant(
            not (configuration.voters & configuration.learners),
            f"node both voter and learner in {configuration}",
        )
        self.configuration = configuration
        self.conf_index = index
        self._conf_term = term
        if self.role == Role.LEADER:
            for node in configuration.members:
                if node not in self.progress:
                    self.progress[node] = Progress(self.log.last_index() + 1)
            for node in list(self.progress):
                if node not in configuration.members:
                    del self.progress[node]
            if self.lead_transferee and self.lead_transferee not in configuration.voters:
                self.lead_transferee = 0
            if self._read_batches:
                self._recheck_read_batches()

    def _configuration_at(self, index: int) -> Configuration:
        """The configuration in force once the log is cut at `index` (for snapshots)."""
        for entry in reversed(self.log.entries):
            if entry.index <= index and entry.kind == EntryKind.CONF:
                return Configuration.decode(entry.data)
        if self.log.snapshot is not None:
            return self.log.snapshot.meta.configuration
        return self._bootstrap

    def _after_follower_append(self, entries: tuple[Entry, ...]) -> None:
        truncated = self.conf_index > self.log.snapshot_index and not self.log.match_term(
            self.conf_index, self._conf_term
        )
        if truncated or any(e.kind == EntryKind.CONF for e in entries):
            self._reload_configuration()

    # ------------------------------------------------------------------------- roles

    def _promotable(self) -> bool:
        return self.id in self.configuration.voters

    def _reset_election_timer(self) -> None:
        tick = self.config.election_tick
        self._randomized_election_timeout = tick + self._rng.randrange(tick)

    def _reset(self, term: int) -> None:
        if term != self.term:
            invariant(term > self.term, f"term moved backwards: {self.term} -> {term}")
            self.term = term
            self.vote = 0
        self.leader = 0
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self._reset_election_timer()
        self.votes = {}
        self.lead_transferee = 0
        self._drop_pending_reads()
        self.progress = {}

    def _drop_pending_reads(self) -> None:
        self._dropped_reads.extend(self._reads_waiting_for_commit)
        self._dropped_reads.extend(self._reads_to_register)
        for batch in self._read_batches.values():
            self._dropped_reads.extend(batch.request_ids)
        self._reads_waiting_for_commit = []
        self._reads_to_register = []
        self._read_batches = {}

    def _become_follower(self, term: int, leader: int) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader = leader

    def _become_pre_candidate(self) -> None:
        invariant(self.role != Role.LEADER, "a leader cannot become pre-candidate")
        self.role = Role.PRE_CANDIDATE
        self.votes = {}
        self.leader = 0

    def _become_candidate(self) -> None:
        invariant(self.role != Role.LEADER, "a leader cannot become candidate")
        self._reset(self.term + 1)
        self.vote = self.id
        self.role = Role.CANDIDATE

    def _become_leader(self) -> None:
        invariant(self.role == Role.CANDIDATE, "only a candidate becomes leader")
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader = self.id
        next_index = self.log.last_index() + 1
        for node in self.configuration.members:
            self.progress[node] = Progress(next_index)
        own = self.progress.get(self.id)
        if own is not None:
            own.become_replicate()
            own.maybe_update(self.log.stable_index)
            own.recent_active = True
        # An entry of the new term: commits everything before it, and gates ReadIndex
        # and membership changes (thesis §6.4, §4.1).
        self._append_new([(b"", EntryKind.NORMAL)])

    def _campaign(self, *, pre_vote: bool, transfer: bool = False) -> None:
        if pre_vote:
            self._become_pre_candidate()
            vote_term = self.term + 1
            kind = MT.PRE_VOTE
        else:
            self._become_candidate()
            vote_term = self.term
            kind = MT.VOTE
        self.votes[self.id] = True
        if self._poll():
            return
        last_index, last_term = self.log.last_index(), self.log.last_term()
        for voter in sorted(self.configuration.voters):
            if voter != self.id:
                self._send(
                    Message(
                        kind,
                        to=voter,
                        frm=self.id,
                        term=vote_term,
                        index=last_index,
                        log_term=last_term,
                        transfer=transfer,
                    )
                )

    def _poll(self) -> bool:
        """Count votes; act when the outcome is known. True if the role changed."""
        result = quorum.vote_result(self.configuration.voters, self.votes)
        if result is None:
            return False
        if result:
            if self.role == Role.PRE_CANDIDATE:
                self._campaign(pre_vote=False)
            else:
                self._become_leader()
        else:
            self._become_follower(self.term, 0)
        return True

    # -------------------------------------------------------------------------- ticks

    def tick(self) -> None:
        self._ticks += 1
        if self.role == Role.LEADER:
            self._tick_leader()
        else:
            self.election_elapsed += 1
            if self.election_elapsed >= self._randomized_election_timeout and self._promotable():
                self.election_elapsed = 0
                self._campaign(pre_vote=self.config.pre_vote)

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.config.election_tick:
            self.election_elapsed = 0
            if self.config.check_quorum:
                active = {n for n, pr in self.progress.items() if pr.recent_active or n == self.id}
                if not quorum.has_quorum(self.configuration.voters, active):
                    self._become_follower(self.term, 0)
                    return
                for node, pr in self.progress.items():
                    pr.recent_active = node == self.id
            self.lead_transferee = 0
        if self.heartbeat_elapsed >= self.config.heartbeat_tick:
            self.heartbeat_elapsed = 0
            # The newest pending read batch rides along, so a lost read round is retried;
            # an answer releases that batch and every earlier one.
            self._broadcast_heartbeat(max(self._read_batches, default=0))

    # --------------------------------------------------------------------------- step

    def step(self, m: Message) -> None:
        if m.to != self.id:
            raise InvariantViolation(f"message for {m.to} stepped into {self.id}")
        if m.term > self.term:
            if m.type in (MT.VOTE, MT.PRE_VOTE):
                in_lease = (
                    self.config.check_quorum
                    and self.leader != 0
                    and self.election_elapsed < self.config.election_tick
                )
                if in_lease and not m.transfer:
                    return  # a live leader is known: do not let this candidate disrupt it
            if m.type == MT.PRE_VOTE or (m.type == MT.PRE_VOTE_RESP and not m.reject):
                pass  # pre-votes never change our term
            elif m.type in (MT.APPEND, MT.HEARTBEAT, MT.SNAPSHOT):
                self._become_follower(m.term, m.frm)
            else:
                self._become_follower(m.term, 0)
        elif m.term < self.term:
            if m.type in (MT.APPEND, MT.HEARTBEAT) and (
                self.config.check_quorum or self.config.pre_vote
            ):
                # A deposed leader: our higher term makes it step down.
                self._send(Message(MT.APPEND_RESP, to=m.frm, frm=self.id, term=self.term))
            elif m.type == MT.PRE_VOTE:
                self._send(
                    Message(MT.PRE_VOTE_RESP, to=m.frm, frm=self.id, term=self.term, reject=True)
                )
            return

        if m.type in (MT.VOTE, MT.PRE_VOTE):
            self._handle_vote_request(m)
        elif self.role == Role.LEADER:
            self._step_leader(m)
        elif self.role == Role.FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    def _handle_vote_request(self, m: Message) -> None:
        can_vote = (
            self.vote == m.frm
            or (self.vote == 0 and self.leader == 0)
            or (m.type == MT.PRE_VOTE and m.term > self.term)
        )
        response = MT.VOTE_RESP if m.type == MT.VOTE else MT.PRE_VOTE_RESP
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            self._send(Message(response, to=m.frm, frm=self.id, term=m.term))
            if m.type == MT.VOTE:
                if self.vote not in (0, m.frm):
                    raise InvariantViolation(
                        f"node {self.id} votes for {m.frm} in term {self.term} after voting "
                        f"for {self.vote}"
                    )
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(Message(response, to=m.frm, frm=self.id, term=self.term, reject=True))

    def _step_follower(self, m: Message) -> None:
        if m.type in (MT.APPEND, MT.HEARTBEAT, MT.SNAPSHOT):
            self.election_elapsed = 0
            self.leader = m.frm
            if m.type == MT.APPEND:
                self._handle_append(m)
            elif m.type == MT.HEARTBEAT:
                self._handle_heartbeat(m)
            else:
                self._handle_snapshot(m)
        elif m.type == MT.TIMEOUT_NOW and self._promotable():
            self._campaign(pre_vote=False, transfer=True)

    def _step_candidate(self, m: Message) -> None:
        if m.type in (MT.APPEND, MT.HEARTBEAT, MT.SNAPSHOT):
            self._become_follower(self.term, m.frm)
            self._step_follower(m)
            return
        expected = MT.PRE_VOTE_RESP if self.role == Role.PRE_CANDIDATE else MT.VOTE_RESP
        if m.type == expected:
            self.votes.setdefault(m.frm, not m.reject)
            self._poll()

    def _step_leader(self, m: Message) -> None:
        pr = self.progress.get(m.frm)
        if pr is None:
            return
        if m.type == MT.APPEND_RESP:
            pr.recent_active = True
            if m.context:
                self._handle_read_ack(m.context, m.frm)
            self._handle_append_response(m, pr)
        elif m.type == MT.HEARTBEAT_RESP:
            pr.recent_active = True
            pr.probe_sent = False
            if (
                pr.state == ProgressState.REPLICATE
                and len(pr.inflight) >= self.config.max_inflight_appends
            ):
                pr.inflight.popleft()  # an append may have been lost: make room to retry
            if (
                pr.state == ProgressState.SNAPSHOT
                and self._ticks - pr.snapshot_sent_tick >= self.config.election_tick
            ):
                pr.become_probe()  # the snapshot was lost: send it again
            if pr.match_index < self.log.last_index():
                self._send_append(m.frm)
            if m.context:
                self._handle_read_ack(m.context, m.frm)

    # ------------------------------------------------------------------ replication

    def _handle_append(self, m: Message) -> None:
        if m.index < self.log.commit_index:
            self._send(
                Message(
                    MT.APPEND_RESP, to=m.frm, frm=self.id, term=self.term,
                    index=self.log.commit_index, context=m.context,
                )
            )
            return
        last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is None:
            # Point the leader at the last entry that could match: no later than our log
            # ends, and skipping every entry of a term above the leader's prev term.
            hint = self.log.find_conflict_by_term(min(m.index, self.log.last_index()), m.log_term)
            self._send(
                Message(
                    MT.APPEND_RESP, to=m.frm, frm=self.id, term=self.term, index=m.index,
                    reject=True, reject_hint=hint, log_term=self.log.term_at(hint) or 0,
                    context=m.context,
                )
            )
            return
        self._after_follower_append(m.entries)
        self._send(
            Message(
                MT.APPEND_RESP, to=m.frm, frm=self.id, term=self.term, index=last_new,
                context=m.context,
            )
        )

    def _handle_heartbeat(self, m: Message) -> None:
        self.log.commit_to(m.commit)
        self._send(
            Message(MT.HEARTBEAT_RESP, to=m.frm, frm=self.id, term=self.term, context=m.context)
        )

    def _handle_snapshot(self, m: Message) -> None:
        snapshot = m.snapshot
        invariant(snapshot is not None, "SNAPSHOT message without a snapshot")
        assert snapshot is not None
        meta = snapshot.meta
        if meta.index <= self.log.commit_index:
            answer = self.log.commit_index
        elif self.log.match_term(meta.index, meta.term):
            self.log.commit_to(meta.index)  # we hold the same log already: fast-forward
            answer = meta.index
        else:
            self.log.restore(snapshot)
            self._set_configuration(meta.configuration, meta.index, meta.term)
            answer = meta.index
        self._send(Message(MT.APPEND_RESP, to=m.frm, frm=self.id, term=self.term, index=answer))

    def _handle_append_response(self, m: Message, pr: Progress) -> None:
        if m.reject:
            hint = m.reject_hint
            if m.log_term > 0:  # skip our own entries of terms the follower does not hold
                hint = self.log.find_conflict_by_term(hint, m.log_term)
            if pr.maybe_decrease(m.index, hint):
                if pr.state == ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.frm)
            return
        was_paused = pr.is_paused(self.config.max_inflight_appends)
        if not pr.maybe_update(m.index):
            return
        if pr.state == ProgressState.PROBE or (
            pr.state == ProgressState.SNAPSHOT and pr.match_index >= pr.pending_snapshot
        ):
            pr.become_replicate()
        # A new commit index reaches followers with the next append or heartbeat. A match
        # raised to at most the commit index cannot raise the quorum's index past it (the
        # usual second acknowledgement of an entry): no count then. (A voter's removal
        # may have raised the quorum's index already; it is counted at the next
        # acknowledgement past the commit index, or the leader's own after its fsync.)
        if (pr.match_index > self.log.commit_index and self._maybe_commit()
                and self.role != Role.LEADER):
            return  # the commit removed this leader from the group
        if was_paused:
            self._send_append(m.frm)
        last_index = self.log.last_index()
        while pr.next_index <= last_index and self._send_append(m.frm, send_if_empty=False):
            pass
        if m.frm == self.lead_transferee and pr.match_index == self.log.last_index():
            self._send(Message(MT.TIMEOUT_NOW, to=m.frm, frm=self.id, term=self.term))

    def _send_append(self, to: int, *, send_if_empty: bool = True) -> bool:
        """Send `to` what it lacks (or a snapshot); False if nothing was sent."""
        pr = self.progress[to]
        if to == self.id or pr.is_paused(self.config.max_inflight_appends):
            return False
        prev_index = pr.next_index - 1
        prev_term = self.log.term_at(prev_index)
        if prev_term is None:
            return self._send_snapshot(to, pr)
        entries = self.log.slice(
            pr.next_index, self.log.last_index() + 1, self.config.max_entries_per_append
        )
        if not entries and not send_if_empty:
            return False
        self._send(
            Message(
                MT.APPEND, to=to, frm=self.id, term=self.term, index=prev_index,
                log_term=prev_term, entries=tuple(entries), commit=self.log.commit_index,
            )
        )
        pr.sent_entries(prev_index + len(entries))
        return True

    def _send_snapshot(self, to: int, pr: Progress) -> bool:
        snapshot = self.log.snapshot
        invariant(snapshot is not None, f"entries before {pr.next_index} compacted, no snapshot")
        assert snapshot is not None
        self._send(Message(MT.SNAPSHOT, to=to, frm=self.id, term=self.term, snapshot=snapshot))
        pr.become_snapshot(snapshot.meta.index, self._ticks)
        return True

    def _broadcast_append(self) -> None:
        for node in self.progress:
            if node != self.id:
                self._send_append(node)

    def _broadcast_heartbeat(self, context: int) -> None:
        for node, pr in self.progress.items():
            if node != self.id:
                self._send_heartbeat(node, pr, context)

    def _send_heartbeat(self, to: int, pr: Progress, context: int) -> None:
        """Commit only up to what `to` is known to hold: its log may end before ours."""
        commit = min(pr.match_index, self.log.commit_index)
        self._send(
            Message(MT.HEARTBEAT, to=to, frm=self.id, term=self.term, commit=commit,
                    context=context)
        )

    def _is_committable(self, index: int) -> bool:
        """§5.4.2: only an entry of the current term is committed by counting replicas."""
        return self.log.term_at(index) == self.term

    def _maybe_commit(self) -> bool:
        match = {node: pr.match_index for node, pr in self.progress.items()}
        index = quorum.committed_index(self.configuration.voters, match)
        if index <= self.log.commit_index or not self._is_committable(index):
            return False
        self.log.commit_to(index)
        self._on_commit_advanced()
        return True

    def _on_commit_advanced(self) -> None:
        if self._reads_waiting_for_commit and self._committed_in_current_term():
            self._reads_to_register.extend(self._reads_waiting_for_commit)
            self._reads_waiting_for_commit = []
        if (
            self.role == Role.LEADER
            and self.id not in self.configuration.voters
            and self.log.commit_index >= self.conf_index
        ):
            self._hand_over_after_removal()

    def _hand_over_after_removal(self) -> None:
        """The leader's own removal is committed: hand over to the best voter, step down."""
        candidates = [
            (pr.match_index, -node) for node, pr in self.progress.items()
            if node in self.configuration.voters
        ]
        if candidates:
            _, negated = max(candidates)
            self._send_append(-negated)
            self._send(Message(MT.TIMEOUT_NOW, to=-negated, frm=self.id, term=self.term))
        self._become_follower(self.term, 0)

    def _committed_in_current_term(self) -> bool:
        return self.log.term_at(self.log.commit_index) == self.term

    def _on_leader_append(self, last_index: int) -> None:
        """New entries are in the leader's memory only; its own copy counts after advance()."""
        self._pending_broadcast = True

    def _self_acknowledge(self, index: int) -> None:
        pr = self.progress.get(self.id)
        if pr is not None and pr.maybe_update(index):
            self._maybe_commit()

    # ----------------------------------------------------------------- user requests

    def _check_can_propose(self) -> None:
        if self.role != Role.LEADER:
            raise NotLeaderError(self.leader)
        if self.lead_transferee:
            raise TransferInProgress(f"leadership is moving to node {self.lead_transferee}")
        uncommitted = self.log.last_index() - self.log.commit_index
        if uncommitted >= self.config.max_uncommitted_entries:
            raise ProposalDropped(
                f"{uncommitted} entries await commit (max_uncommitted_entries="
                f"{self.config.max_uncommitted_entries})"
            )

    def _append_new(self, items: list[tuple[bytes, EntryKind]]) -> tuple[int, int]:
        first = self.log.last_index() + 1
        entries = [
            Entry(first + offset, self.term, data, kind)
            for offset, (data, kind) in enumerate(items)
        ]
        self.log.append(entries)
        self._on_leader_append(self.log.last_index())
        return first, self.term

    def propose(self, data: bytes) -> tuple[int, int]:
        """Append `data` to the log; returns its (index, term). The proposal succeeded if
        the entry applied at that index has that term."""
        self._check_can_propose()
        return self._append_new([(data, EntryKind.NORMAL)])

    def propose_batch(self, items: list[bytes]) -> tuple[int, int]:
        """Append several commands at once; returns the first index and the term."""
        self._check_can_propose()
        invariant(bool(items), "propose_batch of nothing")
        return self._append_new([(data, EntryKind.NORMAL) for data in items])

    def propose_conf_change(self, change: str, node: int) -> tuple[int, int]:
        """Change membership by one step: `add_learner`, `promote` or `remove`."""
        self._check_can_propose()
        if self.conf_index > self.log.commit_index or not self._committed_in_current_term():
            raise ConfChangeInProgress("the previous membership change is not committed yet")
        current = self.configuration
        if change == "add_learner":
            if node in current.members:
                raise ProposalDropped(f"node {node} is already a member")
            new = Configuration(current.voters, current.learners | {node})
        elif change == "promote":
            if node not in current.learners:
                raise ProposalDropped(f"node {node} is not a learner")
            new = Configuration(current.voters | {node}, current.learners - {node})
        elif change == "remove":
            if node not in current.members:
                raise ProposalDropped(f"node {node} is not a member")
            if current.voters == {node}:
                raise ProposalDropped("cannot remove the last voter")
            new = Configuration(current.voters - {node}, current.learners - {node})
        else:
            raise ProposalDropped(f"unknown membership change {change!r}")
        result = self._append_new([(new.encode(), EntryKind.CONF)])
        self._set_configuration(new, result[0], result[1])
        return result

    def read_index(self, request_id: int) -> None:
        """Register a linearizable read; a ReadState with `request_id` comes in a Ready."""
        if self.role != Role.LEADER:
            raise NotLeaderError(self.leader)
        pending = (
            len(self._reads_waiting_for_commit)
            + len(self._reads_to_register)
            + sum(len(b.request_ids) for b in self._read_batches.values())
        )
        if pending >= self.config.max_pending_reads:
            raise ProposalDropped(
                f"{pending} reads pending (max_pending_reads={self.config.max_pending_reads})"
            )
        if not self._committed_in_current_term():
            self._reads_waiting_for_commit.append(request_id)
        elif not self._reads_need_quorum_check():
            self._read_states.append(ReadState(self.log.commit_index, request_id))
        else:
            self._reads_to_register.append(request_id)

    def _reads_need_quorum_check(self) -> bool:
        """A lone voter is its own quorum; otherwise leadership must be confirmed."""
        return self.configuration.voters != {self.id}

    def _register_reads(self) -> None:
        self._next_read_batch += 1
        batch_id = self._next_read_batch
        batch = _ReadBatch(self.log.commit_index, self._reads_to_register, {self.id})
        self._reads_to_register = []
        self._read_batches[batch_id] = batch
        if quorum.has_quorum(self.configuration.voters, batch.acks):
            self._release_reads_up_to(batch_id)  # the leader alone is a quorum
            return
        # Any answer to a message sent from now on confirms leadership: ride on the
        # appends this Ready sends anyway, and send heartbeats only to the others.
        # The messages are still ours: ready() has not handed this list out yet.
        riding = {m.to: m for m in self._msgs if m.type == MT.APPEND and m.term == self.term}
        for node, pr in self.progress.items():
            if node == self.id:
                continue
            append = riding.get(node)
            if append is not None:
                append.context = batch_id
            else:
                self._send_heartbeat(node, pr, batch_id)

    def _handle_read_ack(self, batch_id: int, node: int) -> None:
        batch = self._read_batches.get(batch_id)
        if batch is None:
            return
        batch.acks.add(node)
        if quorum.has_quorum(self.configuration.voters, batch.acks):
            self._release_reads_up_to(batch_id)

    def _recheck_read_batches(self) -> None:
        """The voters changed: a batch may now hold a quorum of acknowledgements."""
        for batch_id in sorted(self._read_batches, reverse=True):
            batch = self._read_batches[batch_id]
            if quorum.has_quorum(self.configuration.voters, batch.acks):
                self._release_reads_up_to(batch_id)
                return

    def _release_reads_up_to(self, batch_id: int) -> None:
        """A quorum answered a heartbeat sent after every earlier batch: release them all."""
        for earlier in sorted(b for b in self._read_batches if b <= batch_id):
            released = self._read_batches.pop(earlier)
            for request_id in released.request_ids:
                self._read_states.append(ReadState(released.index, request_id))

    def transfer_leadership(self, to: int) -> None:
        """Hand leadership to voter `to` once its log is caught up (thesis §3.10)."""
        if self.role != Role.LEADER:
            raise NotLeaderError(self.leader)
        if to == self.id or to not in self.configuration.voters:
            raise ProposalDropped(f"node {to} cannot take leadership")
        if self.lead_transferee == to:
            return
        self.lead_transferee = to
        self.election_elapsed = 0
        if self.progress[to].match_index == self.log.last_index():
            self._send(Message(MT.TIMEOUT_NOW, to=to, frm=self.id, term=self.term))
        else:
            self._send_append(to)

    def campaign(self) -> None:
        """Start an election now (used to bootstrap a single-node group quickly)."""
        if self.role != Role.LEADER and self._promotable():
            self._campaign(pre_vote=self.config.pre_vote)

    def compact(self, index: int, data: bytes) -> bool:
        """The state machine's state at applied `index` is `data`: cut the log there.

        Returns False, and keeps the log, when the configuration in force at `index` is
        unknown here (a node that joined late holds no CONF entry that early): such a
        snapshot would tell whoever installs it that the group has no members.
        """
        term = self.log.term_at(index)
        invariant(term is not None, f"compact at {index}: entry not in the log")
        assert term is not None
        configuration = self._configuration_at(index)
        if not configuration.voters:
            return False
        self.log.compact(Snapshot(SnapshotMeta(index, term, configuration), data))
        return True

    # ------------------------------------------------------------------- Ready/advance

    def _send(self, m: Message) -> None:
        m.group = self.group
        self._msgs.append(m)

    def _flush(self) -> None:
        """Send what proposals and reads gathered since the last Ready, batched."""
        if self.role == Role.LEADER:
            if self._pending_broadcast:
                self._pending_broadcast = False
                self._broadcast_append()
            if self._reads_to_register:
                self._register_reads()

    def _hard_state_changed(self) -> bool:
        persisted = self._persisted_hard_state
        return (
            persisted.commit != self.log.commit_index
            or persisted.term != self.term
            or persisted.vote != self.vote
        )

    def has_ready(self) -> bool:
        if self.role == Role.LEADER:
            self._flush()
        return bool(self._msgs) or self._has_work()

    def _has_work(self) -> bool:
        """Something for a Ready besides messages."""
        log = self.log
        soft = self._soft_state
        return bool(
            log.stable_index < log.last_index()
            or log.pending_snapshot is not None
            or log.applied_index < log.apply_limit()
            or self._read_states
            or self._dropped_reads
            or self._hard_state_changed()
            or soft.leader != self.leader
            or soft.role != self.role
        )

    def ready(self) -> Ready:
        """The next Ready, empty when there is nothing to do (see take_ready)."""
        rd = self.take_ready()
        if rd is None:
            rd = Ready(appends_may_precede_persist=self._appends_may_precede_persist())
            self._ready_outstanding = True
        return rd

    def take_ready(self) -> Ready | None:
        """has_ready() and ready() in one pass: the next Ready, or None (and nothing
        outstanding) when there is nothing to do. A busy node's driver asks every shard
        that a message touched, once per turn."""
        invariant(not self._ready_outstanding, "ready() called before advance()")
        self._flush()
        if not self._msgs and not self._has_work():
            return None
        log = self.log
        soft = self._soft_state
        rd = Ready()
        if self._hard_state_changed():
            rd.hard_state = HardState(self.term, self.vote, log.commit_index)
        if log.stable_index < log.last_index():
            rd.entries = log.unstable_entries()
        rd.snapshot = log.pending_snapshot
        if log.applied_index < log.apply_limit():
            rd.committed_entries = log.next_committed_entries(MAX_APPLY_BATCH)
        if self._msgs:
            rd.messages, self._msgs = self._msgs, []
        if self._read_states:
            rd.read_states, self._read_states = self._read_states, []
        if self._dropped_reads:
            rd.dropped_reads, self._dropped_reads = self._dropped_reads, []
        if soft.leader != self.leader or soft.role != self.role:
            rd.soft_state = self._soft_state = SoftState(self.leader, self.role)
        rd.appends_may_precede_persist = self._appends_may_precede_persist()
        self._ready_outstanding = True
        return rd

    def _appends_may_precede_persist(self) -> bool:
        # Thesis §10.2.1: a leader's appends may leave before its own fsync, but only when
        # its term and vote are already durable. A lone voter wins within one tick, so its
        # first Ready can carry both a new term and appends of that term.
        persisted = self._persisted_hard_state
        return self.role == Role.LEADER and (
            persisted.term == self.term and persisted.vote == self.vote
        )

    def advance(self, rd: Ready) -> None:
        invariant(self._ready_outstanding, "advance() without a ready()")
        self._ready_outstanding = False
        if rd.hard_state is not None:
            self._persisted_hard_state = rd.hard_state
        if rd.snapshot is not None:
            if self.log.pending_snapshot is rd.snapshot:
                self.log.pending_snapshot = None
            if rd.snapshot.meta.index > self.log.applied_index:
                self.log.applied_to(rd.snapshot.meta.index)  # the driver restored it
        if rd.entries:
            last = rd.entries[-1]
            self.log.stable_to(last.index, last.term)
        if rd.committed_entries:
            last_applied = rd.committed_entries[-1].index
            if last_applied > self.log.applied_index:  # else a snapshot came in meanwhile
                self.log.applied_to(last_applied)
        if self.role == Role.LEADER:
            self._self_acknowledge(self.log.stable_index)
        self._check_invariants()

    def _check_invariants(self) -> None:
        """Checked after every Ready: one cheap test, the details only on failure."""
        log = self.log
        last_index = log.snapshot_index + len(log.entries)
        role = self.role
        if (
            log.applied_index <= log.apply_limit()
            and log.commit_index <= last_index
            and log.stable_index <= last_index
            and (role != Role.LEADER or self.leader == self.id)
            and (role != Role.CANDIDATE or self.vote == self.id)
        ):
            return
        invariant(log.applied_index <= log.apply_limit(), "applied past the apply limit")
        invariant(log.commit_index <= last_index, "commit index beyond the log")
        invariant(log.stable_index <= last_index, "stable index beyond the log")
        invariant(role != Role.LEADER or self.leader == self.id, "leader without itself")
        invariant(role != Role.CANDIDATE or self.vote == self.id, "candidate without vote")

    # --------------------------------------------------------------------- inspection

    def status(self) -> dict[str, object]:
        """A read-only summary for status pages and tests."""
        return {
            "id": self.id,
            "group": self.group,
            "role": self.role.name.lower(),
            "term": self.term,
            "vote": self.vote,
            "leader": self.leader,
            "commit_index": self.log.commit_index,
            "applied_index": self.log.applied_index,
            "last_index": self.log.last_index(),
            "voters": sorted(self.configuration.voters),
            "learners": sorted(self.configuration.learners),
            "match_index": {n: pr.match_index for n, pr in sorted(self.progress.items())},
        }
