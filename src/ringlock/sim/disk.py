"""A simulated disk: writes are volatile until synced, and a crash loses them.

The node writes what a Ready asks to persist, then syncs after a simulated
latency. What reached `durable` survives `crash()`; the rest is gone, exactly as
an fsync that never happened.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ringlock.errors import InvariantViolation
from ringlock.raft.messages import Entry, HardState, Snapshot


@dataclass(slots=True)
class DurableState:
    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)

    def write_entries(self, entries: list[Entry]) -> None:
        """Store entries; they replace any stored entry at the same or a higher index."""
        if not entries:
            return
        first = entries[0].index
        base = self.snapshot.meta.index if self.snapshot else 0
        keep = max(0, first - base - 1)
        del self.entries[keep:]
        expected = self.entries[-1].index + 1 if self.entries else base + 1
        if first > expected:
            raise InvariantViolation(f"disk write leaves a gap: {first} after {expected - 1}")
        self.entries.extend(e for e in entries if e.index > base)

    def install_snapshot(self, snapshot: Snapshot) -> None:
        """A snapshot replaces every entry it covers; later entries stay if they match."""
        index = snapshot.meta.index
        tail = [e for e in self.entries if e.index > index]
        matches = any(e.index == index and e.term == snapshot.meta.term for e in self.entries)
        self.entries = tail if matches else []
        self.snapshot = snapshot


class SimDisk:
    __slots__ = ("durable", "pending")

    def __init__(self) -> None:
        self.durable = DurableState()
        self.pending: list[tuple[HardState | None, Snapshot | None, list[Entry]]] = []

    def write(self, hard_state: HardState | None, snapshot: Snapshot | None,
              entries: list[Entry]) -> None:
        self.pending.append((hard_state, snapshot, entries))

    def sync(self) -> None:
        for hard_state, snapshot, entries in self.pending:
            if snapshot is not None:
                self.durable.install_snapshot(snapshot)
            self.durable.write_entries(entries)
            if hard_state is not None:
                self.durable.hard_state = hard_state
        self.pending = []

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """A local snapshot is written atomically (temp file, fsync, rename); pending
        entry writes stay pending."""
        self.durable.install_snapshot(snapshot)

    def crash(self) -> None:
        self.pending = []
