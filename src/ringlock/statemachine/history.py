"""Recent changes of one shard, for watches: a bounded, in-memory record.

Why in the state machine: every replica applies every entry in the same order, so every
replica's record of "what changed at revision r" is the same, and any replica (in
practice the leader, where clients are routed) can replay it to a watcher that resumes
after a reconnect. Why bounded and not in snapshots: a watch only needs the recent past
to bridge a reconnect; older history would cost memory on every replica and bytes in
every snapshot. Like etcd's compaction, a watch that asks for revisions older than the
record holds gets `Compacted` and must re-read the keys and start again.

`floor`: every change with a revision above `floor` is in the record. A fresh shard
starts at 0 (it has no past); a replica restored from a snapshot starts at the
snapshot's revision (its past went with the log the snapshot replaced); evicting the
oldest change raises the floor to that change's revision. The floor may differ between
replicas (snapshots are taken at different times): it is a cache, not replicated state.

Deterministic and free of I/O, as the rest of the state machine.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Iterator
from typing import NamedTuple

MAX_WATCH_HISTORY = 10_000
"""Changes remembered per shard: enough to bridge a leader's failover at thousands of
writes a second (elections take about a second)."""
MAX_WATCH_HISTORY_BYTES = 8 * 1024 * 1024
"""Key and value bytes remembered per shard, whichever of the two limits comes first:
10,000 values of a megabyte would otherwise pin 10 GB on every replica."""
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


class WatchHistory:
    def __init__(self, floor: int = 0, *, max_events: int = MAX_WATCH_HISTORY,
                 max_bytes: int = MAX_WATCH_HISTORY_BYTES) -> None:
        self.floor = floor
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._changes: deque[Change] = deque()
        self._bytes = 0

    def record(self, revision: int, kind: str, key: bytes, value: bytes | None,
               lease: int) -> None:
        """Remember a change, at a revision above every one remembered, and forget the
        oldest ones beyond the limits."""
        changes = self._changes
        if changes and revision <= changes[-1].revision:
            raise ValueError(f"change at revision {revision} after "
                             f"{changes[-1].revision}")
        changes.append(_new_change((revision, kind, key, value, lease)))
        self._bytes += _cost(key, value)
        while len(changes) > self.max_events or (
                self._bytes > self.max_bytes and len(changes) > 1):
            oldest = changes.popleft()
            self._bytes -= _cost(oldest.key, oldest.value)
            self.floor = oldest.revision

    def since(self, revision: int) -> list[Change]:
        """Every remembered change at `revision` or later, oldest first. Cheap when few
        are that recent: the record is walked from its newest end."""
        found = []
        for change in reversed(self._changes):
            if change.revision < revision:
                break
            found.append(change)
        found.reverse()
        return found

    @property
    def last_revision(self) -> int:
        """The newest change's revision (the floor when nothing is remembered)."""
        return self._changes[-1].revision if self._changes else self.floor

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._changes)

    def __iter__(self) -> Iterator[Change]:
        return iter(self._changes)


_new_change = functools.partial(tuple.__new__, Change)
"""`Change(...)` without the Python-level `__new__` NamedTuple adds: one per write."""


def _cost(key: bytes, value: bytes | None) -> int:
    return len(key) + (len(value) if value is not None else 0) + EVENT_OVERHEAD_BYTES
