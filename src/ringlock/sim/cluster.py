"""The deterministic simulation of a whole cluster from one seed.

Theory of operation. One event queue, ordered by (simulated time, sequence
number), holds every future event: ticks, message deliveries, fsync completions,
client arrivals and replies, faults and their healing. Every random choice comes
from one generator seeded by the run's seed, and nothing iterates a structure
whose order could vary between runs, so the same seed gives the same run byte
for byte.

A run has two phases. In the safety phase faults strike: crashes (unsynced
writes lost), pauses, partitions (symmetric, one-way, bridge), lossy and
duplicating links, leadership transfers and membership changes under load; the
safety checker runs after every step. In the liveness phase every fault is
healed and the cluster must serve client writes again (and grant a lock). At
the end the client history is checked for linearizability.

Beside the key-value clients, a few lock clients (`ringlock.sim.locks`) take
leases and locks and write fenced keys; their holds are checked for mutual
exclusion and token order at the end, and every fenced write as it applies.
"""

from __future__ import annotations

import contextlib
import heapq
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ringlock.checker import Op
from ringlock.errors import ProposalDropped
from ringlock.raft.config import RaftConfig
from ringlock.raft.messages import Configuration, Message, Role
from ringlock.sim.locks import LOCK_KINDS, LockWorkload
from ringlock.sim.node import ClientRequest, SimNode
from ringlock.sim.params import US_PER_MS, SimParams
from ringlock.sim.safety import SafetyChecker, SafetyViolation

(TICK, DELIVER, FSYNC, ARRIVE, REPLY, NEXT_OP, OP_TIMEOUT, FAULT, HEAL, OPERATOR, PHASE,
 DRIVE, LOCK) = range(13)
EVENT_NAMES = (
    "tick", "deliver", "fsync", "client->node", "node->client", "next-op", "op-timeout",
    "fault", "heal", "operator", "phase", "drive", "lock-client",
)
TIMEOUT_SWEEP_US = 10 * US_PER_MS
MAX_EVENTS = 5_000_000
"""A run that needs more events than this is stopped and reported: loops are bounded."""


@dataclass(slots=True)
class ClientState:
    id: int
    leader_guess: int
    op_id: int = 0
    kind: str = ""
    key: str = ""
    arg: Any = None
    call: int = 0
    active: bool = False
    deadline: int = 0
    last_seen: dict[str, Any] = field(default_factory=dict)


class Simulation:
    def __init__(self, params: SimParams) -> None:
        self.params = params
        self.rng = random.Random(params.seed)
        self.now = 0
        self._queue: list[tuple[int, int, int, Any, Any]] = []
        self._seq = 0
        self.safety = SafetyChecker()
        self.trace: deque[tuple[int, int, Any, Any]] = deque(maxlen=40)
        self.history: list[Op] = []
        self.events = 0
        self.blocked: set[tuple[int, int]] = set()
        self.faults_on = True
        self.ops_after_heal = 0
        self.leader_sends_before_sync = params.leader_sends_before_sync
        self.compact_every = params.compact_every
        self.drop_rate = params.drop_rate
        self.duplicate_rate = params.duplicate_rate
        self.reorder_rate = params.reorder_rate
        self.link_clock: dict[tuple[int, int], int] = {}
        self.timeline: list[tuple[int, str]] = []
        """Notable moments (faults, healing, new leaders), for reports and the demo."""
        voters = frozenset(range(1, params.nodes + 1))
        self.nodes: dict[int, SimNode] = {}
        for node_id in sorted(voters):
            self._add_node(node_id, Configuration(voters))
        self.retired: set[int] = set()
        self.next_node_id = params.nodes + 1
        self.operator_step = 0
        self.newcomer = 0
        self.victim = 0
        self.clients = [
            ClientState(id=i, leader_guess=self.rng.randint(1, params.nodes))
            for i in range(1, params.clients + 1)
        ]
        self.op_counter = 0
        self.lock_load = LockWorkload(self, LOCK)
        """The lease-and-lock clients; their holds are checked at the end of the run."""

    # ------------------------------------------------------------------ scheduling

    def note(self, text: str) -> None:
        self.timeline.append((self.now, text))

    def _push(self, at: int, kind: int, a: Any, b: Any = None) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (at, self._seq, kind, a, b))

    def _add_node(self, node_id: int, bootstrap: Configuration | None) -> SimNode:
        p = self.params
        config = RaftConfig(
            node_id=node_id,
            election_tick=p.election_tick,
            heartbeat_tick=p.heartbeat_tick,
            max_entries_per_append=p.max_entries_per_append,
            max_inflight_appends=p.max_inflight_appends,
            check_quorum=p.check_quorum,
            seed=p.seed,
        )
        node = SimNode(self, node_id, config, bootstrap)
        self.nodes[node_id] = node
        self._push(self.now + self.rng.randrange(p.tick_us), TICK, node_id, node.incarnation)
        return node

    def fsync_delay(self) -> int:
        p = self.params
        if p.fsync_max_us == 0:
            return 0
        return p.fsync_min_us + int(self.rng.random() * (p.fsync_max_us - p.fsync_min_us + 1))

    def schedule_drive(self, node: SimNode) -> None:
        """The node's event loop handles its Ready once per turn, batching what arrived."""
        self._push(self.now + self.params.loop_turn_us, DRIVE, node.id, node.incarnation)

    def schedule_fsync(self, node: SimNode, delay: int) -> None:
        self._push(self.now + delay, FSYNC, node.id, node.incarnation)

    def _link_delay(self) -> int:
        low = self.params.net_delay_min_us
        return low + int(self.rng.random() * (self.params.net_delay_max_us - low + 1))

    def send(self, message: Message) -> None:
        if self.blocked and (message.frm, message.to) in self.blocked:
            return
        rng = self.rng
        if self.drop_rate and rng.random() < self.drop_rate:
            return
        link = (message.frm, message.to)
        at = self.now + self._link_delay()
        if self.reorder_rate and rng.random() < self.reorder_rate:
            self._push(at, DELIVER, message)  # overtakes or falls behind its neighbours
        else:
            at = max(at, self.link_clock.get(link, 0))  # in order, as on one TCP stream
            self.link_clock[link] = at
            self._push(at, DELIVER, message)
        if self.duplicate_rate and rng.random() < self.duplicate_rate:
            self._push(self.now + self._link_delay(), DELIVER, message)

    def reply(self, request: ClientRequest, status: str, value: Any) -> None:
        self._push(self.now + self._link_delay(), REPLY, request, (status, value))

    # -------------------------------------------------------------------- the loop

    def run(self) -> None:
        p = self.params
        self._push(p.fault_interval_us, FAULT, None)
        self._push(p.fault_phase_us, PHASE, "heal")
        self._push(TIMEOUT_SWEEP_US, OP_TIMEOUT, None)
        for client in self.clients:
            self._push(self.rng.randrange(10 * US_PER_MS), NEXT_OP, client.id)
        self.lock_load.start()
        end = p.fault_phase_us + p.liveness_phase_us
        queue = self._queue
        trace = self.trace
        nodes = self.nodes
        while queue:
            at, _, kind, a, b = heapq.heappop(queue)
            if at > end:
                break
            self.now = at
            self.events += 1
            if self.events > MAX_EVENTS:
                raise SafetyViolation("bounded run", f"more than {MAX_EVENTS} events")
            if kind == TICK:
                node = nodes[a]
                if not node.alive or node.incarnation != b:
                    continue
                self._push(at + p.tick_us, TICK, a, b)
                if node.paused:
                    continue
                node.tick()
            elif kind == DELIVER:
                trace.append((at, kind, a, b))
                self._deliver(a)
            elif kind == DRIVE:
                node = nodes[a]
                if node.alive and node.incarnation == b:
                    node.drive_due()
            else:
                trace.append((at, kind, a, b))
                self._dispatch(kind, a, b)
        for client in self.clients:
            if client.active:  # still in flight at the end: it may yet take effect
                self._record(client, None, None)
        self.lock_load.finish()
        self._check_liveness()

    def _deliver(self, message: Message) -> None:
        if self.blocked and (message.frm, message.to) in self.blocked:
            return
        node = self.nodes[message.to]
        if not node.alive:
            return
        if node.paused:
            node.inbox.append(message)
            return
        node.receive(message)

    def _dispatch(self, kind: int, a: Any, b: Any) -> None:
        if kind == FSYNC:
            node = self.nodes[a]
            if node.alive and node.incarnation == b:
                if node.paused:
                    node.inbox.append(("fsync", b))
                else:
                    node.fsync_done()
        elif kind == ARRIVE:
            node = self.nodes[b]
            if not node.alive:
                return
            if node.paused:
                node.inbox.append(a)
            else:
                node.client_request(a)
        elif kind == REPLY:
            self._client_reply(a, b)
        elif kind == NEXT_OP:
            if a > 0:
                self._start_op(self.clients[a - 1])
                return
            client = self.clients[-a - 1]
            if client.active and client.op_id == b:
                self._send_request(client)
        elif kind == OP_TIMEOUT:
            self._sweep_timeouts()
        elif kind == FAULT:
            if self.faults_on:
                self._inject_fault()
                self._push(self.now + self.rng.randint(1, self.params.fault_interval_us),
                           FAULT, None)
        elif kind == HEAL:
            self._heal(a, b)
        elif kind == OPERATOR:
            self._operator()
        elif kind == PHASE:
            self._heal_all()
        elif kind == LOCK:
            self.lock_load.on_event(a, b)

    # --------------------------------------------------------------------- clients

    def _start_op(self, client: ClientState) -> None:
        p = self.params
        rng = self.rng
        self.op_counter += 1
        client.op_id = self.op_counter
        client.key = f"k{rng.randrange(p.keys)}"
        roll = rng.random()
        if roll < p.get_fraction:
            client.kind, client.arg = "get", None
        elif roll < p.get_fraction + p.cas_fraction:
            expected = client.last_seen.get(client.key)
            client.kind, client.arg = "cas", (expected, self.op_counter)
        else:
            client.kind, client.arg = "put", self.op_counter
        client.call = self.now
        client.active = True
        client.deadline = self.now + p.op_timeout_us
        self._send_request(client)

    def _send_request(self, client: ClientState) -> None:
        request = ClientRequest(client.id, client.op_id, client.kind, client.key, client.arg)
        client.leader_guess = self.send_client_request(request, client.leader_guess)

    def send_client_request(self, request: ClientRequest, target: int) -> int:
        """Send `request` to node `target` (a member at random if it is gone); returns
        the node it went to, the client's next guess."""
        if target not in self.nodes or target in self.retired:
            target = self._random_member()
        if self.drop_rate and self.rng.random() < self.drop_rate:
            return target
        self._push(self.now + self._link_delay(), ARRIVE, request, target)
        return target

    def _random_member(self) -> int:
        members = [n for n in sorted(self.nodes) if n not in self.retired]
        return self.rng.choice(members)

    def _client_reply(self, request: ClientRequest, answer: tuple[str, Any]) -> None:
        if request.kind in LOCK_KINDS:
            self.lock_load.on_reply(request, *answer)
            return
        client = self.clients[request.client - 1]
        if not client.active or client.op_id != request.op_id:
            return
        status, value = answer
        if status == "ok":
            self._record(client, value, self.now)
            if self.faults_on is False:
                self.ops_after_heal += 1
            return
        if status == "unknown":
            self._record(client, None, None)  # it may have applied: the outcome is unknown
            return
        # The attempt certainly did not take effect: try again, elsewhere if told.
        if status == "not_leader" and value:
            client.leader_guess = value
        else:
            client.leader_guess = self._random_member()
        delay = self.rng.randint(US_PER_MS, 10 * US_PER_MS)
        self._push(self.now + delay, NEXT_OP, -client.id, client.op_id)

    def _record(self, client: ClientState, value: Any, ret: int | None) -> None:
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
            self.history.append(
                Op(client=client.id, key=client.key, kind=kind, arg=client.arg,
                   result=result if ret is not None else None, call=client.call, ret=ret)
            )
        think = self.rng.randint(0, self.params.think_us_max) if self.params.think_us_max else 0
        if think:
            self._push(self.now + think, NEXT_OP, client.id)
        else:
            self._start_op(client)

    def _sweep_timeouts(self) -> None:
        """One timer for all clients: an op past its deadline has an unknown outcome."""
        for client in self.clients:
            if client.active and client.deadline <= self.now:
                client.leader_guess = self._random_member()
                self._record(client, None, None)
        self._push(self.now + TIMEOUT_SWEEP_US, OP_TIMEOUT, None)

    # ---------------------------------------------------------------------- faults

    def _inject_fault(self) -> None:
        p = self.params
        rng = self.rng
        fault = rng.choice(p.faults)
        live = [n for n in sorted(self.nodes) if n not in self.retired]
        victim = rng.choice(live)
        leader = self._leader()
        if leader is not None and rng.random() < p.leader_victim_rate:
            victim = leader.id  # Jepsen's favourite target: the leader, mid-write
        quick = rng.randint(0, 20) * 250  # a supervisor restarts it at once
        slow = rng.randint(10, 1500) * US_PER_MS
        heal_after = quick if rng.random() < p.quick_heal_rate else slow
        if fault == "crash" and self.nodes[victim].alive:
            self.nodes[victim].crash()
            self.note(f"crash node {victim}")
            self._push(self.now + heal_after, HEAL, "restart", victim)
        elif fault == "pause" and self.nodes[victim].alive and not self.nodes[victim].paused:
            self.nodes[victim].paused = True
            self.note(f"pause node {victim}")
            self._push(self.now + heal_after, HEAL, "resume", victim)
        elif fault == "partition":
            cut = self._partition(live, victim)
            self.blocked |= cut
            self.note(f"partition {_describe_cut(cut)}")
            self._push(self.now + heal_after, HEAL, "unblock", frozenset(cut))
        elif fault == "transfer":
            leader = self._leader()
            if leader is not None and victim != leader.id:
                try:
                    leader.raft.transfer_leadership(victim)
                    self.note(f"transfer {leader.id} -> {victim}")
                    leader.after_input()
                except ProposalDropped:
                    pass
        elif fault == "membership" and self.operator_step == 0:
            self.operator_step = 1
            self._push(self.now, OPERATOR, None)

    def _partition(self, live: list[int], victim: int) -> set[tuple[int, int]]:
        rng = self.rng
        others = [n for n in live if n != victim]
        shape = rng.choice(self.params.partition_shapes)
        cut: set[tuple[int, int]] = set()
        if shape == "isolate":
            for n in others:
                cut |= {(victim, n), (n, victim)}
        elif shape == "one-way":
            for n in others:
                cut.add((n, victim) if rng.random() < 0.5 else (victim, n))
        elif shape == "halves":
            rng.shuffle(others)
            side = set(others[: len(others) // 2]) | {victim}
            for x in live:
                for y in live:
                    if (x in side) != (y in side):
                        cut.add((x, y))
        else:  # bridge: victim talks to both sides, the sides not to each other
            rng.shuffle(others)
            left = set(others[: len(others) // 2])
            right = set(others) - left
            for x in left:
                for y in right:
                    cut |= {(x, y), (y, x)}
        return cut

    def _heal(self, action: str, target: Any) -> None:
        if action == "restart":
            node = self.nodes[target]
            if not node.alive and target not in self.retired:
                node.restart()
                self.note(f"restart node {target}")
                self._push(self.now + self.rng.randrange(self.params.tick_us), TICK, target,
                           node.incarnation)
        elif action == "resume":
            if self.nodes[target].paused:
                self.note(f"resume node {target}")
            self._resume(self.nodes[target])
        elif action == "unblock" and self.blocked & target:
            self.blocked -= target
            self.note(f"heal partition {_describe_cut(target)}")

    def _resume(self, node: SimNode) -> None:
        if not node.paused:
            return
        node.paused = False
        inbox, node.inbox = node.inbox, []
        for item in inbox:
            if not node.alive or node.paused:
                break
            if isinstance(item, Message):
                node.receive(item)
            elif isinstance(item, ClientRequest):
                node.client_request(item)
            elif item[1] == node.incarnation:
                if item[0] == "fsync":
                    node.fsync_done()
                else:
                    node.drive_due()

    def _heal_all(self) -> None:
        self.faults_on = False
        self.blocked = set()
        self.drop_rate = 0.0
        self.duplicate_rate = 0.0
        self.reorder_rate = 0.0
        for node_id in sorted(self.nodes):
            node = self.nodes[node_id]
            if node_id in self.retired:
                continue
            if not node.alive:
                self._heal("restart", node_id)
            elif node.paused:
                self._resume(node)
        self.note("heal all")

    def _leader(self) -> SimNode | None:
        best: SimNode | None = None
        for node_id in sorted(self.nodes):
            node = self.nodes[node_id]
            if node.alive and not node.paused and node.raft.role == Role.LEADER and (
                best is None or node.raft.term > best.raft.term
            ):
                best = node
        return best

    # ------------------------------------------------------------------- membership

    def _operator(self) -> None:
        """Replace one voter by a new node: add learner, catch up, promote, remove."""
        leader = self._leader()
        if leader is not None:
            # ProposalDropped: a change is still pending, or leadership moved: try later.
            with contextlib.suppress(ProposalDropped):
                self._operator_step(leader)
            leader.after_input()
        if self.operator_step:
            self._push(self.now + 50 * US_PER_MS, OPERATOR, None)

    def _operator_step(self, leader: SimNode) -> None:
        raft = leader.raft
        conf = raft.configuration
        step = self.operator_step
        if step == 1:
            self.newcomer = self.next_node_id
            self.next_node_id += 1
            self._add_node(self.newcomer, None)
            self.operator_step = 2
            raft.propose_conf_change("add_learner", self.newcomer)
            self.note(f"add learner {self.newcomer}")
        elif step == 2:
            if self.newcomer not in conf.members:
                self._retire(self.newcomer)  # the change was lost with its leader
                self.operator_step = 1
            elif self.newcomer in conf.voters:
                self.operator_step = 3
            elif raft.progress[self.newcomer].match_index >= raft.log.commit_index:
                raft.propose_conf_change("promote", self.newcomer)
                self.note(f"promote {self.newcomer}")
        elif step == 3:
            if self.newcomer not in conf.voters:
                self.operator_step = 2
            else:
                self.victim = self.rng.choice(sorted(conf.voters - {self.newcomer}))
                self.operator_step = 4
                raft.propose_conf_change("remove", self.victim)
                self.note(f"remove {self.victim}")
        elif step == 4:
            if self.victim in conf.members:
                self.operator_step = 3
            elif raft.log.commit_index >= raft.conf_index:
                self._retire(self.victim)
                self.operator_step = 0

    def _retire(self, node_id: int) -> None:
        node = self.nodes[node_id]
        if node.alive:
            node.crash()
        self.retired.add(node_id)

    # --------------------------------------------------------------------- liveness

    def _check_liveness(self) -> None:
        if self.ops_after_heal == 0:
            raise SafetyViolation(
                "liveness",
                f"no client operation succeeded in the {self.params.liveness_phase_us // 1000}"
                " ms after every fault was healed",
            )
        if self.lock_load.clients and self.lock_load.grants_after_heal == 0:
            raise SafetyViolation(
                "liveness",
                f"no lock was granted in the {self.params.liveness_phase_us // 1000}"
                " ms after every fault was healed",
            )

    def describe_trace(self) -> list[str]:
        lines = []
        for at, kind, a, b in self.trace:
            if kind == DELIVER:
                m: Message = a
                text = (f"{m.type.name} {m.frm}->{m.to} term={m.term} index={m.index} "
                        f"log_term={m.log_term} entries={len(m.entries)} commit={m.commit}"
                        f"{' reject' if m.reject else ''}")
            else:
                text = f"{EVENT_NAMES[kind]} {a!r} {b!r}"
            lines.append(f"t={at / 1000:.3f}ms {text}")
        return lines


def _describe_cut(cut: set[tuple[int, int]] | frozenset[tuple[int, int]]) -> str:
    """'1<->2, 1->3 cut' style: both directions once, one-way links with an arrow."""
    parts = []
    for a, b in sorted(cut):
        if (b, a) in cut:
            if a < b:
                parts.append(f"{a}<->{b}")
        else:
            parts.append(f"{a}->{b}")
    return ", ".join(parts) + " cut"
