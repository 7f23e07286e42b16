"""The writer's picture of one group's stored log: terms and bounds, never entry data.

Storage keeps no entries in memory after open, yet two decisions need the stored log:
whether an append would leave a gap, and whether a snapshot keeps the entries after
it (it does only if the stored entry at its index has its term). Terms change rarely,
so the log is kept as runs (first index, term): a handful of integers per group.
The picture includes buffered records, in buffer order, which is also WAL order.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

from ringlock.raft.messages import Entry
from ringlock.storage.errors import StorageError


class LogShape:
    __slots__ = ("_starts", "_terms", "last_index", "snapshot")

    def __init__(self, snapshot: tuple[int, int] | None, entries: Sequence[Entry]) -> None:
        self.snapshot = snapshot
        self.last_index = snapshot[0] if snapshot else 0
        self._starts: list[int] = []
        self._terms: list[int] = []
        if entries:
            self.append(entries)

    def term_at(self, index: int) -> int | None:
        if self.snapshot is not None and index == self.snapshot[0]:
            return self.snapshot[1]
        base = self.snapshot[0] if self.snapshot else 0
        if not base < index <= self.last_index or not self._starts:
            return None
        return self._terms[bisect_right(self._starts, index) - 1]

    def append_checked(self, group: int, entries: Sequence[Entry]) -> None:
        """Refuse entries that would leave a gap (a caller bug that replay would find only
        at the next start), else append them."""
        if entries[0].index > self.last_index + 1:
            raise StorageError(
                f"group {group}: entries start at {entries[0].index} "
                f"but the log ends at {self.last_index}"
            )
        self.append(entries)

    def append(self, entries: Sequence[Entry]) -> None:
        """Caller has checked that entries are consecutive and leave no gap."""
        base = self.snapshot[0] if self.snapshot else 0
        if entries[0].index <= base:
            entries = entries[base - entries[0].index + 1 :]
            if not entries:
                return
        self._cut(entries[0].index)
        terms = self._terms
        for entry in entries:
            if not terms or terms[-1] != entry.term:
                self._starts.append(entry.index)
                terms.append(entry.term)
        self.last_index = entries[-1].index

    def _cut(self, first: int) -> None:
        """Forget every entry at or after `first`."""
        keep = bisect_right(self._starts, first - 1)
        del self._starts[keep:], self._terms[keep:]

    def install(self, index: int, term: int) -> bool:
        """Apply a snapshot; True when the entries after it are kept."""
        keep = self.term_at(index) == term
        if keep and index < self.last_index:
            position = max(0, bisect_right(self._starts, index) - 1)
            del self._starts[:position], self._terms[:position]
            self._starts[0] = index + 1
        else:
            self._starts.clear()
            self._terms.clear()
            self.last_index = index
        self.snapshot = (index, term)
        return keep
