"""The replicated log of one replica, as the core sees it.

Theory of operation. The log is a snapshot (everything up to `snapshot_index`,
compacted) followed by `entries` (indexes snapshot_index+1 .. last_index). Three
cursors move forward through it, always in this order:

    applied_index <= commit_index <= last_index
    stable_index  <= last_index

`stable_index` is how far the driver has confirmed persistence; entries past it
are handed out by `unstable_entries()` and must be persisted before anything the
same Ready carries is sent. A conflicting append may cut entries past the commit
index (never at or below it) and pulls `stable_index` back with it.

This module never touches a disk: it is the in-memory picture that the driver
keeps in step with its storage through Ready/advance.
"""

from __future__ import annotations

from ringlock.errors import InvariantViolation
from ringlock.invariant import invariant
from ringlock.raft.messages import Entry, Snapshot


class RaftLog:
    __slots__ = (
        "applied_index",
        "commit_index",
        "entries",
        "pending_snapshot",
        "snapshot",
        "snapshot_index",
        "snapshot_term",
        "stable_index",
    )

    def __init__(self, snapshot: Snapshot | None = None, entries: list[Entry] | None = None):
        self.snapshot = snapshot
        self.snapshot_index = snapshot.meta.index if snapshot else 0
        self.snapshot_term = snapshot.meta.term if snapshot else 0
        self.entries: list[Entry] = []
        self.pending_snapshot: Snapshot | None = None
        for entry in entries or []:
            if entry.index <= self.snapshot_index:
                continue
            invariant(
                entry.index == self.last_index() + 1,
                f"stored log has a gap: entry {entry.index} after {self.last_index()}",
            )
            self.entries.append(entry)
        self.stable_index = self.last_index()
        self.commit_index = self.snapshot_index
        self.applied_index = self.snapshot_index

    # -- reading -------------------------------------------------------------------------

    def first_index(self) -> int:
        return self.snapshot_index + 1

    def last_index(self) -> int:
        return self.snapshot_index + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snapshot_term

    def term_at(self, index: int) -> int | None:
        """Term of the entry at `index`; None when compacted away or past the end."""
        offset = index - self.snapshot_index
        if offset == 0:
            return self.snapshot_term
        if 0 < offset <= len(self.entries):
            return self.entries[offset - 1].term
        return None

    def match_term(self, index: int, term: int) -> bool:
        return self.term_at(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft §5.4.1: a candidate's log is at least as up to date as ours."""
        my_term = self.last_term()
        return last_term > my_term or (last_term == my_term and last_index >= self.last_index())

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """Largest index <= `index` whose entry's term is <= `term` (etcd's
        findConflictByTerm): every entry above it is of a later term than the other
        side's entry at `index`, so none of them can match and a probe may skip them."""
        while index > self.snapshot_index:
            entry_term = self.term_at(index)
            if entry_term is not None and entry_term <= term:
                break
            index -= 1
        return index

    def entry_at(self, index: int) -> Entry:
        offset = index - self.snapshot_index
        if not 0 < offset <= len(self.entries):
            raise InvariantViolation(f"entry {index} is not in the log")
        return self.entries[offset - 1]

    def slice(self, low: int, high: int, max_count: int) -> list[Entry]:
        """Entries [low, high), at most `max_count` of them; low must not be compacted."""
        if low <= self.snapshot_index:
            raise InvariantViolation(f"slice from {low} is compacted")
        high = min(high, self.last_index() + 1, low + max_count)
        if high <= low:
            return []
        base = self.snapshot_index + 1
        return self.entries[low - base : high - base]

    def unstable_entries(self) -> list[Entry]:
        return self.entries[self.stable_index - self.snapshot_index :]

    def apply_limit(self) -> int:
        """Highest index that may be applied: only committed entries, never beyond."""
        return self.commit_index

    def next_committed_entries(self, max_count: int) -> list[Entry]:
        """Entries to apply next; after a restored snapshot, those that follow it."""
        high = self.apply_limit()
        low = max(self.applied_index, self.snapshot_index) + 1
        if low > high:
            return []
        return self.slice(low, high + 1, max_count)

    def has_next_committed_entries(self) -> bool:
        return max(self.applied_index, self.snapshot_index) < self.apply_limit()

    # -- changing ------------------------------------------------------------------------

    def append(self, entries: list[Entry]) -> None:
        """Leader-side append of new entries at the end of the log."""
        log_entries = self.entries
        for entry in entries:
            last_index = self.snapshot_index + len(log_entries)
            last_term = log_entries[-1].term if log_entries else self.snapshot_term
            if entry.index != last_index + 1 or entry.term < last_term:
                raise InvariantViolation(
                    f"append of entry ({entry.index}, term {entry.term}) after "
                    f"({last_index}, term {last_term})"
                )
            log_entries.append(entry)

    def maybe_append(
        self, prev_index: int, prev_term: int, commit: int, entries: tuple[Entry, ...]
    ) -> int | None:
        """Follower-side append (Raft §5.3). Returns the last index now known to match the
        leader, or None when the entry before `entries` does not match."""
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        if entries and entries[0].index == self.last_index() + 1:
            self.append(list(entries))  # the steady state: all new, nothing to compare
            entries = ()
        for position, entry in enumerate(entries):
            existing = self.term_at(entry.index)
            if existing is None and entry.index <= self.snapshot_index:
                continue  # already compacted into our snapshot, hence committed and equal
            if existing == entry.term:
                continue
            invariant(
                entry.index > self.commit_index,
                f"conflict at committed index {entry.index} (commit {self.commit_index})",
            )
            self._truncate_after(entry.index - 1)
            self.append(list(entries[position:]))
            break
        self.commit_to(min(commit, last_new))
        return last_new

    def _truncate_after(self, index: int) -> None:
        invariant(index >= self.snapshot_index, "truncate at %d below snapshot", index)
        del self.entries[index - self.snapshot_index :]
        self.stable_index = min(self.stable_index, index)

    def commit_to(self, index: int) -> None:
        if index <= self.commit_index:
            return
        if index > self.last_index():
            raise InvariantViolation(f"commit index {index} beyond last index {self.last_index()}")
        self.commit_index = index

    def stable_to(self, index: int, term: int) -> None:
        """The driver persisted entries up to `index`, the last of them of `term`."""
        if index > self.stable_index and self.term_at(index) == term:
            self.stable_index = index

    def applied_to(self, index: int) -> None:
        if index > self.apply_limit():
            raise InvariantViolation(f"applied index {index} beyond commit {self.commit_index}")
        invariant(index >= self.applied_index, "applied index moved backwards")
        self.applied_index = index

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole log by a snapshot received from the leader."""
        invariant(
            snapshot.meta.index > self.commit_index,
            f"restore of snapshot {snapshot.meta.index} at or below commit {self.commit_index}",
        )
        self.snapshot = snapshot
        self.pending_snapshot = snapshot
        self.snapshot_index = snapshot.meta.index
        self.snapshot_term = snapshot.meta.term
        self.entries = []
        self.stable_index = snapshot.meta.index
        self.commit_index = snapshot.meta.index
        # applied_index moves when the driver has restored the state machine (advance).

    def forget_snapshot_data(self) -> None:
        """Keep only the snapshot's metadata: the driver holds the data (in a file) and
        fills it into the SNAPSHOT messages it sends. A shard's state would otherwise be
        held twice in memory, once live and once as the bytes of its last snapshot."""
        if self.snapshot is not None and self.snapshot.data:
            self.snapshot = Snapshot(self.snapshot.meta, b"")

    def compact(self, snapshot: Snapshot) -> None:
        """Drop entries up to the snapshot's index; the state machine has applied them."""
        index = snapshot.meta.index
        invariant(index <= self.applied_index, f"compact at {index} beyond applied index")
        invariant(index > self.snapshot_index, f"compact at {index} is not past the snapshot")
        invariant(self.term_at(index) == snapshot.meta.term, "snapshot term mismatch")
        del self.entries[: index - self.snapshot_index]
        self.snapshot = snapshot
        self.snapshot_index = index
        self.snapshot_term = snapshot.meta.term
