"""Recent changes of one shard, for watches: a bounded, in-memory record.

Why in the state machine: every replica applies every entry in the same order, so every
replica's record of "what changed at revision r" is the same, and any replica (in
practice the leader, where clients are routed) can replay it to a watcher that resumes
after a reconnect. Why bounded and not in snapshots: a watch only needs the recent past
to bridge a reconnect; older history would cost memory on every replica and bytes in
every snapshot. Like etcd's compaction, a watch that asks for revisions older than the
record holds gets `Compacted` and must re-read the keys and start again.

Why the bound is per node (`HistoryBudget`), not per shard: a node holds dozens of
shards and writes are rarely spread evenly over them. A per-shard bound big enough for a
hot shard costs that much on every idle one too: 10,000 changes for each of 64 shards
was 175 MB per node (docs/PERFORMANCE.md). The node forgets its oldest change first,
whichever shard it belongs to, so every shard keeps about the same span of time.

Why a put is kept as the record the shard stored (records.py), not as a copy of its
value: while the key is not written again, the change costs a reference.

`floor`: every change with a revision above `floor` is in the record. A fresh shard
starts at 0 (it has no past); a replica restored from a snapshot starts at the
snapshot's revision (its past went with the log the snapshot replaced); forgetting the
oldest change raises the floor to that change's revision. The floor may differ between
replicas (snapshots are taken at different times, and each node's other shards share its
budget): it is a cache, not replicated state.

Deterministic and free of I/O, as the rest of the state machine.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Iterator
from typing import NamedTuple

from ringlock.invariant import invariant
from ringlock.statemachine.records import META, value_of

MAX_WATCH_HISTORY = 100_000
"""Changes one node remembers, over all its shards: about 12 s of history at 8,000
writes a second, against elections of about a second, and about 7 MB while the keys
are not written again."""
MAX_WATCH_HISTORY_BYTES = 32 * 1024 * 1024
"""Key and value bytes one node remembers, whichever of the two limits comes first:
100,000 values of a megabyte would otherwise pin 100 GB. With values above about 250
bytes this limit comes first, and the history spans less time (about 4 s of 1 KiB
writes at 8,000 a second). A watch's replay is at most this much, which
`MAX_WATCH_BACKLOG_BYTES` (server/watches.py) must allow."""
EVENT_OVERHEAD_BYTES = 64
"""What one change costs beyond its key and value, for the byte limit."""

PUT = "put"
DELETE = "delete"
EXPIRE = "expire"
"""A key deleted because its lease ended (revoked, or expired and revoked by the leader)."""
KINDS = (PUT, DELETE, EXPIRE)


class Change(NamedTuple):
    """One applied change of one key. `value` is None for deletes; `lease` is the key's
    lease for a put, the lease it had for a delete, and the lease that ended for an
    expire."""

    revision: int
    kind: str
    key: bytes
    value: bytes | None
    lease: int


_Kept = Change | tuple[bytes, bytes]
"""A remembered change: a `Change`, or a put as (key, the record the shard stored)."""


class HistoryBudget:
    """The limits that the histories of one node's shards share, and the order in which
    they recorded: over a limit, the node's oldest change is forgotten."""

    def __init__(self, max_events: int = MAX_WATCH_HISTORY,
                 max_bytes: int = MAX_WATCH_HISTORY_BYTES) -> None:
        invariant(max_events >= 1 and max_bytes >= 1, "an empty history budget")
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.bytes = 0
        self._order: deque[WatchHistory] = deque()
        """The history of each remembered change, oldest change first."""
        self._released = 0
        """Entries of `_order` whose history was released: skipped when they come up.
        They are older than every live one, so there are never more than `max_events`."""

    @property
    def events(self) -> int:
        return len(self._order) - self._released

    def _charge(self, history: WatchHistory, cost: int) -> None:
        order = self._order
        order.append(history)
        self.bytes += cost
        while self.events > self.max_events or (self.bytes > self.max_bytes
                                                and self.events > 1):
            oldest = order.popleft()
            if oldest.released:
                self._released -= 1
            else:
                self.bytes -= oldest._forget_oldest()
        invariant(self.bytes >= 0 and self._released >= 0, "history budget below zero")

    def _release(self, history: WatchHistory) -> None:
        self.bytes -= history.size_bytes
        self._released += len(history)


class WatchHistory:
    def __init__(self, floor: int = 0, budget: HistoryBudget | None = None) -> None:
        self.floor = floor
        self.budget = budget if budget is not None else HistoryBudget()
        """Shared by the node's shards; a machine on its own (tests, the simulator) has
        one of its own."""
        self._changes: deque[_Kept] = deque()
        self._last = floor
        self.released = False

    def record(self, revision: int, kind: str, key: bytes, value: bytes | None,
               lease: int) -> None:
        """Remember a change, at a revision above every one remembered, and forget the
        node's oldest ones beyond the budget."""
        self._remember(revision, _new_change((revision, kind, key, value, lease)))

    def record_put(self, revision: int, key: bytes, stored: bytes) -> None:
        """Remember a put by the record the shard stored for it (records.py), which
        carries the revision, lease and value; it is kept, not copied."""
        self._remember(revision, (key, stored))

    def release(self) -> None:
        """The shard's state this history belongs to is gone (a snapshot replaced it, or
        the replica left the node): its changes leave the node's budget now, instead of
        pinning their values until newer changes push them out."""
        if not self.released:
            self.budget._release(self)
            self.released = True
            self._changes.clear()

    def _remember(self, revision: int, kept: _Kept) -> None:
        invariant(not self.released, "a change recorded in a released history")
        if revision <= self._last:
            raise ValueError(f"change at revision {revision} after {self._last}")
        self._last = revision
        self._changes.append(kept)
        self.budget._charge(self, _cost(kept))

    def _forget_oldest(self) -> int:
        """Called by the budget: drop the oldest change, raise the floor to it, and
        return its cost."""
        kept = self._changes.popleft()
        self.floor = _revision(kept)
        return _cost(kept)

    def since(self, revision: int,
              matches: Callable[[bytes], bool] | None = None) -> list[Change]:
        """Every remembered change at `revision` or later (of a key `matches` accepts),
        oldest first. Cheap when few are that recent: the record is walked from its
        newest end, and a put's value is copied out only for a key that matches."""
        found = []
        for kept in reversed(self._changes):
            if _revision(kept) < revision:
                break
            if matches is None or matches(_key(kept)):
                found.append(_change(kept))
        found.reverse()
        return found

    @property
    def last_revision(self) -> int:
        """The newest change's revision (the floor when nothing was recorded since)."""
        return self._last

    @property
    def size_bytes(self) -> int:
        """This shard's share of the budget's bytes (summed when asked: rarely)."""
        return sum(map(_cost, self._changes))

    def __len__(self) -> int:
        return len(self._changes)

    def __iter__(self) -> Iterator[Change]:
        return map(_change, self._changes)


_new_change = functools.partial(tuple.__new__, Change)
"""`Change(...)` without the Python-level `__new__` NamedTuple adds: one per write."""


def _change(kept: _Kept) -> Change:
    if isinstance(kept, Change):
        return kept
    key, stored = kept
    _, mod, _, lease = META.unpack_from(stored)
    return _new_change((mod, PUT, key, value_of(stored), lease))


def _revision(kept: _Kept) -> int:
    return kept.revision if isinstance(kept, Change) else META.unpack_from(kept[1])[1]


def _key(kept: _Kept) -> bytes:
    return kept.key if isinstance(kept, Change) else kept[0]


def _cost(kept: _Kept) -> int:
    """Its key and value bytes and `EVENT_OVERHEAD_BYTES`, for the byte limit; a put's
    value is measured in its record, not copied out."""
    if isinstance(kept, Change):
        return len(kept.key) + len(kept.value or b"") + EVENT_OVERHEAD_BYTES
    key, stored = kept
    return len(key) + len(stored) - META.size + EVENT_OVERHEAD_BYTES
