"""The lock requests of a node, and the waits it holds open until a grant.

Theory of operation. A lock lives on the shard its name hashes to, its waiters wait
under leases of that shard, and the queue is replicated state (`LockTable`). What is
not replicated is who is waiting on which connection: a `lock_acquire` that queues is
answered only when its grant is applied, by the replica that took it. That answer is
the push: a release or a lease's end grants the next waiter in the same apply, and the
waiter's connection gets exactly one frame. Nobody polls.

  * Every replica applies every entry, so an open wait does not depend on leadership;
    but a replica that stops leading answers its waits `NotLeader`, so their clients
    re-attach at the new leader (a deposed leader may be cut off and apply nothing).
  * Re-attaching is re-sending the acquire (deduplicated: applied once), answered from
    the waiter's state when applied: granted, at once; queued, held open again; gone
    (lease ended, cancelled), `LockWaitAborted`, and the client queues afresh.
    `lock_wait` does the same by a ReadIndex read, without a log entry, for a client
    that knows its acquire was applied.
  * A closed connection's waits leave the queue (`lock_cancel` with `queued_only`: a
    grant whose answer was lost stays held, for the client to re-attach to, or for its
    lease to end).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ringlock.errors import (
    BadRequest,
    LockWaitAborted,
    NotFound,
    RequestError,
    Unavailable,
    WaitSuperseded,
)
from ringlock.raft.messages import Role
from ringlock.server import requests as rq
from ringlock.server.replica import Reply, ShardReplica
from ringlock.statemachine.kv import encode
from ringlock.statemachine.locks import (
    EXCLUSIVE,
    MAX_LOCK_NAME_BYTES,
    MAX_SEMAPHORE_LIMIT,
    MODES,
    SEMAPHORE,
    Acquired,
    grants_of,
)

if TYPE_CHECKING:
    from ringlock.server.connection import Connection
    from ringlock.server.node import Node

MAX_OPEN_WAITS_PER_NODE = 100_000
"""Lock waits a node holds open at once; one more is refused (Unavailable, retried)."""

WaitKey = tuple[bytes, int]
"""(lock name, waiter)."""


@dataclass(slots=True)
class OpenWait:
    reply: Reply
    origin: Connection | None


@dataclass(slots=True)
class ShardWaits:
    """The waits open on one replica, and what the lock table's departures were when
    they were last checked."""

    waits: dict[WaitKey, list[OpenWait]] = field(default_factory=dict)
    """Every request waiting for a waiter's grant. Usually one; more when the client
    re-attached while an earlier request of its was still on its way here (an
    abandoned acquire retry may be applied after the re-attach): every one of them is
    answered, and the client listens to the newest."""
    departures: int = 0


class LockOps:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.shards: dict[int, ShardWaits] = {}
        self.open_count = 0
        self.pushed = 0
        """Grants answered to waits held open: the pushes."""

    def ops(self) -> dict[str, Any]:
        return {"lock_acquire": self.op_acquire, "lock_wait": self.op_wait,
                "lock_release": self.op_release, "lock_cancel": self.op_cancel,
                "locks": self.op_locks, "lease_ttl": self.op_lease_ttl}

    # ------------------------------------------------------------------ requests

    def op_acquire(self, body: dict[str, Any], reply: Reply) -> None:
        shard, name = self._checked_name(body)
        lease = rq.checked_lease(body)
        waiter = _checked_waiter(body)
        wait = rq.field(body, "wait", bool, True)
        mode = rq.field(body, "mode", str, EXCLUSIVE)
        limit = rq.field(body, "limit", int, 1)
        if mode not in MODES:
            raise BadRequest(f"mode must be one of {MODES}, got {mode!r}")
        if not 1 <= limit <= MAX_SEMAPHORE_LIMIT:
            raise BadRequest(f"limit must be in 1..{MAX_SEMAPHORE_LIMIT} "
                             f"(MAX_SEMAPHORE_LIMIT), got {limit}")
        if mode != SEMAPHORE and limit != 1:
            raise BadRequest(f"only a semaphore ('{SEMAPHORE}') takes a limit; mode {mode!r} "
                             f"got {limit}")
        client, seq = rq.checked_session(body)
        origin = self.node.current_origin
        replica = self.node.replica(shard)

        def acquired(result: Any, error: RequestError | None) -> None:
            if error is None and isinstance(result, Acquired) and result.status == "queued":
                # Read the state now rather than trust `result`: a retried acquire gets the
                # recorded answer of the first, and the waiter may have been granted since.
                self._attach(replica, name, waiter, reply, origin)
                return
            reply(result, error)

        self.node.propose(shard, encode("lock_acquire", client, seq, name, lease, waiter, wait,
                                        mode, limit), acquired)

    def op_wait(self, body: dict[str, Any], reply: Reply) -> None:
        shard, name = self._checked_name(body)
        waiter = _checked_waiter(body)
        origin = self.node.current_origin
        replica = self.node.replica(shard)

        replica.read(lambda: self._attach(replica, name, waiter, reply, origin), reply)
        self.node.mark(shard)

    def op_release(self, body: dict[str, Any], reply: Reply) -> None:
        shard, name = self._checked_name(body)
        waiter = _checked_waiter(body)
        client, seq = rq.checked_session(body)
        self.node.propose(shard, encode("lock_release", client, seq, name, waiter), reply)

    def op_cancel(self, body: dict[str, Any], reply: Reply) -> None:
        shard, name = self._checked_name(body)
        waiter = _checked_waiter(body)
        client, seq = rq.checked_session(body)
        self.node.propose(shard, encode("lock_cancel", client, seq, name, waiter), reply)

    def op_locks(self, body: dict[str, Any], reply: Reply) -> None:
        """Every lock of a shard: holder, token, queue, and the holder's lease TTL left
        on this leader's clock (ms; None while a new leader has not started it)."""
        shard = rq.checked_shard(body, self.node.config.shards)
        replica = self.node.replica(shard)

        def describe() -> None:
            now = time.monotonic()
            deadlines = replica.lease_deadlines
            reply([[info.name, list(info.holder), [list(w) for w in info.queue],
                    _left_ms(deadlines.get(info.holder.lease), now)]
                   for info in replica.sm.locks_info()], None)

        replica.read(describe, reply)
        self.node.mark(shard)

    def op_lease_ttl(self, body: dict[str, Any], reply: Reply) -> None:
        shard = rq.checked_shard(body, self.node.config.shards)
        lease = rq.checked_lease(body)
        replica = self.node.replica(shard)

        def ttl() -> None:
            ttl_ms = replica.live_lease_ttl_ms(lease)
            if ttl_ms is None:
                reply(None, NotFound(f"lease {lease} not found (expired or revoked)"))
                return
            left = _left_ms(replica.lease_deadlines.get(lease), time.monotonic())
            reply({"ttl_ms": ttl_ms, "remaining_ms": ttl_ms if left is None else left}, None)

        replica.read(ttl, reply)
        self.node.mark(shard)

    # ---------------------------------------------------------------- open waits

    def _attach(self, replica: ShardReplica[Any], name: bytes, waiter: int, reply: Reply,
                origin: Connection | None) -> None:
        """Answer from the waiter's status now: granted, or gone; queued, hold it open."""
        status = replica.sm.locks.status(name, waiter)
        if status is None:
            reply(None, LockWaitAborted(f"waiter {waiter} is not queued for lock {name!r}"
                                        " (its lease ended, or it was cancelled)"))
        elif status.status == "queued":
            self._hold_open(replica, name, waiter, reply, origin)
        else:
            reply(status, None)

    def _hold_open(self, replica: ShardReplica[Any], name: bytes, waiter: int, reply: Reply,
                   origin: Connection | None) -> None:
        full = self.open_count >= MAX_OPEN_WAITS_PER_NODE
        if full or (origin is not None and origin.closed):
            # Nobody will hear the grant: the waiter leaves the queue (it is queued in the
            # replicated table already), and a client still there retries, later.
            if replica.raft.role == Role.LEADER:
                replica.propose(encode("lock_cancel", 0, 0, name, waiter, True), _ignore)
                self.node.mark(replica.shard)
            reply(None, Unavailable(
                f"node {self.node.id} holds {self.open_count} lock waits open "
                f"(MAX_OPEN_WAITS_PER_NODE={MAX_OPEN_WAITS_PER_NODE}); try again later"))
            return
        shard = self.shards.setdefault(replica.shard,
                                       ShardWaits(departures=replica.sm.locks.departures))
        waits = shard.waits.setdefault((name, waiter), [])
        for older in [w for w in waits if origin is not None and w.origin is origin]:
            # The same connection asked again (a re-attach, or an abandoned retry applied
            # late): only one of them is listened to, and it is not known which. Ask the
            # older to retry: the client's retry of the live one supersedes the other, and
            # the connection's in-flight slots stay bounded.
            waits.remove(older)
            self.open_count -= 1
            older.reply(None, WaitSuperseded("lock wait superseded by a newer one; ask again"))
        waits.append(OpenWait(reply, origin))
        self.open_count += 1

    def after_apply(self, replica: ShardReplica[Any], result: Any) -> None:
        """One entry applied on `replica`: answer the waits its grants end, and re-check
        every wait if somebody left a queue (a cancel, a lease's end)."""
        shard = self.shards.get(replica.shard)
        if shard is None or not shard.waits:
            return
        for grant in grants_of(result):
            waits = shard.waits.pop((grant.name, grant.waiter), None)
            if waits is not None:
                self.open_count -= len(waits)
                self.pushed += 1
                for wait in waits:
                    wait.reply(Acquired("granted", grant.token), None)
                    if wait.origin is not None:
                        # At once, before the turn's other answers: the next holder's
                        # release is the next handoff (PERFORMANCE.md, session 12).
                        wait.origin.flush()
        table = replica.sm.locks
        if table.departures != shard.departures:
            shard.departures = table.departures
            self._recheck(replica, shard)

    def after_restore(self, replica: ShardReplica[Any]) -> None:
        """A snapshot replaced the state: every wait may have moved on."""
        shard = self.shards.get(replica.shard)
        if shard is not None:
            shard.departures = replica.sm.locks.departures
            self._recheck(replica, shard)

    def _recheck(self, replica: ShardReplica[Any], shard: ShardWaits) -> None:
        table = replica.sm.locks
        for key in list(shard.waits):
            status = table.status(*key)
            if status is not None and status.status == "queued":
                continue
            waits = shard.waits.pop(key)
            self.open_count -= len(waits)
            if status is not None:
                self.pushed += 1
            for wait in waits:
                if status is None:
                    wait.reply(None, LockWaitAborted(
                        f"waiter {key[1]} left the queue of lock {key[0]!r} (its lease "
                        "ended, or it was cancelled)"))
                else:
                    wait.reply(status, None)

    def on_leadership_lost(self, replica: ShardReplica[Any]) -> None:
        """Waits here go to the new leader: this replica may be cut off from it."""
        shard = self.shards.pop(replica.shard, None)
        if shard is None:
            return
        for waits in shard.waits.values():
            self.open_count -= len(waits)
            for wait in waits:
                wait.reply(None, replica.not_leader())

    def on_replica_dropped(self, group: int, error: RequestError) -> None:
        shard = self.shards.pop(group, None)
        for waits in shard.waits.values() if shard is not None else ():
            self.open_count -= len(waits)
            for wait in waits:
                wait.reply(None, error)

    def on_disconnect(self, connection: Connection) -> None:
        """Its waiters gave up: they leave their queues (a grant they hold stays)."""
        for group, shard in list(self.shards.items()):
            touched = [key for key, waits in shard.waits.items()
                       if any(wait.origin is connection for wait in waits)]
            if not touched:
                continue
            replica = self.node.replicas.get(group)
            for name, waiter in touched:
                waits = shard.waits.pop((name, waiter))
                left = [wait for wait in waits if wait.origin is not connection]
                self.open_count -= len(waits) - len(left)
                if left:  # the waiter listens on another connection too: it stays
                    shard.waits[(name, waiter)] = left
                elif replica is not None and replica.raft.role == Role.LEADER:
                    replica.propose(encode("lock_cancel", 0, 0, name, waiter, True), _ignore)
            self.node.mark(group)

    # ------------------------------------------------------------------ checking

    def _checked_name(self, body: dict[str, Any]) -> tuple[int, bytes]:
        shard, name = rq.checked_key(body, self.node.config.shards, MAX_LOCK_NAME_BYTES,
                                     name="name")
        return shard, name


def _checked_waiter(body: dict[str, Any]) -> int:
    waiter = rq.field(body, "waiter", int)
    if not 0 < waiter < 2**63:
        raise BadRequest(f"waiter must be in 1..2**63-1, got {waiter}")
    return waiter  # type: ignore[no-any-return]


def _left_ms(deadline: float | None, now: float) -> int | None:
    return None if deadline is None else max(0, round((deadline - now) * 1000))


def _ignore(result: Any, error: RequestError | None) -> None:
    """Answers to the node's own cancels: the log is the record."""
