"""Classic Raft bugs, planted into the core by patching one seam each.

Each entry names the rule it breaks and returns the (object, attribute, buggy
replacement) triples to patch. The checker-of-the-checker test plants each bug
and asserts that the simulator reports a violation within a bounded number of
seeds: a simulator that cannot see these bugs proves nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ringlock.raft.core import Raft
from ringlock.raft.log import RaftLog
from ringlock.raft.messages import HardState
from ringlock.sim.node import SimNode
from ringlock.statemachine.locks import LockTable

Patch = tuple[Any, str, Callable[..., Any]]


def _vote_without_log_check() -> list[Patch]:
    """§5.4.1 broken: votes go to candidates whose log is behind ours."""
    return [(RaftLog, "is_up_to_date", lambda self, last_index, last_term: True)]


def _commit_old_term_by_counting() -> list[Patch]:
    """§5.4.2 broken (Figure 8): an entry of an earlier term is committed once a
    majority stores it."""
    return [(Raft, "_is_committable", lambda self, index: True)]


def _ack_before_persist() -> list[Patch]:
    """The leader counts its own copy as soon as it is appended, before the fsync."""

    def buggy(self: Raft, last_index: int) -> None:
        self._pending_broadcast = True
        self._self_acknowledge(last_index)

    return [(Raft, "_on_leader_append", buggy)]


def _apply_before_commit() -> list[Patch]:
    """Entries are handed to the state machine as soon as they are in the log."""
    return [(RaftLog, "apply_limit", lambda self: self.last_index())]


def _forget_vote_on_restart() -> list[Patch]:
    """The vote is not restored after a restart (PySyncObj #84): two votes in one term."""
    original = Raft._restore_hard_state

    def buggy(self: Raft, hard_state: HardState) -> None:
        original(self, HardState(hard_state.term, 0, hard_state.commit))

    return [(Raft, "_restore_hard_state", buggy)]


def _read_index_without_quorum() -> list[Patch]:
    """A read is served at the commit index without confirming leadership."""
    return [(Raft, "_reads_need_quorum_check", lambda self: False)]


PLANTED_BUGS: dict[str, Callable[[], list[Patch]]] = {
    "vote_without_log_check": _vote_without_log_check,
    "commit_old_term_by_counting": _commit_old_term_by_counting,
    "ack_before_persist": _ack_before_persist,
    "apply_before_commit": _apply_before_commit,
    "forget_vote_on_restart": _forget_vote_on_restart,
    "read_index_without_quorum": _read_index_without_quorum,
}


def _lease_clock_kept_across_terms() -> list[Patch]:
    """A leader keeps its lease clocks when it loses leadership and uses them again when
    re-elected, though the leaders between heard keepalives it never saw: it expires a
    lease its holder still counts as valid."""
    return [(SimNode, "_on_leadership_change", lambda self, leading: None)]


def _inherited_lease_expires_at_once() -> list[Patch]:
    """A new leader does not restart the TTL of the leases it inherits: it treats them
    as already due, so a failover revokes every lease (and hands on every lock) at once."""

    def buggy(self: SimNode, leading: bool) -> None:
        now = self.sim.now
        self.lease_deadlines = {lease: now for lease in self.kv.shard.leases} if leading else {}

    return [(SimNode, "_on_leadership_change", buggy)]


def _fence_not_checked() -> list[Patch]:
    """Fenced writes are applied without comparing their token to the lock's highest."""
    return [(LockTable, "check_fence", lambda self, *fence: None)]


LOCK_PLANTED_BUGS: dict[str, Callable[[], list[Patch]]] = {
    "lease_clock_kept_across_terms": _lease_clock_kept_across_terms,
    "inherited_lease_expires_at_once": _inherited_lease_expires_at_once,
    "fence_not_checked": _fence_not_checked,
}
"""Lease and lock bugs, planted into the simulated server (`SimNode`) or the shard state
machine: the lock history checker or the fencing oracle must report them."""
