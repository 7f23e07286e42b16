"""What a leader knows about each follower's copy of the log.

Theory of operation. Each follower is in one of three states:

  PROBE      we do not know where its log matches ours; send one append at a time
             and wait for the answer (or the next heartbeat) before sending another.
  REPLICATE  its log matches up to `match_index`; stream appends optimistically
             (pipelining), at most `max_inflight` unacknowledged at once.
  SNAPSHOT   the entries it needs are compacted; a snapshot is on its way.

Invariant: match_index < next_index.
"""

from __future__ import annotations

from collections import deque
from enum import IntEnum

from ringlock.invariant import invariant


class ProgressState(IntEnum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


class Progress:
    __slots__ = (
        "inflight",
        "match_index",
        "next_index",
        "pending_snapshot",
        "probe_sent",
        "recent_active",
        "snapshot_sent_tick",
        "state",
    )

    def __init__(self, next_index: int, match_index: int = 0) -> None:
        self.match_index = match_index
        self.next_index = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.inflight: deque[int] = deque()
        """Last index of each append sent in REPLICATE and not yet acknowledged."""
        self.pending_snapshot = 0
        self.snapshot_sent_tick = 0
        self.recent_active = False
        invariant(match_index < next_index, "progress: match_index must be below next_index")

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            self.next_index = max(self.match_index + 1, self.pending_snapshot + 1)
        else:
            self.next_index = self.match_index + 1
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflight.clear()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next_index = self.match_index + 1
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflight.clear()

    def become_snapshot(self, snapshot_index: int, tick: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = snapshot_index
        self.snapshot_sent_tick = tick
        self.probe_sent = False
        self.inflight.clear()

    def is_paused(self, max_inflight: int) -> bool:
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.SNAPSHOT:
            return True
        return len(self.inflight) >= max_inflight

    def sent_entries(self, last_index: int) -> None:
        """An append ending at `last_index` went out (last_index = next-1 when empty)."""
        if self.state == ProgressState.REPLICATE:
            if last_index >= self.next_index:
                self.next_index = last_index + 1
                self.inflight.append(last_index)
        else:
            self.probe_sent = True

    def maybe_update(self, index: int) -> bool:
        """An append was acknowledged up to `index`; False if that told us nothing new."""
        updated = False
        if index > self.match_index:
            self.match_index = index
            updated = True
            self.probe_sent = False
        self.next_index = max(self.next_index, index + 1)
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
        return updated

    def maybe_decrease(self, rejected: int, hint: int) -> bool:
        """An append with prev index `rejected` was refused; the follower's last index is
        `hint`. Returns False when the refusal is stale (answers an older probe)."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match_index:
                return False
            self.next_index = self.match_index + 1
            return True
        if self.next_index - 1 != rejected:
            return False
        self.next_index = max(min(rejected, hint + 1), self.match_index + 1)
        self.probe_sent = False
        return True
