"""Raft's safety properties, checked by the simulator after every step.

Each check is incremental, so it costs O(1) per entry rather than a scan of
every log after every event:

  election safety     at most one leader per term (a map term -> leader and the
                      leader's incarnation, so one node leading a term twice across
                      a restart is caught too);
  log matching        every copy of the entry (index, term) carries the same data
                      and follows the same previous term, so by induction two logs
                      that share an (index, term) are identical up to it;
  leader completeness a new leader of term T holds the last entry committed
                      under a leader of a term before T (and, by log matching,
                      every entry before it); a leader of a lower term elected
                      later in real time owes nothing to a higher term;
  state machine safety every entry ever committed or applied at an index is the
                      same entry everywhere and for ever.
"""

from __future__ import annotations

from ringlock.raft.core import Raft
from ringlock.raft.messages import Entry


class SafetyViolation(Exception):
    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"{invariant}: {detail}")
        self.invariant = invariant
        self.detail = detail


class SafetyChecker:
    __slots__ = ("committed", "committed_by_term", "entry_shapes", "leaders")

    def __init__(self) -> None:
        self.leaders: dict[int, tuple[int, int]] = {}
        self.entry_shapes: dict[tuple[int, int], tuple[bytes, int, int]] = {}
        self.committed: dict[int, int] = {}
        self.committed_by_term: dict[int, int] = {}
        """Highest index known committed by a node in each term."""

    def on_leader(self, raft: Raft, incarnation: int) -> None:
        known = self.leaders.setdefault(raft.term, (raft.id, incarnation))
        if known != (raft.id, incarnation):
            raise SafetyViolation(
                "election safety",
                f"term {raft.term} has two leaders: node {known[0]} (run {known[1]}) and "
                f"node {raft.id} (run {incarnation})",
            )
        index = max(
            (i for term, i in self.committed_by_term.items() if term < raft.term), default=0
        )
        if index == 0:
            return
        if raft.log.last_index() < index:
            raise SafetyViolation(
                "leader completeness",
                f"node {raft.id} leads term {raft.term} with last index "
                f"{raft.log.last_index()} but index {index} is committed",
            )
        term = raft.log.term_at(index)
        expected = self.committed.get(index)
        if term is not None and expected is not None and term != expected:
            raise SafetyViolation(
                "leader completeness",
                f"node {raft.id} leads term {raft.term} with term {term} at index {index}, "
                f"committed with term {expected}",
            )

    def on_entries(self, raft: Raft, entries: list[Entry]) -> None:
        """Entries a node is about to persist."""
        shapes = self.entry_shapes
        for entry in entries:
            prev_term = raft.log.term_at(entry.index - 1)
            shape = (entry.data, int(entry.kind), -1 if prev_term is None else prev_term)
            known = shapes.setdefault((entry.index, entry.term), shape)
            if known is shape:
                continue
            if known[0] != shape[0] or known[1] != shape[1] or (
                known[2] != shape[2] and -1 not in (known[2], shape[2])
            ):
                raise SafetyViolation(
                    "log matching",
                    f"node {raft.id} holds entry ({entry.index}, term {entry.term}) unlike "
                    f"another copy: {shape!r} vs {known!r}",
                )

    def on_commit(self, raft: Raft, old_commit: int) -> None:
        """A node's commit index moved from old_commit to raft.log.commit_index."""
        log = raft.log
        committed = self.committed
        for index in range(max(old_commit, log.snapshot_index) + 1, log.commit_index + 1):
            term = log.term_at(index)
            if term is None:
                continue
            known = committed.setdefault(index, term)
            if known != term:
                raise SafetyViolation(
                    "state machine safety",
                    f"node {raft.id} committed term {term} at index {index}, "
                    f"which was committed with term {known}",
                )
        if log.commit_index > self.committed_by_term.get(raft.term, 0):
            self.committed_by_term[raft.term] = log.commit_index

    def on_snapshot(self, node_id: int, index: int, term: int) -> None:
        """A node installs a snapshot: its last entry must be the committed one."""
        known = self.committed.setdefault(index, term)
        if known != term:
            raise SafetyViolation(
                "state machine safety",
                f"node {node_id} installed a snapshot ending at ({index}, term {term}); "
                f"index {index} was committed with term {known}",
            )

    def on_apply(self, node_id: int, entry: Entry) -> None:
        known = self.committed.get(entry.index)
        if known is not None and known != entry.term:
            raise SafetyViolation(
                "state machine safety",
                f"node {node_id} applied term {entry.term} at index {entry.index}, "
                f"committed with term {known}",
            )
        if known is None:
            self.committed[entry.index] = entry.term
