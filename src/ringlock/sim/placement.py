"""The deterministic simulation of a sharded cluster that places its own replicas.

Theory of operation. Every simulated node (`Host`) holds replicas of several Raft
groups: one per shard it carries, and one of the meta group if it is one of the meta
voters. Each replica is a `SimNode` (the real `Raft` core, its simulated disk, its
state machine) driven through a per-group port, so the Ready handling, the fsync
timing and the compaction are exactly those of the single-group simulator. The meta
group is a real Raft group too: its state machine is `MetaStateMachine`, founded from
the same flags on every founding node (a snapshot at index 1, as a bootstrap).

Once a simulated second, as the server will:

  * every node reports to the meta voters: it is alive, and for each shard it leads a
    `ShardView` (learners count as caught up within CATCH_UP_SLACK of the commit);
  * the meta leader (current in its term, everything applied) runs `plan_actions`
    over the reports it heard recently, proposes each ProposeMeta through the meta
    group, and sends each ShardChange to the shard leader, which refuses it if its
    configuration index moved, else calls propose_conf_change / transfer_leadership;
  * the meta leader sends its applied map to every member; a node creates an empty
    replica (no bootstrap, passive until the group's log or snapshot names it) for a
    shard whose recorded configuration lists it, and discards the replica of a shard
    whose recorded configuration no longer does.

Messages of every group, reports, maps and changes share the simulated network (delay,
per-link order, loss, partitions). One generator seeded by the run's seed makes every
random choice and nothing iterates in an order that could vary, so the same seed gives
the same run byte for byte.

A run has two phases. In the safety phase faults strike: crashes with restarts (unsynced
writes lost), partitions, message loss, and the operator's placement events: a node is
added (add_node, then heard: up), a node is drained (set_state draining), a node is
killed for good (silent: dead after dead_after, its replicas re-created elsewhere).
After every step the per-group safety checker holds: one leader per term, log matching,
committed entries never lost or changed, and every configuration change moves one voter
and leaves the group a majority of voters that are not dead for good. In the liveness
phase every fault is healed and the placement must converge: every shard on exactly R
voters, all up, no learners, no move left, replicas per node within one of the mean, a
drained node holding nothing, and the shard groups themselves agreeing with the map.
The client history (put/get/cas on keys spread over every shard) must be linearizable.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import random
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import msgpack

from ringlock.checker import Op, check_kv_history
from ringlock.errors import InvariantViolation, ProposalDropped
from ringlock.raft.config import RaftConfig
from ringlock.raft.core import Raft
from ringlock.raft.messages import (
    Configuration,
    Entry,
    EntryKind,
    HardState,
    Message,
    Role,
    Snapshot,
    SnapshotMeta,
)
from ringlock.sharding import rebalance
from ringlock.sharding.keys import key_in_shard, shard_of
from ringlock.sharding.meta import (
    DEAD,
    DRAINING,
    JOINING,
    META_GROUP,
    REMOVED,
    UP,
    MetaStateMachine,
    encode_command,
)
from ringlock.sharding.rebalance import CATCH_UP_SLACK, ProposeMeta, ShardChange, ShardView
from ringlock.sim.disk import DurableState
from ringlock.sim.kv import KVStateMachine
from ringlock.sim.node import ClientRequest, SimNode
from ringlock.sim.params import US_PER_MS
from ringlock.sim.safety import SafetyChecker, SafetyViolation

if TYPE_CHECKING:
    from ringlock.sim.cluster import Simulation

US_PER_S = 1000 * US_PER_MS
(TICK, DELIVER, CTRL, DRIVE, FSYNC, ARRIVE, REPLY, NEXT_OP, OP_TIMEOUT, FAULT, HEAL, PHASE,
 REPORT, PLAN, OPERATOR, CHECK, END) = range(17)
EVENT_NAMES = (
    "tick", "deliver", "ctrl", "drive", "fsync", "client->node", "node->client", "next-op",
    "op-timeout", "fault", "heal", "phase", "report", "plan", "operator", "check", "end",
)
MAX_EVENTS = 3_000_000
"""A run that needs more events than this is stopped and reported: loops are bounded."""
TIMEOUT_SWEEP_US = 20 * US_PER_MS
OPERATOR_EVERY_US = 250 * US_PER_MS
OPERATOR_FAULTS = ("add", "drain", "kill")
RANDOM_FAULTS = ("crash", "partition")
ALL_FAULTS = (*RANDOM_FAULTS, "loss", *OPERATOR_FAULTS)
CHECK_TIME_LIMIT_S = 20.0


# --------------------------------------------------------------------------- parameters

@dataclass(frozen=True, slots=True)
class PlacementParams:
    seed: int
    nodes: int
    """Founding nodes; "add" faults bring more, up to max_nodes."""
    shards: int
    replicas: int
    max_nodes: int
    tick_us: int
    heartbeat_tick: int
    election_tick: int
    max_entries_per_append: int
    max_inflight_appends: int
    net_delay_min_us: int
    net_delay_max_us: int
    drop_rate: float
    loop_turn_us: int
    fsync_min_us: int
    fsync_max_us: int
    leader_sends_before_sync: bool
    compact_every: int
    clients: int
    keys_per_shard: int
    get_fraction: float
    cas_fraction: float
    think_us_max: int
    op_timeout_us: int
    faults: tuple[str, ...]
    fault_interval_us: int
    leader_victim_rate: float
    safety_phase_us: int
    liveness_max_us: int
    """The placement must converge within this long after every fault was healed."""
    settle_us: int
    """Clients keep going this long after convergence, on the settled placement."""
    report_every_us: int
    plan_every_us: int
    heard_window_us: int
    """A node reported within this long is `heard`."""
    dead_after_us: int
    """A node unheard for longer than this is `silent`: the rebalancer declares it dead."""
    max_moves: int

    @staticmethod
    def from_seed(seed: int, *, faults: tuple[str, ...] | None = None) -> PlacementParams:
        rng = random.Random(seed ^ 0x91ACE)
        if faults is None:
            faults = tuple(f for f in ALL_FAULTS if rng.random() < 0.6) or ("crash",)
        else:
            rng.random()  # the same draws follow, whatever the faults
        unknown = sorted(set(faults) - set(ALL_FAULTS))
        if unknown:
            raise ValueError(f"unknown faults {unknown}; known: {list(ALL_FAULTS)}")
        delay_min = rng.choice([200, 500, 1000])
        fsync_min = rng.choice([0, 200, 1000])
        return PlacementParams(
            seed=seed,
            nodes=rng.choice([3, 4, 4, 5]),
            shards=rng.randint(4, 8),
            replicas=3,
            max_nodes=6,
            tick_us=50 * US_PER_MS,
            heartbeat_tick=rng.choice([1, 2]),
            election_tick=10,
            max_entries_per_append=rng.choice([4, 64, 256]),
            max_inflight_appends=rng.choice([4, 64]),
            net_delay_min_us=delay_min,
            net_delay_max_us=delay_min + rng.choice([1000, 5000, 20000]),
            drop_rate=rng.choice([0.01, 0.05, 0.1]) if "loss" in faults else 0.0,
            loop_turn_us=rng.choice([100, 1000]),
            fsync_min_us=fsync_min,
            fsync_max_us=fsync_min + rng.choice([0, 2000, 10000]),
            leader_sends_before_sync=rng.random() < 0.5,
            compact_every=rng.choice([16, 32, 128]),
            clients=rng.choice([2, 3, 4]),
            keys_per_shard=rng.choice([1, 2]),
            get_fraction=rng.choice([0.3, 0.5]),
            cas_fraction=rng.choice([0.0, 0.2]),
            think_us_max=rng.choice([20, 50, 100]) * US_PER_MS,
            op_timeout_us=rng.choice([400, 800]) * US_PER_MS,
            faults=tuple(faults),
            fault_interval_us=rng.choice([500, 1000, 2000]) * US_PER_MS,
            leader_victim_rate=rng.choice([0.0, 0.5]),
            safety_phase_us=rng.choice([8, 12]) * US_PER_S,
            liveness_max_us=120 * US_PER_S,
            settle_us=2 * US_PER_S,
            report_every_us=US_PER_S,
            plan_every_us=US_PER_S,
            heard_window_us=2 * US_PER_S,
            dead_after_us=rng.choice([3, 4]) * US_PER_S,
            max_moves=2,
        )


# ------------------------------------------------------------------------- replicas

class MetaAdapter(KVStateMachine):
    """The meta group's state machine behind the key-value interface SimNode drives.

    Its snapshot is a one-pair key-value snapshot (`meta` -> MetaStateMachine's own
    snapshot), so SimNode's restore on boot reads it as such, and `wrap` turns it back.
    """

    __slots__ = ("machine",)

    def __init__(self, machine: MetaStateMachine) -> None:
        super().__init__()
        self.machine = machine
        self.applied_index = machine.applied_index

    @staticmethod
    def encode(machine: MetaStateMachine) -> bytes:
        return msgpack.packb([["meta", machine.snapshot()]])  # type: ignore[no-any-return]

    @classmethod
    def wrap(cls, booted: KVStateMachine, shards: int, replicas: int) -> MetaAdapter:
        data = booted.data.get("meta")
        machine = (MetaStateMachine.restore(data) if data is not None
                   else MetaStateMachine(shards, replicas))
        adapter = cls(machine)
        adapter.applied_index = booted.applied_index
        return adapter

    def apply(self, index: int, command: bytes) -> Any:
        self.applied_index = index
        return self.machine.apply(index, command)

    def snapshot(self) -> bytes:
        return self.encode(self.machine)

    def restore(self, index: int, data: bytes) -> None:
        self.machine = MetaStateMachine.restore(dict(msgpack.unpackb(data))["meta"])
        self.applied_index = index


class GroupSafety(SafetyChecker):
    """Raft's safety properties for one group, plus the membership rule: a change moves
    one voter at a time and never leaves fewer live voters than a majority (nodes killed
    for good are not live)."""

    __slots__ = ("conf_seen", "group", "killed")

    def __init__(self, group: int, killed: set[int]) -> None:
        super().__init__()
        self.group = group
        self.killed = killed
        self.conf_seen: set[tuple[int, int]] = set()

    def on_entries(self, raft: Raft, entries: list[Entry]) -> None:
        super().on_entries(raft, entries)
        for entry in entries:
            if entry.kind != EntryKind.CONF or (entry.index, entry.term) in self.conf_seen:
                continue
            self.conf_seen.add((entry.index, entry.term))
            # The first to persist a change is the leader that proposed it.
            old = raft._configuration_at(entry.index - 1)
            new = Configuration.decode(entry.data)
            if not old.voters:
                continue  # a replica that never saw the group's first configuration
            if not new.voters or len(old.voters ^ new.voters) > 1:
                raise SafetyViolation(
                    "membership", f"group {self.group}: change at {entry.index} goes from "
                    f"voters {sorted(old.voters)} to {sorted(new.voters)}: more than one")
            live = new.voters - self.killed
            if 2 * len(live) <= len(new.voters):
                raise SafetyViolation(
                    "membership", f"group {self.group}: change at {entry.index} leaves voters "
                    f"{sorted(new.voters)} of which only {sorted(live)} are live: no majority")


class GroupPort:
    """What SimNode asks of its simulation, for one replica of one group."""

    def __init__(self, sim: PlacementSim, host: int, group: int) -> None:
        self.sim = sim
        self.host = host
        self.group = group
        self.safety = sim.safety_of(group)
        self.leader_sends_before_sync = sim.params.leader_sends_before_sync
        self.compact_every = sim.params.compact_every

    def note(self, text: str) -> None:
        self.sim.note(f"{_group_name(self.group)}: {text}")

    def send(self, message: Message) -> None:
        self.sim.send(message)

    def reply(self, request: ClientRequest, status: str, value: Any) -> None:
        self.sim.reply(request, status, value)

    def fsync_delay(self) -> int:
        return self.sim.fsync_delay()

    def schedule_drive(self, node: SimNode) -> None:
        self.sim.push(self.sim.now + self.sim.params.loop_turn_us, DRIVE,
                      (self.host, self.group), node.incarnation)

    def schedule_fsync(self, node: SimNode, delay: int) -> None:
        self.sim.push(self.sim.now + delay, FSYNC, (self.host, self.group), node.incarnation)


class Replica(SimNode):
    """One replica of one group on one host: SimNode, with an incarnation unique in the
    run (a discarded and re-created replica must not pass for its predecessor) and, for
    the meta group, the meta state machine."""

    def __init__(self, port: GroupPort, node_id: int, config: RaftConfig,
                 bootstrap: Configuration | None, founding: DurableState | None = None) -> None:
        self.port = port
        self._founding = founding
        super().__init__(cast("Simulation", port), node_id, config, bootstrap)

    def _boot(self) -> None:
        if self._founding is not None:
            self.disk.durable, self._founding = self._founding, None
        super()._boot()
        self.incarnation = self.port.sim.next_incarnation()
        if self.port.group == META_GROUP:
            p = self.port.sim.params
            self.kv = MetaAdapter.wrap(self.kv, p.shards, p.replicas)

    @property
    def meta(self) -> MetaStateMachine:
        assert isinstance(self.kv, MetaAdapter)
        return self.kv.machine


# ---------------------------------------------------------------------------- hosts

@dataclass(slots=True)
class Ctrl:
    """A message of the placement protocol: report, map or change."""

    kind: str
    frm: int
    to: int
    body: Any


@dataclass(slots=True)
class Host:
    id: int
    seeds: tuple[int, ...]
    """The meta voters it reports to until a map tells it better (its join flags)."""
    alive: bool = True
    killed: bool = False
    incarnation: int = 1
    replicas: dict[int, Replica] = field(default_factory=dict)
    map: MetaStateMachine | None = None
    map_index: int = 0
    # What a meta replica learns from reports; volatile (lost on a crash).
    last_heard: dict[int, int] = field(default_factory=dict)
    views: dict[int, tuple[int, int, ShardView]] = field(default_factory=dict)
    """shard -> (reporter's term, time heard, view)."""
    leader_term: int = 0
    leader_since: int = 0
    awaiting: int = 0
    """The last meta index this meta leader proposed: it plans again once applied."""

    def forget(self) -> None:
        self.map = None
        self.map_index = 0
        self.last_heard = {}
        self.views = {}
        self.leader_term = 0
        self.awaiting = 0

    def meta_voters(self) -> tuple[int, ...]:
        if self.map is not None and META_GROUP in self.map.configs:
            return self.map.configs[META_GROUP].voters
        return self.seeds


@dataclass(slots=True)
class ClientState:
    id: int
    guesses: dict[int, int] = field(default_factory=dict)
    """shard -> the node believed to lead it."""
    op_id: int = 0
    kind: str = ""
    key: str = ""
    arg: Any = None
    call: int = 0
    active: bool = False
    deadline: int = 0
    last_seen: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------- simulation

class PlacementSim:
    def __init__(self, params: PlacementParams) -> None:
        if params.nodes < params.replicas:
            raise ValueError(f"{params.nodes} founding nodes cannot hold "
                             f"{params.replicas} replicas per shard")
        self.params = params
        self.rng = random.Random(params.seed)
        self.now = 0
        self.events = 0
        self._queue: list[tuple[int, int, int, Any, Any]] = []
        self._seq = 0
        self._incarnations = 0
        self.trace: deque[tuple[int, int, Any, Any]] = deque(maxlen=40)
        self.timeline: list[tuple[int, str]] = []
        self.killed: set[int] = set()
        self.drained: set[int] = set()
        self.added: list[int] = []
        self.safeties: dict[int, GroupSafety] = {}
        self.blocked: set[tuple[int, int]] = set()
        self.link_clock: dict[tuple[int, int], int] = {}
        self.drop_rate = params.drop_rate
        self.faults_on = True
        self.healed_at = 0
        self.converged_at: int | None = None
        self.problems: list[str] = ["not checked yet"]
        self.wants: list[tuple[bytes, str, int]] = []
        """The operator's standing requests to the meta group: command, description, when
        last asked."""
        self.history: list[Op] = []
        self.ops_after_heal = 0
        self.op_counter = 0

        peers = {n: f"10.0.0.{n}:7000" for n in range(1, params.nodes + 1)}
        founding = MetaStateMachine.founding(params.shards, params.replicas, peers)
        meta_voters = founding.configs[META_GROUP].voters
        self.hosts: dict[int, Host] = {}
        for node in sorted(peers):
            host = Host(node, meta_voters)
            host.map = MetaStateMachine.restore(founding.snapshot())
            host.map_index = founding.applied_index
            self.hosts[node] = host
        for shard in range(params.shards):
            voters = founding.configs[shard].voters
            for node in voters:
                self._create(self.hosts[node], shard, Configuration(frozenset(voters)))
        meta_data = MetaAdapter.encode(founding)
        for node in meta_voters:
            durable = DurableState(
                hard_state=HardState(1, 0, 1),
                snapshot=Snapshot(SnapshotMeta(1, 1, Configuration(frozenset(meta_voters))),
                                  meta_data))
            self._create(self.hosts[node], META_GROUP, None, durable)
        self.keys = [key_in_shard(shard, params.shards, f"k{copy}")
                     for copy in range(params.keys_per_shard) for shard in range(params.shards)]
        self.clients = [ClientState(i) for i in range(1, params.clients + 1)]

    # ------------------------------------------------------------------ scheduling

    def note(self, text: str) -> None:
        self.timeline.append((self.now, text))

    def push(self, at: int, kind: int, a: Any, b: Any = None) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (at, self._seq, kind, a, b))

    def next_incarnation(self) -> int:
        self._incarnations += 1
        return self._incarnations

    def safety_of(self, group: int) -> GroupSafety:
        checker = self.safeties.get(group)
        if checker is None:
            checker = self.safeties[group] = GroupSafety(group, self.killed)
        return checker

    def fsync_delay(self) -> int:
        p = self.params
        if p.fsync_max_us == 0:
            return 0
        return p.fsync_min_us + int(self.rng.random() * (p.fsync_max_us - p.fsync_min_us + 1))

    def _link_delay(self) -> int:
        low = self.params.net_delay_min_us
        return low + int(self.rng.random() * (self.params.net_delay_max_us - low + 1))

    def _transmit(self, frm: int, to: int, kind: int, item: Any) -> None:
        """One link per pair of nodes, in order (one TCP stream), every group on it."""
        if (frm, to) in self.blocked:
            return
        if self.drop_rate and frm != to and self.rng.random() < self.drop_rate:
            return
        link = (frm, to)
        at = max(self.now + self._link_delay(), self.link_clock.get(link, 0))
        self.link_clock[link] = at
        self.push(at, kind, item)

    def send(self, message: Message) -> None:
        self._transmit(message.frm, message.to, DELIVER, message)

    def send_ctrl(self, kind: str, frm: int, to: int, body: Any) -> None:
        self._transmit(frm, to, CTRL, Ctrl(kind, frm, to, body))

    def reply(self, request: ClientRequest, status: str, value: Any) -> None:
        self.push(self.now + self._link_delay(), REPLY, request, (status, value))

    # ------------------------------------------------------------------- replicas

    def _raft_config(self, node: int, group: int) -> RaftConfig:
        p = self.params
        return RaftConfig(
            node_id=node, group_id=group, election_tick=p.election_tick,
            heartbeat_tick=p.heartbeat_tick, max_entries_per_append=p.max_entries_per_append,
            max_inflight_appends=p.max_inflight_appends, seed=p.seed)

    def _create(self, host: Host, group: int, bootstrap: Configuration | None,
                founding: DurableState | None = None) -> Replica:
        port = GroupPort(self, host.id, group)
        replica = Replica(port, host.id, self._raft_config(host.id, group), bootstrap, founding)
        host.replicas[group] = replica
        return replica

    def _start_host_timers(self, host: Host) -> None:
        p = self.params
        rng = self.rng
        self.push(self.now + rng.randrange(p.tick_us), TICK, host.id, host.incarnation)
        self.push(self.now + rng.randrange(p.report_every_us), REPORT, host.id,
                  host.incarnation)
        self.push(self.now + rng.randrange(p.plan_every_us), PLAN, host.id, host.incarnation)

    def _crash(self, host: Host) -> None:
        host.alive = False
        for group in sorted(host.replicas):
            host.replicas[group].crash()
        host.forget()

    def _restart(self, host: Host) -> None:
        host.alive = True
        host.incarnation += 1
        for group in sorted(host.replicas):
            host.replicas[group].restart()
        self._start_host_timers(host)

    # -------------------------------------------------------------------- the loop

    def run(self) -> None:
        p = self.params
        for node in sorted(self.hosts):
            self._start_host_timers(self.hosts[node])
        self.push(p.fault_interval_us, FAULT, None)
        self.push(p.safety_phase_us, PHASE, None)
        self.push(TIMEOUT_SWEEP_US, OP_TIMEOUT, None)
        self.push(OPERATOR_EVERY_US, OPERATOR, None)
        for fault in OPERATOR_FAULTS:
            if fault in p.faults:
                at = self.rng.randrange(p.safety_phase_us // 10, p.safety_phase_us * 6 // 10)
                self.push(at, FAULT, fault)
        for client in self.clients:
            self.push(self.rng.randrange(10 * US_PER_MS), NEXT_OP, client.id)
        end = p.safety_phase_us + p.liveness_max_us
        queue = self._queue
        hosts = self.hosts
        while queue:
            at, _, kind, a, b = heapq.heappop(queue)
            if at > end:
                break
            self.now = at
            self.events += 1
            if self.events > MAX_EVENTS:
                raise SafetyViolation("bounded run", f"more than {MAX_EVENTS} events")
            if kind == TICK:
                host = hosts[a]
                if host.alive and host.incarnation == b:
                    self.push(at + p.tick_us, TICK, a, b)
                    for group in sorted(host.replicas):
                        host.replicas[group].tick()
            elif kind == DELIVER:
                self.trace.append((at, kind, a, b))
                host = hosts[a.to]
                replica = host.replicas.get(a.group) if host.alive else None
                if replica is not None:
                    replica.receive(a)
            elif kind in (DRIVE, FSYNC):
                host = hosts[a[0]]
                replica = host.replicas.get(a[1]) if host.alive else None
                if replica is not None and replica.alive and replica.incarnation == b:
                    if kind == DRIVE:
                        replica.drive_due()
                    else:
                        replica.fsync_done()
            elif kind == END:
                break
            else:
                self.trace.append((at, kind, a, b))
                self._dispatch(kind, a, b)
        for client in self.clients:
            if client.active:  # still in flight at the end: it may yet take effect
                self._record(client, None, None, again=False)
        if self.converged_at is None:
            raise SafetyViolation(
                "convergence",
                f"placement not converged {p.liveness_max_us // US_PER_S} s after every "
                f"fault was healed: " + "; ".join(self.problems[:8]))
        if self.ops_after_heal == 0:
            raise SafetyViolation("liveness", "no client operation succeeded after healing")

    def _dispatch(self, kind: int, a: Any, b: Any) -> None:
        if kind == CTRL:
            host = self.hosts[a.to]
            if host.alive:
                self._on_ctrl(host, a)
        elif kind == ARRIVE:
            self._arrive(a, b)
        elif kind == REPLY:
            self._client_reply(a, b)
        elif kind == NEXT_OP:
            if a > 0:
                self._start_op(self.clients[a - 1])
            else:
                client = self.clients[-a - 1]
                if client.active and client.op_id == b:
                    self._send_request(client)
        elif kind == OP_TIMEOUT:
            self._sweep_timeouts()
        elif kind in (REPORT, PLAN):
            host = self.hosts[a]
            if host.alive and host.incarnation == b:
                every = self.params.report_every_us if kind == REPORT else \
                    self.params.plan_every_us
                self.push(self.now + every, kind, a, b)
                if kind == REPORT:
                    self._report(host)
                else:
                    self._plan(host)
        elif kind == FAULT:
            self._fault(a)
        elif kind == HEAL:
            self._heal(a, b)
        elif kind == PHASE:
            self._heal_all()
        elif kind == OPERATOR:
            self._operator()
            self.push(self.now + OPERATOR_EVERY_US, OPERATOR, None)
        elif kind == CHECK:
            self._check()

    # ---------------------------------------------------------- placement protocol

    def _report(self, host: Host) -> None:
        views: list[tuple[int, ShardView]] = []
        for shard in sorted(host.replicas):
            if shard == META_GROUP:
                continue
            raft = host.replicas[shard].raft
            if raft.role != Role.LEADER:
                continue
            conf = raft.configuration
            commit = raft.log.commit_index
            caught_up = frozenset(
                n for n in sorted(conf.learners)
                if n in raft.progress and raft.progress[n].match_index >= commit - CATCH_UP_SLACK)
            views.append((raft.term, ShardView(
                shard, host.id, tuple(sorted(conf.voters)), tuple(sorted(conf.learners)),
                raft.conf_index, commit >= raft.conf_index, caught_up)))
        for voter in host.meta_voters():
            self.send_ctrl("report", host.id, voter, tuple(views))

    def _on_ctrl(self, host: Host, ctrl: Ctrl) -> None:
        if ctrl.kind == "report":
            if META_GROUP not in host.replicas:
                return
            host.last_heard[ctrl.frm] = self.now
            for term, view in ctrl.body:
                known = host.views.get(view.shard)
                if known is None or term >= known[0] or \
                        known[1] < self.now - self.params.heard_window_us:
                    host.views[view.shard] = (term, self.now, view)
        elif ctrl.kind == "map":
            index, data = ctrl.body
            if index > host.map_index:
                host.map = MetaStateMachine.restore(data)
                host.map_index = index
                self._reconcile(host)
        elif ctrl.kind == "change":
            self._carry_out(host, ctrl.body)

    def _reconcile(self, host: Host) -> None:
        """Create the replicas the map gives this node, discard those it took away."""
        assert host.map is not None
        for shard in range(self.params.shards):
            config = host.map.configs.get(shard)
            listed = config is not None and host.id in config.members
            if listed and shard not in host.replicas:
                self._create(host, shard, None)
                self.note(f"node {host.id} creates a replica of shard {shard}")
            elif not listed and shard in host.replicas:
                del host.replicas[shard]
                self.note(f"node {host.id} discards its replica of shard {shard}")

    def _carry_out(self, host: Host, change: ShardChange) -> None:
        replica = host.replicas.get(change.shard)
        if replica is None:
            return
        raft = replica.raft
        if raft.role != Role.LEADER or raft.conf_index != change.conf_index:
            return  # the configuration moved since the step was decided: refused
        try:
            if change.change == "transfer":
                raft.transfer_leadership(change.node)
            else:
                raft.propose_conf_change(change.change, change.node)
        except ProposalDropped:
            return
        self.note(f"shard {change.shard}: {change.change} {change.node} at leader {host.id}")
        replica.after_input()

    def _current_meta(self, host: Host) -> Replica | None:
        """The host's meta replica if it leads, knows its term's commit and applied it."""
        replica = host.replicas.get(META_GROUP)
        if replica is None or not host.alive:
            return None
        raft = replica.raft
        log = raft.log
        if raft.role != Role.LEADER or log.term_at(log.commit_index) != raft.term:
            return None
        if replica.kv.applied_index < log.commit_index:
            return None
        return replica

    def _plan(self, host: Host) -> None:
        replica = host.replicas.get(META_GROUP)
        if replica is None:
            return
        raft = replica.raft
        if raft.role != Role.LEADER:
            host.leader_term = 0
            return
        if host.leader_term != raft.term:
            host.leader_term = raft.term
            host.leader_since = self.now
            host.awaiting = 0
        if self._current_meta(host) is None or replica.kv.applied_index < host.awaiting:
            return
        p = self.params
        meta = replica.meta
        recent = self.now - p.heard_window_us
        heard = {n for n, at in host.last_heard.items() if at >= recent}
        silent = {
            n for n, member in meta.members.items()
            if member.state != REMOVED and n not in heard
            and max(host.last_heard.get(n, 0), host.leader_since) < self.now - p.dead_after_us
        }
        views = {s: view for s, (_, at, view) in sorted(host.views.items()) if at >= recent}
        actions = rebalance.plan_actions(meta, views, heard=heard, silent=silent,
                                         max_moves=p.max_moves)
        refused = False
        for action in actions:
            if isinstance(action, ProposeMeta):
                if refused:
                    continue
                try:
                    index, _ = raft.propose(action.command)
                except ProposalDropped:
                    refused = True
                    continue
                host.awaiting = max(host.awaiting, index)
                self.note(f"meta leader {host.id}: {action.why}")
            else:
                self.send_ctrl("change", host.id, action.leader, action)
        replica.after_input()
        data = meta.snapshot()
        for node, member in sorted(meta.members.items()):
            if member.state != REMOVED:
                self.send_ctrl("map", host.id, node, (meta.applied_index, data))

    # ------------------------------------------------------------------ operator

    def _meta_leader(self) -> Replica | None:
        best: Replica | None = None
        for node in sorted(self.hosts):
            replica = self._current_meta(self.hosts[node])
            if replica is not None and (best is None or replica.raft.term > best.raft.term):
                best = replica
        return best

    def _operator(self) -> None:
        """Ask the meta leader for what the operator wants (once a second at most) until
        its applied state shows it done: a drain of a node that is dead meanwhile is
        refused, and asked again once the node is back up."""
        if not self.wants:
            return
        leader = self._meta_leader()
        if leader is None:
            return
        meta = leader.meta
        still: list[tuple[bytes, str, int]] = []
        for command, text, asked in self.wants:
            op, node, arg = msgpack.unpackb(command)
            member = meta.members.get(node)
            done = member is not None if op == "add_node" else (
                member is not None and member.state == arg)
            if done:
                self.note(f"operator: {text} done")
                continue
            if asked and self.now - asked < US_PER_S:
                still.append((command, text, asked))
                continue
            still.append((command, text, self.now))
            try:
                leader.raft.propose(command)
            except ProposalDropped:
                continue
            leader.after_input()
        self.wants = still

    # --------------------------------------------------------------------- faults

    def _fault(self, kind: str | None) -> None:
        if not self.faults_on:
            return
        p = self.params
        if kind is None:
            self.push(self.now + self.rng.randint(1, p.fault_interval_us), FAULT, None)
            kinds = [k for k in RANDOM_FAULTS if k in p.faults]
            if not kinds:
                return
            kind = self.rng.choice(kinds)
        if kind == "crash":
            self._fault_crash()
        elif kind == "partition":
            self._fault_partition()
        elif kind == "add":
            self._fault_add()
        elif kind == "drain":
            self._fault_drain()
        elif kind == "kill":
            self._fault_kill()

    def _live_ids(self) -> list[int]:
        return [n for n in sorted(self.hosts) if not self.hosts[n].killed]

    def _heal_after(self) -> int:
        rng = self.rng
        if rng.random() < 0.4:
            return rng.randint(0, 20) * 250  # a supervisor restarts it at once
        return rng.randint(100, int(1.5 * self.params.dead_after_us) // US_PER_MS) * US_PER_MS

    def _fault_crash(self) -> None:
        rng = self.rng
        candidates = [n for n in self._live_ids() if self.hosts[n].alive]
        if not candidates:
            return
        victim = rng.choice(candidates)
        if rng.random() < self.params.leader_victim_rate:
            leader = self._meta_leader()
            if leader is not None:
                victim = leader.id
        self._crash(self.hosts[victim])
        self.note(f"crash node {victim}")
        self.push(self.now + self._heal_after(), HEAL, "restart", victim)

    def _fault_partition(self) -> None:
        rng = self.rng
        live = self._live_ids()
        victim = rng.choice(live)
        others = [n for n in live if n != victim]
        shape = rng.choice(["isolate", "halves", "one-way"])
        cut: set[tuple[int, int]] = set()
        if shape == "isolate":
            for n in others:
                cut |= {(victim, n), (n, victim)}
        elif shape == "one-way":
            for n in others:
                cut.add((n, victim) if rng.random() < 0.5 else (victim, n))
        else:
            rng.shuffle(others)
            side = set(others[: len(others) // 2]) | {victim}
            cut = {(x, y) for x in live for y in live if (x in side) != (y in side)}
        self.blocked |= cut
        self.note(f"partition {shape} around node {victim}: {len(cut)} links cut")
        self.push(self.now + self._heal_after(), HEAL, "unblock", frozenset(cut))

    def _staying(self) -> list[int]:
        """Nodes neither killed nor drained: the ones that will hold replicas."""
        return [n for n in self._live_ids() if n not in self.drained]

    def _fault_add(self) -> None:
        if len(self.hosts) >= self.params.max_nodes:
            return
        node = max(self.hosts) + 1
        seeds = self.hosts[min(self.hosts)].seeds
        host = self.hosts[node] = Host(node, seeds)
        self.added.append(node)
        self._start_host_timers(host)
        self.wants.append((encode_command("add_node", node, f"10.0.0.{node}:7000"),
                           f"add node {node}", 0))
        self.note(f"operator: add node {node}")

    def _fault_drain(self) -> None:
        staying = self._staying()
        if len(staying) - 1 < self.params.replicas:
            self.note("operator: no drain (too few nodes would stay)")
            return
        victim = self.rng.choice(staying)
        self.drained.add(victim)
        self.wants.append((encode_command("set_state", victim, DRAINING), f"drain node {victim}",
                           0))
        self.note(f"operator: drain node {victim}")

    def _fault_kill(self) -> None:
        staying = self._staying()
        meta_voters = self.hosts[min(self.hosts)].seeds
        candidates = [
            n for n in staying
            if 2 * len([v for v in meta_voters if v not in self.killed and v != n])
            > len(meta_voters)
        ]
        if len(staying) - 1 < self.params.replicas or not candidates:
            self.note("operator: no kill (too few nodes would stay)")
            return
        victim = self.rng.choice(candidates)
        self.killed.add(victim)
        host = self.hosts[victim]
        if host.alive:
            self._crash(host)
        host.killed = True
        self.note(f"kill node {victim} for good")

    def _heal(self, action: str, target: Any) -> None:
        if action == "restart":
            host = self.hosts[target]
            if not host.alive and not host.killed:
                self._restart(host)
                self.note(f"restart node {target}")
        elif action == "unblock" and self.blocked & target:
            self.blocked -= target
            self.note("heal a partition")

    def _heal_all(self) -> None:
        self.faults_on = False
        self.healed_at = self.now
        self.blocked = set()
        self.drop_rate = 0.0
        for node in sorted(self.hosts):
            self._heal("restart", node)
        self.note("heal all")
        self.push(self.now + US_PER_S, CHECK, None)

    # ---------------------------------------------------------------- convergence

    def _check(self) -> None:
        self.problems = self.convergence_problems()
        if self.problems:
            self.push(self.now + US_PER_S, CHECK, None)
            return
        self.converged_at = self.now
        self.note(f"placement converged {(self.now - self.healed_at) / US_PER_S:.0f} s "
                  "after healing")
        self.push(self.now + self.params.settle_us, END, None)

    def convergence_problems(self) -> list[str]:
        """What still keeps the cluster from the settled placement (empty: converged)."""
        p = self.params
        leader = self._meta_leader()
        if leader is None:
            return ["no meta leader"]
        meta = leader.meta
        problems: list[str] = []
        placeable = meta.placeable()
        if meta.targets:
            problems.append(f"moves left: {dict(sorted(meta.targets.items()))}")
        counts = dict.fromkeys(placeable, 0)
        for shard in range(p.shards):
            config = meta.configs[shard]
            if len(config.voters) != p.replicas or config.learners:
                problems.append(f"shard {shard} recorded as {list(config.voters)} / "
                                f"{list(config.learners)}")
            for node in config.members:
                if node not in counts:
                    problems.append(f"shard {shard} on node {node}, which is "
                                    f"{meta.members[node].state}")
                else:
                    counts[node] += 1
            problems.extend(self._group_problems(shard, config.voters, config.members))
        if counts and max(counts.values()) - min(counts.values()) > 1:
            problems.append(f"replicas per node out of balance: {counts}")
        for node in sorted(self.hosts):
            state = meta.members[node].state if node in meta.members else "no member"
            if node in self.killed:
                if state not in (DEAD, JOINING):  # joining: killed before it was heard
                    problems.append(f"killed node {node} is {state}")
            elif node in self.drained:
                if state != DRAINING:
                    problems.append(f"drained node {node} is {state}")
            elif state != UP:
                problems.append(f"node {node} is {state}")
        return problems

    def _group_problems(self, shard: int, voters: Sequence[int],
                        members: Sequence[int]) -> list[str]:
        """The shard's own Raft group must agree with the map, and hosts with both."""
        problems = []
        leader: Replica | None = None
        for node in sorted(self.hosts):
            host = self.hosts[node]
            replica = host.replicas.get(shard)
            holds = replica is not None and host.alive
            if holds != (node in members) and not host.killed:
                problems.append(f"node {node} {'holds' if holds else 'lacks'} a replica of "
                                f"shard {shard}")
            if replica is not None and host.alive and replica.raft.role == Role.LEADER and (
                    leader is None or replica.raft.term > leader.raft.term):
                leader = replica
        if leader is None:
            return [*problems, f"shard {shard} has no leader"]
        raft = leader.raft
        conf = raft.configuration
        if conf.voters != frozenset(voters) or conf.learners:
            problems.append(f"shard {shard}: its leader has {sorted(conf.voters)} / "
                            f"{sorted(conf.learners)}, the map {list(voters)}")
        elif raft.log.commit_index < raft.conf_index:
            problems.append(f"shard {shard}: configuration {raft.conf_index} not committed")
        return problems

    # -------------------------------------------------------------------- clients

    def _start_op(self, client: ClientState) -> None:
        p = self.params
        rng = self.rng
        self.op_counter += 1
        client.op_id = self.op_counter
        client.key = rng.choice(self.keys)
        roll = rng.random()
        if roll < p.get_fraction:
            client.kind, client.arg = "get", None
        elif roll < p.get_fraction + p.cas_fraction:
            client.kind, client.arg = "cas", (client.last_seen.get(client.key), self.op_counter)
        else:
            client.kind, client.arg = "put", self.op_counter
        client.call = self.now
        client.active = True
        client.deadline = self.now + p.op_timeout_us
        self._send_request(client)

    def _send_request(self, client: ClientState) -> None:
        shard = shard_of(client.key.encode(), self.params.shards)
        target = client.guesses.get(shard, 0)
        if target not in self.hosts:
            target = client.guesses[shard] = self.rng.choice(sorted(self.hosts))
        request = ClientRequest(client.id, client.op_id, client.kind, client.key, client.arg)
        if self.drop_rate and self.rng.random() < self.drop_rate:
            return
        self.push(self.now + self._link_delay(), ARRIVE, request, target)

    def _arrive(self, request: ClientRequest, node: int) -> None:
        host = self.hosts[node]
        if not host.alive:
            if not host.killed:  # the process is down, the machine refuses the connection
                self.reply(request, "retry", 0)
            return
        replica = host.replicas.get(shard_of(request.key.encode(), self.params.shards))
        if replica is None:
            self.reply(request, "not_leader", 0)
        else:
            replica.client_request(request)

    def _client_reply(self, request: ClientRequest, answer: tuple[str, Any]) -> None:
        client = self.clients[request.client - 1]
        if not client.active or client.op_id != request.op_id:
            return
        status, value = answer
        if status == "ok":
            self._record(client, value, self.now)
            if not self.faults_on:
                self.ops_after_heal += 1
            return
        if status == "unknown":
            self._record(client, None, None)
            return
        # The attempt certainly did not take effect: try again, elsewhere if told.
        shard = shard_of(request.key.encode(), self.params.shards)
        if status == "not_leader" and value in self.hosts:
            client.guesses[shard] = value
        else:
            client.guesses[shard] = self.rng.choice(sorted(self.hosts))
        delay = self.rng.randint(US_PER_MS, 20 * US_PER_MS)
        self.push(self.now + delay, NEXT_OP, -client.id, client.op_id)

    def _record(self, client: ClientState, value: Any, ret: int | None, *,
                again: bool = True) -> None:
        client.active = False
        kind = client.kind
        if kind == "get":
            client.last_seen[client.key] = value
            result = value
        elif kind == "put":
            if ret is not None:
                client.last_seen[client.key] = client.arg
            result = None
        else:
            result = value
            if ret is not None and value:
                client.last_seen[client.key] = client.arg[1]
        if ret is not None or kind != "get":
            self.history.append(Op(client=client.id, key=client.key, kind=kind, arg=client.arg,
                                   result=result if ret is not None else None,
                                   call=client.call, ret=ret))
        if not again:
            return
        think = self.rng.randint(0, self.params.think_us_max)
        self.push(self.now + think, NEXT_OP, client.id)

    def _sweep_timeouts(self) -> None:
        for client in self.clients:
            if client.active and client.deadline <= self.now:
                client.guesses.clear()
                self._record(client, None, None)
        self.push(self.now + TIMEOUT_SWEEP_US, OP_TIMEOUT, None)

    # -------------------------------------------------------------------- reports

    def placement(self) -> dict[int, tuple[int, ...]]:
        """shard -> voters, as the meta leader records them (empty if there is none)."""
        leader = self._meta_leader()
        if leader is None:
            return {}
        return {s: c.voters for s, c in sorted(leader.meta.configs.items()) if s != META_GROUP}

    def describe_trace(self) -> list[str]:
        lines = []
        for at, kind, a, b in self.trace:
            if kind == DELIVER:
                m: Message = a
                text = (f"{_group_name(m.group)} {m.type.name} {m.frm}->{m.to} term={m.term} "
                        f"index={m.index} log_term={m.log_term} entries={len(m.entries)} "
                        f"commit={m.commit}{' reject' if m.reject else ''}")
            elif kind == CTRL:
                text = f"{a.kind} {a.frm}->{a.to}"
            else:
                text = f"{EVENT_NAMES[kind]} {a!r} {b!r}"
            lines.append(f"t={at / 1000:.3f}ms {text}")
        return lines


def _group_name(group: int) -> str:
    return "meta" if group == META_GROUP else f"shard {group}"


# ------------------------------------------------------------------------- running

@dataclass(slots=True)
class PlacementResult:
    seed: int
    ok: bool
    operations: int
    events: int
    nodes: int
    shards: int
    faults: tuple[str, ...]
    converged_after_us: int | None
    invariant: str = ""
    detail: str = ""
    timeline: list[str] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)

    def replay_command(self) -> str:
        return f"ringlock sim --placement --seeds 1 --start-seed {self.seed}"


def run_placement_seed(seed: int, *, faults: tuple[str, ...] | None = None,
                       overrides: Mapping[str, Any] | None = None) -> PlacementResult:
    """Run one seed and check it; `overrides` pins some of the seed's drawn settings."""
    params = PlacementParams.from_seed(seed, faults=faults)
    if overrides:
        params = dataclasses.replace(params, **overrides)
    sim = PlacementSim(params)
    try:
        sim.run()
    except SafetyViolation as violation:
        return _result(sim, False, violation.invariant, violation.detail)
    except InvariantViolation as violation:
        return _result(sim, False, "core invariant", str(violation))
    verdict = check_kv_history(sim.history, time_limit_s=CHECK_TIME_LIMIT_S)
    if verdict.verdict != "ok":
        name = "linearizability" if verdict.verdict == "violation" else "linearizability undecided"
        return _result(sim, False, name, verdict.message)
    return _result(sim, True)


def _result(sim: PlacementSim, ok: bool, invariant: str = "", detail: str = ""
            ) -> PlacementResult:
    p = sim.params
    converged = None if sim.converged_at is None else sim.converged_at - sim.healed_at
    return PlacementResult(
        p.seed, ok, len(sim.history), sim.events, len(sim.hosts), p.shards, p.faults, converged,
        invariant, detail,
        [] if ok else [f"t={at / 1000:.1f}ms {text}" for at, text in sim.timeline[-30:]],
        [] if ok else sim.describe_trace())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ringlock.sim.placement",
        description="Simulate sharded clusters that place their own replicas, from seeds.")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--start-seed", type=int, default=0)
    parser.add_argument("--faults", default="",
                        help=f"comma-separated subset of {','.join(ALL_FAULTS)} "
                             "(default: drawn per seed)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    faults = tuple(f for f in args.faults.split(",") if f) or None
    passed = operations = 0
    for seed in range(args.start_seed, args.start_seed + max(0, args.seeds)):
        result = run_placement_seed(seed, faults=faults)
        if not result.ok:
            print(f"placement sim: seed {seed} FAILED: {result.invariant}")
            print(f"  {result.detail}")
            for line in result.timeline:
                print(f"  {line}")
            print("last events:")
            for line in result.trace:
                print(f"  {line}")
            print(f"replay: {result.replay_command()}"
                  + (f" --faults {args.faults}" if args.faults else ""))
            return 1
        passed += 1
        operations += result.operations
        if args.verbose:
            assert result.converged_after_us is not None
            print(f"seed {seed}: ok, {result.nodes} nodes, {result.shards} shards, faults "
                  f"{','.join(result.faults)}, converged "
                  f"{result.converged_after_us / US_PER_S:.0f} s after healing, "
                  f"{result.operations} operations, {result.events} events")
    print(f"placement sim: {passed} seeds passed, {operations} client operations checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
