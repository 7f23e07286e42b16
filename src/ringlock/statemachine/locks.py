"""Lock queues, fencing tokens and the per-lock highest token seen, for one shard.

Theory of operation. `LockTable` is part of `ShardStateMachine` and is changed only
by its `apply`, so it is deterministic too: no clock, no I/O, no randomness.

  * A lock is named by bytes. It exists while it has a holder; it then keeps a FIFO
    queue of waiters. A waiter is an opaque int the client picks for one attempt,
    and always waits under a live lease of this shard (the state machine checks).
  * Every grant takes a fencing token from the shard's revision, raised by one for
    the grant. The revision only grows (and travels in snapshots), so a grant's
    token is larger than every earlier token of this shard, of this lock or any
    other, even after the lock was freed and forgotten: no counter per lock.
  * Releasing, cancelling, or revoking a lease hands a freed lock to the next
    waiter at once; each such grant is returned, so the server can push it.
  * `fences` keeps the highest token seen per lock name: from grants here and from
    fenced writes (the lock may live on another shard). A fenced write with a lower
    token is refused (`FencedOut`). The table is bounded by `MAX_FENCED_LOCKS`: the
    name used least recently is forgotten first, after which a holder stale by that
    many other names could write once (a lock held on this shard is still checked
    against its holder's token).

Invariants (checked with `invariant`): one holder per lock; a queued waiter is never
the holder; a lock without a holder does not exist; every grant's token is larger
than the previous grant's on this shard; `by_lease` indexes exactly the waits.

Must never import asyncio, time, socket, os or anything that does I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ringlock.errors import RinglockError
from ringlock.invariant import invariant

MAX_LOCK_NAME_BYTES = 1024
"""A lock name longer than this is refused (`LockLimitExceeded`)."""
MAX_WAITERS_PER_LOCK = 1024
"""Queued waiters per lock (the holder not counted); one more is refused."""
MAX_LOCKS_PER_SHARD = 10_000
"""Locks held at once on one shard; acquiring a free lock beyond it is refused."""
MAX_FENCED_LOCKS = 100_000
"""Lock names whose highest token a shard remembers; the least recently used goes first."""


class StateMachineError(RinglockError):
    """A command is malformed or refers to something that does not exist; nothing changed.
    (Defined here so lock errors can derive from it; `ringlock.statemachine.kv` exports it.)"""


class LockLimitExceeded(StateMachineError):
    """A lock name, a lock's queue, or the shard's number of locks exceeded its limit."""


class NotHolder(StateMachineError):
    """`lock_release` by a waiter that does not hold the lock (it may have lost it when
    its lease expired); nothing changed."""


class FencedOut(StateMachineError):
    """A fenced write carried a token lower than the highest seen for that lock."""


class Holder(NamedTuple):
    waiter: int
    lease: int
    token: int


class Grant(NamedTuple):
    """A lock handed to `waiter` (under `lease`) with fencing token `token`."""

    name: bytes
    waiter: int
    lease: int
    token: int


class Acquired(NamedTuple):
    """`("granted", token)` or `("queued", position)`, position 1 being next in line."""

    status: str
    value: int


class LockInfo(NamedTuple):
    name: bytes
    holder: Holder
    queue: list[tuple[int, int]]
    """(waiter, lease) in FIFO order."""


@dataclass(slots=True)
class _Lock:
    holder: Holder
    queue: dict[int, int] = field(default_factory=dict)
    """waiter -> lease, in arrival order."""


class LockTable:
    def __init__(self, next_token: Callable[[], int]) -> None:
        self._next_token = next_token
        """Raises the shard's revision by one and returns it."""
        self.locks: dict[bytes, _Lock] = {}
        self.by_lease: dict[int, set[tuple[bytes, int]]] = {}
        """lease -> (lock name, waiter) of every hold and wait under it (derived)."""
        self.fences: dict[bytes, int] = {}
        """lock name -> highest token seen, least recently used first."""
        self.last_token = 0
        """The token of the latest grant on this shard."""
        self.departures = 0
        """Raised each time a waiter or holder leaves other than by its own release (a
        cancel, a lease's end): the server then re-checks the waits it is holding open.
        Not part of the state (not in snapshots): a counter of events seen here."""

    # ------------------------------------------------------------------ commands

    def acquire(self, name: bytes, lease: int, waiter: int, queue: bool = True) -> Acquired:
        """Grant at once if free, else queue (or, with `queue` false, answer "busy" and
        change nothing); a waiter already here gets its status."""
        _check_name(name)
        if not isinstance(waiter, int) or not isinstance(lease, int):
            raise StateMachineError("waiter and lease must be integers")
        lock = self.locks.get(name)
        if lock is None:
            if len(self.locks) >= MAX_LOCKS_PER_SHARD:
                raise LockLimitExceeded(
                    f"{len(self.locks)} locks held on this shard: MAX_LOCKS_PER_SHARD="
                    f"{MAX_LOCKS_PER_SHARD}")
            token = self._take_token(name)
            self.locks[name] = _Lock(Holder(waiter, lease, token))
            self._index(lease, name, waiter)
            return Acquired("granted", token)
        if lock.holder.waiter == waiter:
            _same_lease(name, waiter, lock.holder.lease, lease)
            return Acquired("granted", lock.holder.token)
        if waiter in lock.queue:
            _same_lease(name, waiter, lock.queue[waiter], lease)
            return Acquired("queued", list(lock.queue).index(waiter) + 1)
        if not queue:
            return Acquired("busy", 0)
        if len(lock.queue) >= MAX_WAITERS_PER_LOCK:
            raise LockLimitExceeded(
                f"lock {name!r} has {len(lock.queue)} waiters: MAX_WAITERS_PER_LOCK="
                f"{MAX_WAITERS_PER_LOCK}")
        lock.queue[waiter] = lease
        self._index(lease, name, waiter)
        self._check(name)
        return Acquired("queued", len(lock.queue))

    def release(self, name: bytes, waiter: int) -> Grant | None:
        """Free the lock held by `waiter`; returns the grant to the next waiter, if any."""
        lock = self.locks.get(name)
        if lock is None or lock.holder.waiter != waiter:
            raise NotHolder(f"waiter {waiter} does not hold lock {name!r}")
        self._unindex(lock.holder.lease, name, waiter)
        return self._grant_next(name, lock)

    def cancel(self, name: bytes, waiter: int, queued_only: bool = False) -> Grant | None:
        """Leave the queue (nothing if not there); a holder releases instead, unless
        `queued_only` (a server cancelling the waits of a closed connection must not
        release a grant whose answer was lost: the client may re-attach to it)."""
        lock = self.locks.get(name)
        if lock is None:
            return None
        if lock.holder.waiter == waiter:
            if queued_only:
                return None
            self.departures += 1
            return self.release(name, waiter)
        lease = lock.queue.pop(waiter, None)
        if lease is not None:
            self.departures += 1
            self._unindex(lease, name, waiter)
        return None

    def drop_lease(self, lease: int) -> list[Grant]:
        """Drop every hold and wait under `lease`; returns the grants this made, by name."""
        waits = self.by_lease.pop(lease, set())
        if waits:
            self.departures += 1
        freed: list[bytes] = []
        for name, waiter in sorted(waits):
            lock = self.locks[name]
            if lock.holder.waiter == waiter:
                freed.append(name)
            else:
                del lock.queue[waiter]
        grants = []
        for name in freed:  # sorted; each lock's queue is already rid of `lease`
            grant = self._grant_next(name, self.locks[name])
            if grant is not None:
                grants.append(grant)
        invariant(lease not in self.by_lease, f"lease {lease} still indexed after its drop")
        return grants

    def check_fence(self, name: bytes, token: int) -> None:
        """Raise FencedOut unless `token` is at least the highest seen for `name`."""
        highest = self.fences.get(name, 0)
        lock = self.locks.get(name)
        if lock is not None:  # survives the fence's eviction from `fences`
            highest = max(highest, lock.holder.token)
        if token < highest:
            raise FencedOut(f"fencing token {token} of lock {name!r} is stale: "
                            f"{highest} was seen")

    def see_fence(self, name: bytes, token: int) -> None:
        """Remember `token` as seen for `name` (most recently used)."""
        highest = max(token, self.fences.pop(name, 0))
        self.fences[name] = highest
        if len(self.fences) > MAX_FENCED_LOCKS:
            del self.fences[next(iter(self.fences))]

    # ------------------------------------------------------------------- reading

    def status(self, name: bytes, waiter: int) -> Acquired | None:
        """Where `waiter` stands on lock `name`: granted (with its token), queued (with
        its position), or None when it is neither."""
        lock = self.locks.get(name)
        if lock is None:
            return None
        if lock.holder.waiter == waiter:
            return Acquired("granted", lock.holder.token)
        if waiter in lock.queue:
            return Acquired("queued", list(lock.queue).index(waiter) + 1)
        return None

    def describe(self) -> list[LockInfo]:
        """Every held lock by name: holder and queue (for `ringlock locks`)."""
        return [LockInfo(name, lock.holder, list(lock.queue.items()))
                for name, lock in sorted(self.locks.items())]

    def check_all(self) -> None:
        """Every invariant over the whole table (tests; too slow for each command)."""
        indexed: set[tuple[int, bytes, int]] = set()
        for name, lock in self.locks.items():
            self._check(name)
            indexed.add((lock.holder.lease, name, lock.holder.waiter))
            indexed.update((lease, name, waiter) for waiter, lease in lock.queue.items())
            invariant(lock.holder.token <= self.last_token, f"lock {name!r} from the future")
        flat = {(lease, n, w) for lease, waits in self.by_lease.items() for n, w in waits}
        invariant(flat == indexed, "by_lease does not index exactly the holds and waits")
        invariant(all(self.by_lease.values()), "an empty lease entry in by_lease")

    # ----------------------------------------------------------------- snapshots

    def to_record(self) -> list[Any]:
        return [
            self.last_token,
            [[name, list(lock.holder), [[w, lease] for w, lease in lock.queue.items()]]
             for name, lock in sorted(self.locks.items())],
            # In least-recently-used order, which eviction relies on: not sorted.
            [[name, token] for name, token in self.fences.items()],
        ]

    @staticmethod
    def from_record(record: list[Any], next_token: Callable[[], int]) -> LockTable:
        table = LockTable(next_token)
        last_token, locks, fences = record
        table.last_token = last_token
        for name, holder, queue in locks:
            lock = _Lock(Holder(*holder), {waiter: lease for waiter, lease in queue})
            table.locks[name] = lock
            table._index(lock.holder.lease, name, lock.holder.waiter)
            for waiter, lease in lock.queue.items():
                table._index(lease, name, waiter)
            table._check(name)
        table.fences = {name: token for name, token in fences}
        return table

    # ------------------------------------------------------------------ internal

    def _take_token(self, name: bytes) -> int:
        token = self._next_token()
        invariant(token > self.last_token,
                  f"token {token} for lock {name!r} not above the last {self.last_token}")
        self.last_token = token
        self.see_fence(name, token)
        return token

    def _grant_next(self, name: bytes, lock: _Lock) -> Grant | None:
        """The holder has gone: hand the lock to the first waiter, or forget it."""
        if not lock.queue:
            del self.locks[name]
            return None
        waiter = next(iter(lock.queue))
        lease = lock.queue.pop(waiter)
        previous = lock.holder.token
        lock.holder = Holder(waiter, lease, self._take_token(name))
        invariant(lock.holder.token > previous, f"token of lock {name!r} did not increase")
        self._check(name)
        return Grant(name, waiter, lease, lock.holder.token)

    def _check(self, name: bytes) -> None:
        lock = self.locks[name]
        invariant(lock.holder.waiter not in lock.queue,
                  f"waiter {lock.holder.waiter} both holds and waits for lock {name!r}")
        invariant(len(lock.queue) <= MAX_WAITERS_PER_LOCK, f"lock {name!r} over its limit")

    def _index(self, lease: int, name: bytes, waiter: int) -> None:
        self.by_lease.setdefault(lease, set()).add((name, waiter))

    def _unindex(self, lease: int, name: bytes, waiter: int) -> None:
        waits = self.by_lease[lease]
        waits.remove((name, waiter))
        if not waits:
            del self.by_lease[lease]


def _check_name(name: Any) -> None:
    if not isinstance(name, bytes):
        raise StateMachineError(f"a lock name is bytes, got {type(name).__name__}")
    if len(name) > MAX_LOCK_NAME_BYTES:
        raise LockLimitExceeded(
            f"lock name of {len(name)} bytes: MAX_LOCK_NAME_BYTES={MAX_LOCK_NAME_BYTES}")


def _same_lease(name: bytes, waiter: int, held: int, asked: int) -> None:
    if held != asked:
        raise StateMachineError(
            f"waiter {waiter} of lock {name!r} waits under lease {held}, not {asked}")


def parse_fence(fence: Any) -> tuple[bytes, int] | None:
    """The optional trailing fence of put/delete/cas: nil or [lock name, token]."""
    if fence is None:
        return None
    name, token = fence
    _check_name(name)
    if not isinstance(token, int) or isinstance(token, bool) or token < 1:
        raise StateMachineError(f"a fencing token is a positive integer, got {token!r}")
    return name, token


def grants_of(result: Any) -> list[Grant]:
    """The grants an apply result made to waiters other than the caller (to push them)."""
    if isinstance(result, Grant):
        return [result]
    grants = getattr(result, "grants", None)
    return list(grants) if isinstance(grants, tuple) else []
