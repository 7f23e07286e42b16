"""The settings of one simulated run, all drawn from its seed.

Each seed picks its own cluster, network, disk and fault profile, so that many
seeds cover many corners (TigerBeetle's VOPR does the same).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

US_PER_MS = 1000


@dataclass(frozen=True, slots=True)
class SimParams:
    seed: int
    nodes: int
    tick_us: int
    heartbeat_tick: int
    election_tick: int
    max_entries_per_append: int
    check_quorum: bool
    max_inflight_appends: int
    net_delay_min_us: int
    net_delay_max_us: int
    drop_rate: float
    duplicate_rate: float
    reorder_rate: float
    """Messages of one link arrive in order (as on TCP) except this fraction."""
    loop_turn_us: int
    """Time from an input to the node handling its Ready: inputs within it are batched."""
    fsync_min_us: int
    fsync_max_us: int
    leader_sends_before_sync: bool
    clients: int
    keys: int
    cas_fraction: float
    get_fraction: float
    think_us_max: int
    op_timeout_us: int
    fault_interval_us: int
    leader_victim_rate: float
    quick_heal_rate: float
    """Share of faults healed within 5 ms (a restart by a supervisor, a short blip)."""
    partition_shapes: tuple[str, ...]
    """Share of faults aimed at the current leader rather than a random node."""
    faults: tuple[str, ...]
    compact_every: int
    fault_phase_us: int
    liveness_phase_us: int
    lock_clients: int = 0
    """Clients running the lease-and-lock workload (`ringlock.sim.locks`) beside the KV ones."""
    lock_names: int = 1
    """Locks they contend for: fewer names than clients, so waiters queue and grants are
    pushed."""
    lease_ttl_us: int = 700 * US_PER_MS
    """Long enough to outlast a commit under the heaviest seeds' load (32 clients, one
    entry per append, 20 ms fsyncs, 30 ms links): a shorter lease expires before its
    grant is acknowledged, as it would on a real server."""
    lock_pause_rate: float = 0.0
    """Share of grants after which the holder stalls (a GC pause) past its lease, then
    writes with its old token anyway: the write must be fenced out if the lock moved on."""

    @staticmethod
    def from_seed(seed: int, nodes: int, *, faults: tuple[str, ...] | None = None) -> SimParams:
        rng = random.Random(seed ^ 0x5EED)
        # The lock workload draws from its own stream, so adding it left every setting
        # drawn before it (and the seeds that exercise them) as they were.
        lock_rng = random.Random(seed ^ 0x10C5)
        delay_min = rng.choice([100, 500, 1000, 2000])
        clients = rng.choice([4, 8, 16, 32])
        fsync_min = rng.choice([0, 0, 200, 1000])
        all_faults = ("crash", "pause", "partition", "transfer", "membership")
        if faults is None:
            faults = tuple(f for f in all_faults if rng.random() < 0.7) or ("crash",)
        return SimParams(
            seed=seed,
            nodes=nodes,
            tick_us=10 * US_PER_MS,
            heartbeat_tick=rng.choice([1, 1, 2, 3]),
            election_tick=10,
            max_entries_per_append=rng.choice([1, 2, 8, 64, 256]),
            check_quorum=rng.random() < 0.75,
            max_inflight_appends=rng.choice([1, 4, 64]),
            net_delay_min_us=delay_min,
            net_delay_max_us=delay_min + rng.choice([500, 1000, 2000, 5000, 30000]),
            drop_rate=rng.choice([0.0, 0.01, 0.05, 0.1]),
            duplicate_rate=rng.choice([0.0, 0.01, 0.05]),
            reorder_rate=rng.choice([0.0, 0.01, 0.1, 1.0]),
            loop_turn_us=rng.choice([100, 500, 2000]),
            fsync_min_us=fsync_min,
            fsync_max_us=fsync_min + rng.choice([0, 500, 3000, 20000]),
            leader_sends_before_sync=rng.random() < 0.5,
            clients=clients,
            keys=max(1, clients // rng.choice([1, 2, 4, 8])),
            cas_fraction=rng.choice([0.0, 0.2, 0.4]),
            get_fraction=rng.choice([0.3, 0.5]),
            think_us_max=rng.choice([0, 0, 1000]),
            op_timeout_us=rng.choice([300, 600, 1000]) * US_PER_MS,
            fault_interval_us=rng.choice([100, 300, 800]) * US_PER_MS,
            leader_victim_rate=rng.choice([0.0, 0.5, 0.9]),
            quick_heal_rate=0.5,
            partition_shapes=("isolate", "halves", "one-way", "bridge"),
            faults=faults,
            compact_every=rng.choice([16, 64, 512]),
            fault_phase_us=rng.choice([2000, 4000]) * US_PER_MS,
            liveness_phase_us=3000 * US_PER_MS,
            lock_clients=lock_rng.choice([2, 3, 4]),
            lock_names=lock_rng.choice([1, 1, 2]),
            lease_ttl_us=lock_rng.choice([400, 700, 1000]) * US_PER_MS,
            lock_pause_rate=lock_rng.choice([0.0, 0.1, 0.3]),
        )
