"""Configuration of one Raft replica, checked in one place.

Time is counted in ticks: the driver calls `Raft.tick()` at a fixed interval of
its choosing (the server uses 10 ms of wall clock, the simulator 10 ms of
simulated clock). Every size the core keeps in memory is bounded here.
"""

from __future__ import annotations

from dataclasses import dataclass

from ringlock.errors import ConfigError

DEFAULT_ELECTION_TICK = 10
DEFAULT_HEARTBEAT_TICK = 1
DEFAULT_MAX_ENTRIES_PER_APPEND = 256
DEFAULT_MAX_INFLIGHT_APPENDS = 64
DEFAULT_MAX_PENDING_READS = 4096
DEFAULT_MAX_UNCOMMITTED_ENTRIES = 16384


@dataclass(frozen=True, slots=True)
class RaftConfig:
    """Settings of one replica; `validate()` refuses bad combinations."""

    node_id: int
    group_id: int = 0
    election_tick: int = DEFAULT_ELECTION_TICK
    """A follower that hears no leader for a random time in [election_tick, 2*election_tick)
    ticks starts an election; a leader that cannot reach a quorum for election_tick ticks
    steps down (check-quorum)."""
    heartbeat_tick: int = DEFAULT_HEARTBEAT_TICK
    pre_vote: bool = True
    check_quorum: bool = True
    max_entries_per_append: int = DEFAULT_MAX_ENTRIES_PER_APPEND
    max_inflight_appends: int = DEFAULT_MAX_INFLIGHT_APPENDS
    """Pipelining window: append messages sent to one follower and not yet acknowledged."""
    max_pending_reads: int = DEFAULT_MAX_PENDING_READS
    max_uncommitted_entries: int = DEFAULT_MAX_UNCOMMITTED_ENTRIES
    """A leader refuses proposals while this many entries are appended but not committed."""
    seed: int = 0
    """Seeds the randomised election timeout, so that a run is reproducible."""

    def validate(self) -> RaftConfig:
        if self.node_id <= 0:
            raise ConfigError(f"node_id must be positive, got {self.node_id}")
        if self.group_id < 0:
            raise ConfigError(f"group_id must not be negative, got {self.group_id}")
        if self.heartbeat_tick < 1:
            raise ConfigError(f"heartbeat_tick must be at least 1, got {self.heartbeat_tick}")
        if self.election_tick <= self.heartbeat_tick:
            raise ConfigError(
                f"election_tick ({self.election_tick}) must exceed heartbeat_tick "
                f"({self.heartbeat_tick})"
            )
        for name in (
            "max_entries_per_append",
            "max_inflight_appends",
            "max_pending_reads",
            "max_uncommitted_entries",
        ):
            value = getattr(self, name)
            if value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")
        return self
