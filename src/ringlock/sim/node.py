"""A simulated node: one Raft replica, its disk and its key-value state machine.

The node is the driver of its Raft core, as the real server will be: it feeds
messages and ticks in, and carries each Ready out in the documented order
(persist, send, apply, serve reads, advance). The disk's sync takes simulated
time; while it runs, the node keeps stepping messages but takes no new Ready.

As leader it also plays the server's part in leases (see `ringlock.sim.locks`):
deadlines in its memory on its clock, refreshed by confirmed keepalives, restarted
when it becomes leader, expired into proposed `lease_revoke` commands; and it
pushes the grants its applies make to their waiters.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ringlock.errors import ProposalDropped
from ringlock.raft.config import RaftConfig
from ringlock.raft.core import Raft
from ringlock.raft.messages import Configuration, EntryKind, Message, MessageType, Ready, Role
from ringlock.sim.disk import SimDisk
from ringlock.sim.kv import KVStateMachine, encode_command
from ringlock.sim.locks import LOCK_KINDS, SHARD_PREFIX, shard_command
from ringlock.sim.params import US_PER_MS
from ringlock.statemachine.kv import encode
from ringlock.statemachine.locks import grants_of

if TYPE_CHECKING:
    from ringlock.sim.cluster import Simulation


@dataclass(slots=True)
class ClientRequest:
    client: int
    op_id: int
    kind: str
    key: str
    arg: Any


class SimNode:
    def __init__(
        self,
        sim: Simulation,
        node_id: int,
        raft_config: RaftConfig,
        bootstrap: Configuration | None,
    ) -> None:
        self.sim = sim
        self.id = node_id
        self.raft_config = raft_config
        self.bootstrap = bootstrap
        self.disk = SimDisk()
        self.alive = True
        self.paused = False
        self.incarnation = 0
        self.inbox: list[Message | ClientRequest | tuple[str, int]] = []
        """What reached a paused node: messages, requests, and due (work, incarnation)."""
        self._boot()

    # ------------------------------------------------------------------ life cycle

    def _boot(self) -> None:
        durable = self.disk.durable
        self.incarnation += 1
        self.raft = Raft(
            self.raft_config,
            bootstrap=self.bootstrap,
            hard_state=durable.hard_state,
            snapshot=durable.snapshot,
            entries=list(durable.entries),
        )
        self.kv = KVStateMachine()
        if durable.snapshot is not None:
            self.kv.restore(durable.snapshot.meta.index, durable.snapshot.data)
        self.proposals: dict[int, tuple[int, ClientRequest]] = {}
        self.reads: dict[int, ClientRequest] = {}
        self.reads_waiting: list[tuple[int, ClientRequest]] = []
        self.writing: Ready | None = None
        self.drive_scheduled = False
        self.seen_commit = self.raft.log.commit_index
        self.was_leader = False
        self.lease_deadlines: dict[int, int] = {}
        """Leader only: lease id -> simulated time it expires, in memory as the server
        keeps it (a crash forgets it; the next leader starts every clock afresh)."""

    def crash(self) -> None:
        self.alive = False
        self.paused = False
        self.inbox = []
        self.disk.crash()
        self.writing = None

    def restart(self) -> None:
        self.alive = True
        self._boot()

    # ---------------------------------------------------------------------- inputs

    def tick(self) -> None:
        self.raft.tick()
        if self.raft.role == Role.LEADER and (self.kv.shard.leases or self.lease_deadlines):
            self._expire_leases()
        if self.raft.has_ready():  # most ticks of a follower change nothing
            self.after_input()

    # ---------------------------------------------------------------------- leases

    def _expire_leases(self) -> None:
        """As the server's `_expire_leases`: a lease without a clock (granted under an
        earlier leader, or just applied) starts one now; an expired one is revoked."""
        now = self.sim.now
        leases = self.kv.shard.leases
        deadlines = self.lease_deadlines
        for lease, (ttl_ms, _) in leases.items():
            if lease not in deadlines:
                deadlines[lease] = now + ttl_ms * US_PER_MS
        for lease in [lease for lease, due in deadlines.items() if due <= now]:
            del deadlines[lease]
            if lease in leases:
                with contextlib.suppress(ProposalDropped):  # next tick tries again
                    self.raft.propose(encode_command("shard", encode("lease_revoke", 0, 0,
                                                                     lease)))

    def _on_leadership_change(self, leading: bool) -> None:
        """Forget every lease clock, both on gaining and on losing leadership: the clocks
        of an earlier term know nothing of the keepalives heard by the leaders since,
        so a new leader counts every lease's full TTL from its election (the fill-in in
        `_expire_leases`). A lease may live longer across a failover, never shorter."""
        self.lease_deadlines = {}

    def _serve_keepalive(self, request: ClientRequest) -> None:
        """Leadership was confirmed after the keepalive arrived (ReadIndex) and the state
        holds every lease granted before: refresh the deadline from now."""
        if self.raft.role != Role.LEADER:
            self.sim.reply(request, "retry", self.raft.leader)
            return
        lease = request.arg[0]
        held = self.kv.shard.leases.get(lease)
        if held is None:
            self.sim.reply(request, "ok", None)  # expired or revoked
            return
        self.lease_deadlines[lease] = self.sim.now + held[0] * US_PER_MS
        self.sim.reply(request, "ok", held[0])

    def _after_shard_apply(self, index: int, data: bytes, result: Any) -> None:
        """Show the fencing oracle the entry; as leader, push the grants it made."""
        load = self.sim.lock_load
        load.oracle.on_apply(index, data, result)
        if self.raft.role == Role.LEADER:
            for grant in grants_of(result):
                load.push_grant(grant)

    def receive(self, message: Message) -> None:
        self.raft.step(message)
        self.after_input()

    def client_request(self, request: ClientRequest) -> None:
        raft = self.raft
        if raft.role != Role.LEADER:
            self.sim.reply(request, "not_leader", raft.leader)
            return
        try:
            if request.kind in ("get", "keepalive"):
                raft.read_index(request.op_id)
                self.reads[request.op_id] = request
            else:
                if request.kind in LOCK_KINDS:
                    command = encode_command("shard", shard_command(request))
                elif request.kind == "put":
                    command = encode_command("put", request.key, request.arg)
                else:
                    command = encode_command("cas", request.key, *request.arg)
                index, term = raft.propose(command)
                self.proposals[index] = (term, request)
        except ProposalDropped:
            self.sim.reply(request, "retry", raft.leader)
            return
        self.after_input()

    # --------------------------------------------------------------------- driving

    def after_input(self) -> None:
        """Check what the last input changed, then carry out Ready batches."""
        self._observe()
        if self.writing is None and not self.drive_scheduled:
            self.drive_scheduled = True
            self.sim.schedule_drive(self)

    def drive_due(self) -> None:
        self.drive_scheduled = False
        if self.paused:
            self.inbox.append(("drive", self.incarnation))
        elif self.writing is None:
            self._drive()

    def _drive(self) -> None:
        raft = self.raft
        while self.writing is None and raft.has_ready():
            rd = raft.ready()
            if rd.entries:
                self.sim.safety.on_entries(raft, rd.entries)
            self.disk.write(rd.hard_state, rd.snapshot, rd.entries)
            delay = self.sim.fsync_delay()
            if self.sim.leader_sends_before_sync and rd.appends_may_precede_persist:
                early = [m for m in rd.messages if m.type == MessageType.APPEND]
                if early:
                    rd.messages = [m for m in rd.messages if m.type != MessageType.APPEND]
                    for message in early:
                        self.sim.send(message)
            if delay > 0 and (rd.entries or rd.hard_state is not None or rd.snapshot):
                self.writing = rd
                self.sim.schedule_fsync(self, delay)
                return
            self._finish(rd)

    def fsync_done(self) -> None:
        rd = self.writing
        if rd is None:
            return
        self.writing = None
        self._finish(rd)
        self._drive()

    def _finish(self, rd: Ready) -> None:
        raft = self.raft
        sim = self.sim
        self.disk.sync()
        for message in rd.messages:
            sim.send(message)
        if rd.snapshot is not None:
            sim.safety.on_snapshot(self.id, rd.snapshot.meta.index, rd.snapshot.meta.term)
            self.kv.restore(rd.snapshot.meta.index, rd.snapshot.data)
            self._fail_proposals_up_to(rd.snapshot.meta.index)
        for entry in rd.committed_entries:
            sim.safety.on_apply(self.id, entry)
            data = entry.data if entry.kind == EntryKind.NORMAL else b""
            result = self.kv.apply(entry.index, data)
            if data.startswith(SHARD_PREFIX):
                self._after_shard_apply(entry.index, data, result)
            pending = self.proposals.pop(entry.index, None)
            if pending is not None:
                term, request = pending
                if term == entry.term:
                    sim.reply(request, "ok", result)
                else:
                    sim.reply(request, "retry", raft.leader)
        for read_state in rd.read_states:
            waiting = self.reads.pop(read_state.request_id, None)
            if waiting is not None:
                self.reads_waiting.append((read_state.index, waiting))
        for request_id in rd.dropped_reads:
            dropped = self.reads.pop(request_id, None)
            if dropped is not None:
                sim.reply(dropped, "retry", raft.leader)
        raft.advance(rd)
        self._serve_reads()
        self._maybe_compact()
        self._observe()

    def _observe(self) -> None:
        """Show the safety checker what the last step changed."""
        raft = self.raft
        if raft.log.commit_index != self.seen_commit:
            self.sim.safety.on_commit(raft, self.seen_commit)
            self.seen_commit = raft.log.commit_index
        is_leader = raft.role == Role.LEADER
        if is_leader != self.was_leader:
            self._on_leadership_change(is_leader)
        if is_leader and not self.was_leader:
            self.sim.safety.on_leader(raft, self.incarnation)
            self.sim.note(f"node {self.id} leads term {raft.term}")
        self.was_leader = is_leader

    def _fail_proposals_up_to(self, index: int) -> None:
        for proposal_index in [i for i in self.proposals if i <= index]:
            _, request = self.proposals.pop(proposal_index)
            self.sim.reply(request, "unknown", None)

    def _serve_reads(self) -> None:
        if not self.reads_waiting:
            return
        applied = self.kv.applied_index  # what the state machine holds, not what Raft knows
        still_waiting = []
        for index, request in self.reads_waiting:
            if index > applied:
                still_waiting.append((index, request))
            elif request.kind == "keepalive":
                self._serve_keepalive(request)
            else:
                self.sim.reply(request, "ok", self.kv.get(request.key))
        self.reads_waiting = still_waiting

    def _maybe_compact(self) -> None:
        log = self.raft.log
        if log.applied_index - log.snapshot_index >= self.sim.compact_every and self.raft.compact(
            log.applied_index, self.kv.snapshot()
        ):
            snapshot = log.snapshot
            assert snapshot is not None
            self.disk.save_snapshot(snapshot)
