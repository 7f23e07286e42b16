"""The values that cross the boundary of the Raft core.

Everything here is plain data. `Message` is one record for every message type
(as etcd's raftpb.Message is): a type tag and the fields that type uses, so the
transport encodes one shape. Field meanings by type:

  APPEND            index/log_term: the entry just before `entries`; commit: leader's commit;
                    context: a read batch id riding along (0 if none)
  APPEND_RESP       index: highest index now matching the leader (or the rejected prev index);
                    reject + reject_hint/log_term: the follower's last entry that could
                    match (and its term), so the leader skips back a term at a time;
                    context: echoed read batch id
  VOTE, PRE_VOTE    index/log_term: candidate's last entry; transfer: forced by TIMEOUT_NOW
  *_RESP            reject: vote refused
  HEARTBEAT         commit: min(follower's match, leader's commit); context: read batch id
  HEARTBEAT_RESP    context: echoed read batch id
  SNAPSHOT          snapshot: the leader's latest snapshot
  TIMEOUT_NOW       the receiver should campaign at once (leadership transfer)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum


class MessageType(IntEnum):
    APPEND = 1
    APPEND_RESP = 2
    VOTE = 3
    VOTE_RESP = 4
    PRE_VOTE = 5
    PRE_VOTE_RESP = 6
    HEARTBEAT = 7
    HEARTBEAT_RESP = 8
    SNAPSHOT = 9
    TIMEOUT_NOW = 10


class EntryKind(IntEnum):
    NORMAL = 0
    CONF = 1
    """The data is an encoded `Configuration`; it takes effect once appended."""


class Role(IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


@dataclass(frozen=True, slots=True)
class Entry:
    index: int
    term: int
    data: bytes = b""
    kind: EntryKind = EntryKind.NORMAL


@dataclass(frozen=True, slots=True)
class Configuration:
    """Who votes and who only listens. Changes go one voter at a time."""

    voters: frozenset[int]
    learners: frozenset[int] = frozenset()

    def encode(self) -> bytes:
        voters = ",".join(str(v) for v in sorted(self.voters))
        learners = ",".join(str(v) for v in sorted(self.learners))
        return f"{voters};{learners}".encode()

    @staticmethod
    def decode(data: bytes) -> Configuration:
        voters, learners = data.decode().split(";")
        return Configuration(
            voters=frozenset(int(v) for v in voters.split(",") if v),
            learners=frozenset(int(v) for v in learners.split(",") if v),
        )

    @property
    def members(self) -> frozenset[int]:
        return self.voters | self.learners


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    index: int
    term: int
    configuration: Configuration


@dataclass(frozen=True, slots=True)
class Snapshot:
    meta: SnapshotMeta
    data: bytes
    """The state machine's own encoding of its state at `meta.index`; opaque to Raft."""


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be on stable storage before any message of the same Ready is sent."""

    term: int = 0
    vote: int = 0
    commit: int = 0


@dataclass(slots=True)
class Message:
    type: MessageType
    to: int
    frm: int
    term: int
    group: int = 0
    index: int = 0
    log_term: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    context: int = 0
    snapshot: Snapshot | None = None
    transfer: bool = False


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once `applied_index >= index`."""

    index: int
    request_id: int


@dataclass(frozen=True, slots=True)
class SoftState:
    leader: int
    role: Role


@dataclass(slots=True)
class Ready:
    """One batch of work for the driver, in this order:

    1. persist `snapshot`, `entries` (they replace any stored entry at the same or a
       higher index) and `hard_state`, and fsync;
    2. send `messages`;
    3. restore the state machine from `snapshot`, then apply `committed_entries`;
    4. serve `read_states` once applied; fail `dropped_reads`;
    5. call `Raft.advance(ready)`.

    One exception to the order (Raft thesis §10.2.1): when `appends_may_precede_persist`
    is set (a leader whose term and vote are already durable), its APPEND messages may
    be sent before step 1 completes, so the leader's disk write overlaps replication;
    the leader counts its own copy of an entry only after `advance`.

    Persisting a snapshot replaces the whole stored log up to its index; stored entries
    after it are kept only if the entry at the snapshot's index has the snapshot's term.

    On restart the driver restores the state machine from its own persisted snapshot;
    Ready then hands out the committed entries that follow it.
    """

    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None
    committed_entries: list[Entry] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    dropped_reads: list[int] = field(default_factory=list)
    soft_state: SoftState | None = None
    appends_may_precede_persist: bool = False
    """True when this Ready's APPEND messages may be sent before step 1 completes."""
