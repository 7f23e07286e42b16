"""One shard's replica on this node: its Raft core, its state machine, and the requests
waiting on them.

The replica does no I/O and reads no clock: the node persists and sends what `Ready`
hands out, then calls `finish`, which applies committed entries, answers the proposals
and reads they complete, and advances the core. A request is answered exactly once:
by its entry's result, by a read, or by an error when the entry or read is lost
(leadership changed, a snapshot replaced the log).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from ringlock import errors
from ringlock.errors import CommandFailed, NotLeader, ProposalDropped, RequestError, Unavailable
from ringlock.raft.config import RaftConfig
from ringlock.raft.core import Raft
from ringlock.raft.messages import (
    Configuration,
    EntryKind,
    HardState,
    Ready,
    Role,
    Snapshot,
)
from ringlock.statemachine import kv, locks
from ringlock.statemachine.kv import ShardStateMachine


class Machine(Protocol):
    """What a replica needs of its state machine: the KV shard's, or the meta group's."""

    applied_index: int

    def apply(self, index: int, command: bytes) -> Any: ...

    def snapshot(self) -> bytes: ...

    def close(self) -> None:
        """The replica is done with this machine: it was replaced or the replica left."""


class ApplyListener(Protocol):
    """Told of what a replica applies: the node's open lock waits (`LockOps`)."""

    def after_apply(self, replica: Any, result: Any) -> None: ...

    def after_restore(self, replica: Any) -> None: ...

    def on_leadership_lost(self, replica: Any) -> None: ...


M = TypeVar("M", bound=Machine)

Reply = Callable[[Any, RequestError | None], None]
"""Answer a request: (result, None) or (None, error)."""
_Read = tuple[Callable[[], None], Reply]
"""A pending read: what serves it once applied, and how to fail it."""


class ShardReplica(Generic[M]):
    """A replica of one Raft group: a KV shard (the default machine) or the meta group.

    `voters` bootstraps a brand-new group and is ignored once the log or a snapshot
    names a configuration; a replica created to join an existing group (a learner
    being added) passes none and stays passive until the leader's snapshot names it.
    """

    def __init__(
        self,
        config: RaftConfig,
        voters: list[int],
        *,
        hard_state: HardState | None,
        snapshot: Snapshot | None,
        entries: list[Any],
        address_of: Callable[[int], str | None],
        restore: Callable[[bytes], M] = ShardStateMachine.restore,  # type: ignore[assignment]
        empty: Callable[[], M] = ShardStateMachine,  # type: ignore[assignment]
    ) -> None:
        self.shard = config.group_id
        self.raft = Raft(
            config,
            bootstrap=Configuration(frozenset(voters)) if voters else None,
            hard_state=hard_state,
            snapshot=snapshot,
            entries=entries,
        )
        self._restore = restore
        self.sm: M = restore(snapshot.data) if snapshot else empty()
        self.raft.log.forget_snapshot_data()
        self._address_of = address_of
        self._durable_term_vote = (hard_state.term, hard_state.vote) if hard_state else (0, 0)
        self._proposals: dict[int, tuple[int, Reply]] = {}
        self._reads: dict[int, _Read] = {}
        self._reads_waiting: list[tuple[int, _Read]] = []
        self._next_read = 0
        self.lease_deadlines: dict[int, float] = {}
        """Leader only: lease id -> monotonic deadline, kept in the leader's memory as
        etcd does; a new leader starts every lease's clock afresh."""
        self.lease_expiring: set[int] = set()
        """Leader only: leases whose revoke this leader proposed, not yet applied."""
        self.lease_clock_term = 0
        """The term whose leadership `lease_deadlines` were set in."""
        self.listener: ApplyListener | None = None
        self._leading = False

    # ------------------------------------------------------------------ requests

    def live_lease_ttl_ms(self, lease: int) -> int | None:
        """The lease's TTL if it lives and this leader is not already revoking it (a
        keepalive must not revive a lease whose expiry was decided, as etcd's Renew)."""
        held = getattr(self.sm, "leases", {}).get(lease)
        if held is None or lease in self.lease_expiring:
            return None
        return int(held[0])

    def not_leader(self) -> NotLeader:
        leader = self.raft.leader
        address = self._address_of(leader) if leader else None
        return NotLeader(f"node {self.raft.id} does not lead shard {self.shard}", address)

    def propose(self, command: bytes, reply: Reply) -> None:
        if self.raft.role != Role.LEADER:
            reply(None, self.not_leader())
            return
        try:
            index, term = self.raft.propose(command)
        except ProposalDropped as error:
            reply(None, Unavailable(f"shard {self.shard}: {error}"))
            return
        self._proposals[index] = (term, reply)

    def read(self, serve: Callable[[], None], reply: Reply) -> None:
        """Serve `serve` once this replica has applied everything committed before now,
        as confirmed by a quorum (ReadIndex): a linearizable read."""
        if self.raft.role != Role.LEADER:
            reply(None, self.not_leader())
            return
        self._next_read += 1
        try:
            self.raft.read_index(self._next_read)
        except ProposalDropped as error:
            reply(None, Unavailable(f"shard {self.shard}: {error}"))
            return
        self._reads[self._next_read] = (serve, reply)

    # ----------------------------------------------------------------- the Ready

    def needs_another_turn(self) -> bool:
        """Work that `advance` itself made. Messages stepped during the turn marked their
        shard already; what is left is a leader's own copy now counting towards commit,
        and committed entries beyond one Ready's apply batch. Cheaper than has_ready(),
        which every follower would pass through once more per turn for nothing."""
        raft = self.raft
        if raft.role == Role.LEADER:
            return raft.has_ready()
        log = raft.log
        return log.applied_index < log.commit_index

    def hard_state_to_persist(self, hard_state: HardState | None) -> HardState | None:
        """What of a Ready's hard state goes to the log: only a change of term or vote.
        Raft needs those durable before it speaks; the commit index is a hint a restarted
        replica learns again from its leader, not worth a record (and an fsync) per Ready.
        The caller writes what this returns."""
        if hard_state is None or (hard_state.term, hard_state.vote) == self._durable_term_vote:
            return None
        self._durable_term_vote = (hard_state.term, hard_state.vote)
        return hard_state

    def apply(self, rd: Ready) -> None:
        """Apply what `rd` commits and answer the requests it completes.

        This may run before `rd`'s own entries are persisted: a committed entry is
        already durable on a quorum, so applying it (and answering its client) early is
        safe, as etcd's server does; only `advance` must wait for the fsync.
        """
        if rd.snapshot is not None:
            self.sm.close()
            self.sm = self._restore(rd.snapshot.data)
            covered = rd.snapshot.meta.index
            self._fail_proposals(lambda index: index <= covered)
            if self.listener is not None:
                self.listener.after_restore(self)
        listener = self.listener
        for entry in rd.committed_entries:
            data = entry.data if entry.kind == EntryKind.NORMAL else b""
            result = self.sm.apply(entry.index, data)
            pending = self._proposals.pop(entry.index, None)
            if pending is not None:
                term, reply = pending
                if term == entry.term:
                    if isinstance(result, Exception):
                        reply(None, _command_failed(result))
                    else:
                        reply(result, None)
                else:
                    reply(None, Unavailable(f"shard {self.shard}: leadership changed"))
            if listener is not None:  # after the proposer's answer: it may open a wait
                listener.after_apply(self, result)
        for read_state in rd.read_states:
            read = self._reads.pop(read_state.request_id, None)
            if read is not None:
                self._reads_waiting.append((read_state.index, read))
        for request_id in rd.dropped_reads:
            read = self._reads.pop(request_id, None)
            if read is not None:
                self._reads_waiting.append((-1, read))
        self._serve_reads()

    def advance(self, rd: Ready) -> None:
        """`rd` is persisted and its messages sent: let the core move on."""
        self.raft.advance(rd)
        if rd.snapshot is not None:
            self.raft.log.forget_snapshot_data()  # it is in its file now
        self._serve_reads()
        leading = self.raft.role == Role.LEADER
        if self._leading and not leading and self.listener is not None:
            self.listener.on_leadership_lost(self)
        self._leading = leading
        if not leading and self._proposals:
            # A deposed leader's entries may still commit (under the new leader) or be
            # overwritten; we cannot tell which, so the client must retry with the same
            # request id, and de-duplication makes the retry safe.
            self._fail_proposals(lambda index: True)

    def _serve_reads(self) -> None:
        if not self._reads_waiting:
            return
        applied = self.sm.applied_index
        waiting = []
        for index, read in self._reads_waiting:
            if index < 0 or self.raft.role != Role.LEADER:
                read[1](None, Unavailable(f"shard {self.shard}: read lost its leader; retry"))
            elif index <= applied:
                read[0]()
            else:
                waiting.append((index, read))
        self._reads_waiting = waiting

    def _fail_proposals(self, which: Callable[[int], bool]) -> None:
        for index in [i for i in self._proposals if which(i)]:
            _, reply = self._proposals.pop(index)
            reply(None, Unavailable(f"shard {self.shard}: leadership changed; outcome unknown"))

    def fail_all(self, error: RequestError) -> None:
        """The node stops: nothing pending will be answered otherwise."""
        for _, reply in self._proposals.values():
            reply(None, error)
        self._proposals.clear()
        for _, read_reply in list(self._reads.values()) + [r for _, r in self._reads_waiting]:
            read_reply(None, error)
        self._reads.clear()
        self._reads_waiting.clear()

    def maybe_compact(self, every: int) -> Snapshot | None:
        log = self.raft.log
        if log.applied_index - log.snapshot_index < every:
            return None
        if not self.raft.compact(log.applied_index, self.sm.snapshot()):
            return None
        snapshot = log.snapshot
        log.forget_snapshot_data()  # the caller saves it to its file; memory keeps the meta
        return snapshot


def _command_failed(error: Exception) -> RequestError:
    """The state machine's refusal, under the client-facing class of the same kind."""
    for kind, cls in _REFUSALS:
        if isinstance(error, kind):
            return cls(str(error))
    return CommandFailed(str(error))


_REFUSALS: tuple[tuple[type[Exception], type[RequestError]], ...] = (
    (locks.FencedOut, errors.FencedOut), (locks.NotHolder, errors.NotHolder),
    (locks.LockLimitExceeded, errors.LockLimitExceeded),
    (kv.LeaseNotFound, errors.NotFound))
