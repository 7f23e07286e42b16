"""Keys with revisions, leases, and exactly-once writes for one shard.

Theory of operation. `apply(index, command)` is deterministic: every replica applies
the same commands in the same order and reaches the same state and results. Time
enters only inside commands (a lease's expiry is decided by the leader and proposed
as a command carrying the leader's clock), never from a clock read here.

  * Every applied write raises the shard's `revision` by one; a key keeps the
    revision that created it, the revision of its last change, and its version
    (number of changes since creation), as etcd does.
  * A key may be attached to a lease; revoking or expiring the lease deletes its keys.
  * Every change of a key (put, delete, and the deletes of an ended lease, "expire")
    is also remembered, bounded, in `history` for watches (statemachine/history.py).
  * A write carries (client id, request seq). A seq already applied for that client
    returns the recorded result and changes nothing, so a retried write applies once.
    A client's entries are dropped when its session (a lease) ends.
  * Locks (`ringlock.statemachine.locks`): FIFO queues of waiters, each under a lease
    of this shard; a lock is exclusive, read-write (shared and exclusive holders) or
    a semaphore (up to `limit` holders); each grant's fencing token is the shard's
    revision, raised by one. A lease's revoke drops its holds and waits and hands the
    freed locks on.
  * put, delete and cas may carry a trailing fence [lock name, token] or [lock name,
    token, mode]: a token lower than the highest seen for that lock (for a shared or
    semaphore token: the highest seen in exclusive mode) is refused (`FencedOut`) and
    changes nothing; a fence that passes (even on a cas whose compare fails) raises
    the highest seen (and, if exclusive, the highest exclusive).

Commands, `[op, client, seq, *args]` (see `encode`), and their results:

    put key value lease prev_kv [fence]      previous KeyValue or None
    delete key prev_kv [fence]               previous KeyValue / None, or True / False
    cas key target expected then value [fence]   True if the compare held
    lease_grant lease ttl_ms                 lease
    lease_revoke lease                       LeaseRevoked: an int (keys deleted) with
                                             .grants, the locks handed on (Grant list,
                                             by lock name, each lock's in grant order)
    session_end client                       None
    lock_acquire name lease waiter [queue [mode [limit]]]
                                             Acquired ("granted", token) or
                                             ("queued", position), 1 = next in line;
                                             with queue false, ("busy", 0) if it
                                             cannot be granted at once
    lock_release name waiter                 what it handed on: None, a Grant, or
                                             Grants (several, in grant order);
                                             NotHolder if not held by it
    lock_cancel name waiter [queued_only]    as lock_release for a holder (unless
                                             queued_only); for a queued waiter (it
                                             leaves) what that let in, usually None;
                                             None for a stranger

  Lock modes (`mode`, a string; default "x") and `limit` (an int; default 1):
    "x"  exclusive: one holder (a plain lock, or a read-write lock's writer); limit 1
    "s"  shared: a read-write lock's reader; any number of "s" holders, never with an
         "x" holder; limit 1
    "n"  a semaphore slot: up to `limit` (1..MAX_SEMAPHORE_LIMIT) holders, all "n";
         every acquirer of a held semaphore must pass its limit
  A held lock is either a read-write lock ("x"/"s") or a semaphore ("n"): an acquire
  in the other kind, or with another limit, is refused (StateMachineError). Grants go
  from the head of the FIFO queue only: a reader arriving while readers hold is
  granted at once only if nobody waits; when holders leave, the head is granted and
  the next while compatible (a run of readers; semaphore waiters up to the limit).

Errors are returned, not raised (StateMachineError and its kinds: FencedOut,
NotHolder, LockLimitExceeded), and a command that errs changes nothing.

Must never import asyncio, time, socket, os or anything that does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from ringlock.invariant import invariant
from ringlock.statemachine import records
from ringlock.statemachine.history import DELETE, EXPIRE, HistoryBudget, WatchHistory
from ringlock.statemachine.locks import (
    Acquired,
    FencedOut,
    Grant,
    Grants,
    LockInfo,
    LockLimitExceeded,
    LockTable,
    NotHolder,
    StateMachineError,
    parse_fence,
)

MAX_DEDUP_ENTRIES_PER_CLIENT = 1024
"""Results remembered per client: a client retries only its recent requests."""
MAX_DEDUP_CLIENTS = 10_000
"""Clients remembered per shard. The one that wrote least recently is forgotten first
(Raft thesis §6.3: sessions expire the same way on every replica, in log order, never
by a clock). A forgotten client's retry of a write older than 10,000 other clients'
writes could apply twice; its session ending (`session_end`) forgets it at once."""


__all__ = ["Acquired", "Compare", "FencedOut", "Grant", "Grants", "KeyValue",
           "LeaseRevoked", "LockInfo", "LockLimitExceeded", "NotHolder", "ShardStateMachine",
           "StateMachineError", "encode"]


class LeaseNotFound(StateMachineError):
    """A lock was asked for under a lease this shard does not have (it expired or was
    revoked): the client's session is gone, and it takes a new one."""


class LeaseRevoked(int):
    """The result of `lease_revoke`: the number of keys deleted (an int, as before locks,
    and what goes on the wire), with `grants`, the locks the revoke handed to the next
    waiters, for the server to push."""

    grants: tuple[Grant, ...]

    def __new__(cls, keys_deleted: int, grants: tuple[Grant, ...] = ()) -> LeaseRevoked:
        result = super().__new__(cls, keys_deleted)
        result.grants = grants
        return result

    def __repr__(self) -> str:
        return f"LeaseRevoked({int(self)}, grants={self.grants!r})"


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Compare:
    """`target` is "value", "version" or "mod_revision"; a missing key has version 0,
    mod_revision 0 and value None."""

    target: str
    expected: Any


class ShardStateMachine:
    def __init__(self, history_budget: HistoryBudget | None = None) -> None:
        self.revision = 0
        self.applied_index = 0
        self.data: dict[bytes, bytes] = {}
        """key -> its record (records.py): one bytes object per key,
        so a million keys cost about 300 MB rather than 400 (see docs/PERFORMANCE.md)."""
        self.leases: dict[int, tuple[int, set[bytes]]] = {}
        """lease id -> (ttl in ms, keys attached)."""
        self.dedup: dict[int, dict[int, Any]] = {}
        """client id -> {request seq -> result}."""
        self.locks = LockTable(self._next_revision)
        self.history = WatchHistory(budget=history_budget)
        """Recent key changes for watches (statemachine/history.py); not in snapshots."""

    def close(self) -> None:
        """The replica is done with this machine (a snapshot replaced it, or the replica
        left the node): what it shares with the node's other shards is given back."""
        self.history.release()

    # ------------------------------------------------------------------ reading

    def get(self, key: bytes) -> KeyValue | None:
        raw = self.data.get(key)
        return None if raw is None else _unpack(key, raw)

    def __len__(self) -> int:
        return len(self.data)

    def locks_info(self) -> list[LockInfo]:
        """Every held lock, by name: holders (waiter, lease, token) in grant order, queue
        (waiter, lease, mode) in order, the holders' mode and the limit."""
        return self.locks.describe()

    def scan(self, prefix: bytes, limit: int, after: bytes = b"") -> list[KeyValue]:
        """Keys starting with `prefix`, greater than `after`, in order, at most `limit`."""
        if limit < 1:
            raise StateMachineError(f"scan limit must be at least 1, got {limit}")
        keys = sorted(k for k in self.data if k.startswith(prefix) and k > after)
        return [_unpack(k, self.data[k]) for k in keys[:limit]]

    # ----------------------------------------------------------------- applying

    def apply(self, index: int, command: bytes) -> Any:
        """Apply one committed entry; an empty command is Raft's no-op."""
        invariant(index > self.applied_index, "apply of %d after %d", index, self.applied_index)
        self.applied_index = index
        if not command:
            return None
        try:
            fields = msgpack.unpackb(command)
        except Exception as error:  # msgpack raises several types for bad input
            return StateMachineError(f"malformed command: {error!r}")
        if (type(fields) is not list or len(fields) < 3 or type(fields[0]) is not str
                or not _is_id(fields[1]) or not _is_id(fields[2])):
            # Checked before the dedup table is touched: a junk client or seq kept there
            # would break every later snapshot.
            return StateMachineError(f"malformed command: {fields!r:.80}")
        op, client, seq, args = fields[0], fields[1], fields[2], fields[3:]
        if client:
            remembered = self.dedup.get(client, {})
            if seq in remembered:
                return _from_record(remembered[seq])
        try:
            result = self._execute(op, args)
        except StateMachineError as error:
            result = error
        except (ValueError, TypeError) as error:  # wrong arity or types: nothing changed
            result = StateMachineError(f"malformed {op!r} command: {error}")
        if client:
            remembered = self.dedup.pop(client, {})
            self.dedup[client] = remembered  # most recent writer last: evicted last
            if len(self.dedup) > MAX_DEDUP_CLIENTS:
                del self.dedup[next(iter(self.dedup))]
            remembered[seq] = _to_record(result)
            if len(remembered) > MAX_DEDUP_ENTRIES_PER_CLIENT:
                del remembered[next(iter(remembered))]  # the oldest request first
        return result

    def _execute(self, op: str, args: list[Any]) -> Any:
        if op in _FENCED_ARITY:
            return self._fenced(op, args)
        if op == "lease_grant":
            lease, ttl_ms = args
            if not _is_lease(lease) or not lease or not _is_id(ttl_ms) or not ttl_ms:
                raise StateMachineError(f"lease_grant takes a lease id (1..2**63-1) and a "
                                        f"positive ttl_ms, got {lease!r:.40}, {ttl_ms!r:.40}")
            if lease in self.leases:
                raise StateMachineError(f"lease {lease} exists")
            self.leases[lease] = (ttl_ms, set())
            return lease
        if op == "lease_revoke":
            (lease,) = args
            return self._revoke(lease)
        if op == "lock_acquire":
            name, lease, waiter, *optional = args
            if len(optional) > 3:
                raise StateMachineError(f"'lock_acquire' takes three optional arguments "
                                        f"(queue, mode, limit), got {len(optional)}")
            if lease not in self.leases:
                raise LeaseNotFound(f"lease {lease} not found (expired or revoked)")
            queue = bool(optional[0]) if optional else True
            return self.locks.acquire(name, lease, waiter, queue, *optional[1:])
        if op == "lock_release":
            name, waiter = args
            return self.locks.release(name, waiter)
        if op == "lock_cancel":
            name, waiter, *queued_only = args
            _at_most_one("lock_cancel", queued_only)
            return self.locks.cancel(name, waiter, *map(bool, queued_only[:1]))
        if op == "session_end":
            (client,) = args
            self.dedup.pop(client, None)
            return None
        raise StateMachineError(f"unknown command {op!r}")

    def _fenced(self, op: str, args: list[Any]) -> Any:
        """put, delete and cas, with their optional trailing fence checked first."""
        arity = _FENCED_ARITY[op]
        if len(args) not in (arity, arity + 1):
            raise StateMachineError(f"{op!r} takes {arity} arguments and a fence, "
                                    f"got {len(args)}")
        _check_write(op, args[:arity])  # before anything changes
        fence = parse_fence(args[arity]) if len(args) > arity else None
        if fence is not None:
            self.locks.check_fence(*fence)
        result = self._write(op, args[:arity])
        if fence is not None:  # only once the write went through: errors change nothing
            self.locks.see_fence(*fence)
        return result

    def _write(self, op: str, args: list[Any]) -> Any:
        if op == "put":
            key, value, lease, prev_kv = args
            return self._put(key, value, lease, prev_kv)
        if op == "delete":
            key, prev_kv = args
            return self._delete(key, prev_kv)
        key, target, expected, then, value = args
        if not self._compare(key, Compare(target, expected)):
            return False
        if then == "put":
            self._put(key, value, 0, False)
        else:
            self._delete(key, False)
        return True

    def _next_revision(self) -> int:
        self.revision += 1
        return self.revision

    def _put(self, key: bytes, value: bytes, lease: int, prev_kv: bool) -> KeyValue | None:
        if lease and lease not in self.leases:
            raise StateMachineError(f"lease {lease} not found")
        self.revision = revision = self.revision + 1
        raw = self.data.get(key)
        if raw is None:
            self.data[key] = stored = records.pack(revision, revision, 1, lease, value)
        else:  # the previous record's fields, without copying its value unless asked
            create, _, version, old_lease = records.META.unpack_from(raw)
            if old_lease and old_lease != lease:
                self.leases[old_lease][1].discard(key)
            self.data[key] = stored = records.pack(create, revision, version + 1, lease, value)
        if lease:
            self.leases[lease][1].add(key)
        self.history.record_put(revision, key, stored)
        return _unpack(key, raw) if prev_kv and raw is not None else None

    def _delete(self, key: bytes, prev_kv: bool, ended_lease: int = 0) -> KeyValue | bool | None:
        """`ended_lease`: the key goes because that lease ended (an `expire` change)."""
        raw = self.data.pop(key, None)
        if raw is None:
            return None if prev_kv else False
        self.revision += 1
        previous = _unpack(key, raw)
        if previous.lease in self.leases:
            self.leases[previous.lease][1].discard(key)
        if ended_lease:
            self.history.record(self.revision, EXPIRE, key, None, ended_lease)
        else:
            self.history.record(self.revision, DELETE, key, None, previous.lease)
        return previous if prev_kv else True

    def _compare(self, key: bytes, compare: Compare) -> bool:
        current = self.get(key)
        if compare.target == "value":
            return bool((current.value if current else None) == compare.expected)
        if compare.target == "version":
            return bool((current.version if current else 0) == compare.expected)
        if compare.target == "mod_revision":
            return bool((current.mod_revision if current else 0) == compare.expected)
        raise StateMachineError(f"unknown compare target {compare.target!r}")

    def _revoke(self, lease: int) -> LeaseRevoked:
        entry = self.leases.pop(lease, None)
        if entry is None:
            raise StateMachineError(f"lease {lease} not found")
        _, keys = entry
        for key in sorted(keys):
            self._delete(key, False, lease)
        return LeaseRevoked(len(keys), tuple(self.locks.drop_lease(lease)))

    # ---------------------------------------------------------------- snapshots

    def snapshot(self) -> bytes:
        """Keys go as they are kept (key, packed revisions + value), flat and sorted: a
        move sends shards of a million keys, and unpacking every key into a record to
        pack it again cost five times the whole copy."""
        flat: list[bytes] = []
        for key, packed in sorted(self.data.items()):
            flat.append(key)
            flat.append(packed)
        return msgpack.packb([  # type: ignore[no-any-return]
            SNAPSHOT_FORMAT,
            self.revision,
            self.applied_index,
            flat,
            [[lease, ttl, sorted(keys)] for lease, (ttl, keys) in sorted(self.leases.items())],
            # In least-recently-written order, which eviction relies on: not sorted.
            [[client, sorted(results.items())] for client, results in self.dedup.items()],
            self.locks.to_record(),
        ])

    @staticmethod
    def restore(data: bytes, history_budget: HistoryBudget | None = None) -> ShardStateMachine:
        fields = msgpack.unpackb(data, strict_map_key=False)
        machine = ShardStateMachine(history_budget)
        if len(fields) == 5:  # the first format: one record per key
            revision, applied, keys, leases, dedup = fields
            machine.data = {k: records.pack(create, mod, version, lease, value)
                            for k, value, create, mod, version, lease in keys}
        else:  # 2: keys as (key, packed record); 3: and locks
            version, revision, applied, flat, leases, dedup, *rest = fields
            invariant(version in (2, SNAPSHOT_FORMAT), f"unknown snapshot format {version}")
            invariant(len(rest) == (version == SNAPSHOT_FORMAT), f"format {version} misshapen")
            invariant(all(len(p) >= records.META.size for p in flat[1::2]), "truncated key record")
            machine.data = dict(zip(flat[::2], flat[1::2], strict=True))
            if rest:
                machine.locks = LockTable.from_record(rest[0], machine._next_revision)
        machine.revision = revision
        machine.applied_index = applied
        machine.history = WatchHistory(revision, history_budget)  # the past before it is gone
        machine.leases = {lease: (ttl, set(attached)) for lease, ttl, attached in leases}
        machine.dedup = {client: dict(map(tuple, results)) for client, results in dedup}
        invariant(machine.locks.last_token <= machine.revision, "a lock token above revision")
        invariant(all(lease in machine.leases for lease in machine.locks.by_lease),
                  "a lock held or awaited under a lease that does not exist")
        return machine


SNAPSHOT_FORMAT = 3
"""Snapshot layout: 3 = format 2 and the lock table (whose record has its own format,
`locks.LOCK_RECORD_FORMAT`); 2 = keys as (key, packed record) pairs; 1 (no marker) =
records. All three restore."""
_FENCED_ARITY = {"put": 4, "delete": 2, "cas": 5}
"""Arguments of the writes that take a fence, the fence not counted."""
_ERROR_KINDS: dict[str, type[StateMachineError]] = {
    "error": StateMachineError, "fenced_out": FencedOut, "not_holder": NotHolder,
    "lock_limit": LockLimitExceeded, "lease_not_found": LeaseNotFound}


def _is_id(value: Any) -> bool:
    """A client id, request seq or TTL: an int (not a bool) in 0..2**63-1."""
    return type(value) is int and 0 <= value < 2**63


_is_lease = _is_id
"""Lease ids: 0 (none) or positive, below 2**63 (they are packed into each key's record)."""


def _check_write(op: str, args: list[Any]) -> None:
    """The argument types of put, delete and cas: checked up front, so a malformed write
    is refused before it raises the revision or touches a key."""
    if type(args[0]) is not bytes:
        raise StateMachineError(f"{op!r}: a key is bytes, got {type(args[0]).__name__}")
    if op == "put":
        _, value, lease, prev_kv = args
        good = type(value) is bytes and _is_lease(lease) and type(prev_kv) is bool
    elif op == "delete":
        good = type(args[1]) is bool
    else:
        _, target, expected, then, value = args
        good = (target in ("value", "version", "mod_revision") and then in ("put", "delete")
                and type(value) is bytes
                and (expected is None or type(expected) is bytes if target == "value"
                     else _is_id(expected)))
    if not good:
        raise StateMachineError(f"malformed {op!r} command: {args!r:.120}")


def _at_most_one(op: str, optional: list[Any]) -> None:
    if len(optional) > 1:
        raise StateMachineError(f"{op!r} takes one optional argument, got {len(optional)}")


def _unpack(key: bytes, raw: bytes) -> KeyValue:
    create, mod, version, lease = records.META.unpack_from(raw)
    return KeyValue(key, records.value_of(raw), create, mod, version, lease)


def _to_record(result: Any) -> Any:
    """Results are remembered in a form a snapshot can carry."""
    if result is None or type(result) is bool:  # most writes: a put, a delete, a cas
        return ["value", result]
    if isinstance(result, KeyValue):
        return ["kv", result.key, result.value, result.create_revision, result.mod_revision,
                result.version, result.lease]
    if isinstance(result, StateMachineError):
        kind = next((k for k, cls in _ERROR_KINDS.items() if type(result) is cls), "error")
        return [kind, str(result)]
    if isinstance(result, LeaseRevoked):
        return ["revoked", int(result), [list(grant) for grant in result.grants]]
    if isinstance(result, Grant):
        return ["grant", *result]
    if isinstance(result, Grants):
        return ["grants", [list(grant) for grant in result]]
    if isinstance(result, Acquired):
        return ["acquired", *result]
    return ["value", result]


def _from_record(record: Any) -> Any:
    kind = record[0]
    if kind == "kv":
        return KeyValue(*record[1:])
    if kind in _ERROR_KINDS:
        return _ERROR_KINDS[kind](record[1])
    if kind == "revoked":
        return LeaseRevoked(record[1], tuple(Grant(*grant) for grant in record[2]))
    if kind == "grant":
        return Grant(*record[1:])
    if kind == "grants":
        return Grants(Grant(*grant) for grant in record[1])
    if kind == "acquired":
        return Acquired(*record[1:])
    return record[1]


def encode(op: str, client: int, seq: int, *args: Any) -> bytes:
    """A command for `ShardStateMachine.apply`; client 0 means no de-duplication."""
    return msgpack.packb([op, client, seq, *args])  # type: ignore[no-any-return]
