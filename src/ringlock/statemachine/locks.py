"""Lock queues, fencing tokens and the per-lock highest token seen, for one shard.

Theory of operation. `LockTable` is part of `ShardStateMachine` and is changed only
by its `apply`, so it is deterministic too: no clock, no I/O, no randomness.

  * A lock is named by bytes. It exists while it has a holder; it then keeps a FIFO
    queue of waiters. A waiter is an opaque int the client picks for one attempt,
    and always waits under a live lease of this shard (the state machine checks).
  * Modes. Every acquire names a mode: `EXCLUSIVE` ("x", the default: one holder),
    `SHARED` ("s": any number of shared holders, or one exclusive holder: a
    read-write lock), or `SEMAPHORE` ("n": one of `limit` slots). While it exists, a
    lock is either a read-write lock (modes x and s, limit 1) or a semaphore (mode n
    with the limit every acquirer passes; another limit or mode is refused); all its
    holders are in one mode, `_Lock.mode`. A freed lock is forgotten, limit and all.
  * Fairness: grants go strictly from the head of the queue. A new acquire is granted
    at once only if nobody is queued and it is compatible with the holders (so a
    reader arriving while readers hold but a writer waits queues behind the writer).
    Whenever holders or waiters leave, the head is granted, and the next, and so on
    while compatible (a run of readers at once; a semaphore's head up to its limit),
    stopping at the first that is not.
  * Every grant takes its own fencing token from the shard's revision, raised by one
    for the grant. The revision only grows (and travels in snapshots), so a grant's
    token is larger than every earlier token of this shard, of this lock or any
    other, even after the lock was freed and forgotten: no counter per lock.
  * Releasing, cancelling, or revoking a lease hands a freed lock on at once; each
    such grant is returned, so the server can push it.
  * Fences. `fences` keeps two watermarks per lock name: the highest token seen in
    any mode and the highest seen in exclusive mode, learned from grants here and
    from fenced writes (the lock may live on another shard). A fenced write names
    the mode its token was granted in (exclusive unless said otherwise):
      - exclusive: refused (`FencedOut`) below the highest token of ANY mode, since
        any later grant means the exclusive hold is over (as for plain locks);
      - shared or semaphore: refused only below the highest EXCLUSIVE token, since
        only an exclusive grant ends every shared hold; holders that share a lock
        never fence each other out. (A semaphore's N slots turn over freely, so its
        tokens order grants but fence nothing among its holders.)
    A write that passes raises the any-mode watermark, and the exclusive one if it
    was exclusive. The table is bounded by `MAX_FENCED_LOCKS`: the name used least
    recently is forgotten first, after which a holder stale by that many other names
    could write once (a lock held on this shard is still checked against its
    holders' tokens).

Invariants (checked with `invariant`): an exclusive lock has one holder; shared
holders never coexist with an exclusive one (one mode per lock); a semaphore has at
most `limit` holders; no waiter both holds and waits; the queue's head is never
grantable (nothing waits needlessly); a lock without a holder does not exist; every
grant's token is larger than the previous grant's on this shard; `by_lease` indexes
exactly the holds and waits.

Must never import asyncio, time, socket, os or anything that does I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeAlias

from ringlock.errors import RinglockError
from ringlock.invariant import invariant

MAX_LOCK_NAME_BYTES = 1024
"""A lock name longer than this is refused (`LockLimitExceeded`)."""
MAX_WAITERS_PER_LOCK = 1024
"""Queued waiters per lock (the holders not counted); one more is refused."""
MAX_LOCKS_PER_SHARD = 10_000
"""Locks held at once on one shard; acquiring a free lock beyond it is refused."""
MAX_FENCED_LOCKS = 100_000
"""Lock names whose highest tokens a shard remembers; the least recently used goes first."""
MAX_SEMAPHORE_LIMIT = 1024
"""The largest `limit` of a semaphore (its holders at once); a larger one is refused."""

EXCLUSIVE = "x"
"""One holder at a time: a plain lock, or the writer of a read-write lock."""
SHARED = "s"
"""A reader of a read-write lock: any number together, never with an exclusive holder."""
SEMAPHORE = "n"
"""One of a semaphore's `limit` slots."""
MODES = (EXCLUSIVE, SHARED, SEMAPHORE)

LOCK_RECORD_FORMAT = 2
"""The lock table's snapshot record: 2 = [2, last token, locks with holders, mode,
limit and queue modes, fences with both watermarks]; 1 (no marker, three fields) =
[last token, locks with one exclusive holder, fences with one token]. Both restore."""


class StateMachineError(RinglockError):
    """A command is malformed or refers to something that does not exist; nothing changed.
    (Defined here so lock errors can derive from it; `ringlock.statemachine.kv` exports it.)"""


class LockLimitExceeded(StateMachineError):
    """A lock name, a lock's queue, the shard's number of locks, or a semaphore's limit
    exceeded its limit."""


class NotHolder(StateMachineError):
    """`lock_release` by a waiter that does not hold the lock (it may have lost it when
    its lease expired); nothing changed."""


class FencedOut(StateMachineError):
    """A fenced write carried a token lower than the highest seen for that lock (for a
    shared or semaphore token: the highest seen in exclusive mode)."""


class Holder(NamedTuple):
    waiter: int
    lease: int
    token: int


class Waiter(NamedTuple):
    """A queued acquire: `waiter` under `lease`, asking for `mode`."""

    waiter: int
    lease: int
    mode: str


class Grant(NamedTuple):
    """A lock handed to `waiter` (under `lease`) with fencing token `token`."""

    name: bytes
    waiter: int
    lease: int
    token: int


class Grants(tuple[Grant, ...]):
    """Several grants made by one command, in order (a run of readers, semaphore slots)."""

    __slots__ = ()

    @property
    def grants(self) -> tuple[Grant, ...]:
        return tuple(self)

    def __repr__(self) -> str:
        return f"Grants({list(self)!r})"


Handed: TypeAlias = Grant | Grants | None
"""What a release or cancel handed on: None (nothing), the one Grant (as with plain
locks), or Grants when it was several. `grants_of` flattens all three."""


class Acquired(NamedTuple):
    """`("granted", token)` or `("queued", position)`, position 1 being next in line."""

    status: str
    value: int


class LockInfo(NamedTuple):
    """A held lock: its holders in grant order, its queue in FIFO order, the holders'
    mode and the limit (a semaphore's; 1 for a read-write lock)."""

    name: bytes
    holders: list[Holder]
    queue: list[Waiter]
    mode: str = EXCLUSIVE
    limit: int = 1

    @property
    def holder(self) -> Holder:
        """The earliest holder (the only one of an exclusive lock)."""
        return self.holders[0]


@dataclass(slots=True)
class _Lock:
    mode: str
    limit: int
    holders: dict[int, Holder] = field(default_factory=dict)
    """waiter -> Holder, in grant order (so in token order)."""
    queue: dict[int, tuple[int, str]] = field(default_factory=dict)
    """waiter -> (lease, mode), in arrival order."""


class LockTable:
    def __init__(self, next_token: Callable[[], int]) -> None:
        self._next_token = next_token
        """Raises the shard's revision by one and returns it."""
        self.locks: dict[bytes, _Lock] = {}
        self.by_lease: dict[int, set[tuple[bytes, int]]] = {}
        """lease -> (lock name, waiter) of every hold and wait under it (derived)."""
        self.fences: dict[bytes, tuple[int, int]] = {}
        """lock name -> (highest token seen in any mode, highest seen in exclusive mode),
        least recently used first."""
        self.last_token = 0
        """The token of the latest grant on this shard."""
        self.departures = 0
        """Raised each time a waiter or holder leaves other than by its own release (a
        cancel, a lease's end): the server then re-checks the waits it is holding open.
        Not part of the state (not in snapshots): a counter of events seen here."""

    # ------------------------------------------------------------------ commands

    def acquire(self, name: bytes, lease: int, waiter: int, queue: bool = True,
                mode: str = EXCLUSIVE, limit: int = 1) -> Acquired:
        """Grant at once if nobody waits and `mode` is compatible with the holders, else
        queue (or, with `queue` false, answer "busy" and change nothing); a waiter
        already here gets its status."""
        _check_name(name)
        if not _is_int(waiter) or not _is_int(lease):
            raise StateMachineError("waiter and lease must be integers")
        _check_mode(mode, limit)
        lock = self.locks.get(name)
        if lock is None:
            if len(self.locks) >= MAX_LOCKS_PER_SHARD:
                raise LockLimitExceeded(
                    f"{len(self.locks)} locks held on this shard: MAX_LOCKS_PER_SHARD="
                    f"{MAX_LOCKS_PER_SHARD}")
            lock = self.locks[name] = _Lock(mode, limit)
            self._index(lease, name, waiter)
            token = self._grant(name, lock, waiter, lease, mode).token
            self._check(name)
            return Acquired("granted", token)
        _same_kind(name, lock, mode, limit)
        holder = lock.holders.get(waiter)
        if holder is not None:
            _same_wait(name, waiter, (holder.lease, lock.mode), (lease, mode))
            return Acquired("granted", holder.token)
        if waiter in lock.queue:
            _same_wait(name, waiter, lock.queue[waiter], (lease, mode))
            return Acquired("queued", list(lock.queue).index(waiter) + 1)
        if not lock.queue and _compatible(lock, mode):
            self._index(lease, name, waiter)
            token = self._grant(name, lock, waiter, lease, mode).token
            self._check(name)
            return Acquired("granted", token)
        if not queue:
            return Acquired("busy", 0)
        if len(lock.queue) >= MAX_WAITERS_PER_LOCK:
            raise LockLimitExceeded(
                f"lock {name!r} has {len(lock.queue)} waiters: MAX_WAITERS_PER_LOCK="
                f"{MAX_WAITERS_PER_LOCK}")
        lock.queue[waiter] = (lease, mode)
        self._index(lease, name, waiter)
        self._check(name)
        return Acquired("queued", len(lock.queue))

    def release(self, name: bytes, waiter: int) -> Handed:
        """Give up the hold of `waiter`; returns what this handed on to the waiters."""
        lock = self.locks.get(name)
        holder = None if lock is None else lock.holders.get(waiter)
        if lock is None or holder is None:
            raise NotHolder(f"waiter {waiter} does not hold lock {name!r}")
        del lock.holders[waiter]
        self._unindex(holder.lease, name, waiter)
        return _handed(self._grant_ready(name, lock))

    def cancel(self, name: bytes, waiter: int, queued_only: bool = False) -> Handed:
        """Leave the queue (nothing if not there); a holder releases instead, unless
        `queued_only` (a server cancelling the waits of a closed connection must not
        release a grant whose answer was lost: the client may re-attach to it). A
        waiter leaving the queue can let the ones behind it in (a reader behind a
        cancelled writer), so this too returns what it handed on."""
        lock = self.locks.get(name)
        if lock is None:
            return None
        if waiter in lock.holders:
            if queued_only:
                return None
            self.departures += 1
            return self.release(name, waiter)
        wait = lock.queue.pop(waiter, None)
        if wait is None:
            return None
        self.departures += 1
        self._unindex(wait[0], name, waiter)
        return _handed(self._grant_ready(name, lock))

    def drop_lease(self, lease: int) -> list[Grant]:
        """Drop every hold and wait under `lease`; returns the grants this made, by lock
        name, and for each lock in grant order."""
        waits = self.by_lease.pop(lease, set())
        if waits:
            self.departures += 1
        for name, waiter in waits:
            lock = self.locks[name]
            if lock.holders.pop(waiter, None) is None:
                del lock.queue[waiter]
        grants: list[Grant] = []
        for name in sorted({name for name, _ in waits}):  # each rid of `lease` already
            grants.extend(self._grant_ready(name, self.locks[name]))
        invariant(lease not in self.by_lease, f"lease {lease} still indexed after its drop")
        return grants

    def check_fence(self, name: bytes, token: int, mode: str = EXCLUSIVE) -> None:
        """Raise FencedOut if `token`, granted in `mode`, is stale: below the highest
        token seen in any mode (exclusive), or in exclusive mode (shared, semaphore)."""
        highest, exclusive = self.fences.get(name, (0, 0))
        lock = self.locks.get(name)
        if lock is not None:  # survives the fence's eviction from `fences`
            newest = next(reversed(lock.holders.values())).token
            highest = max(highest, newest)
            if lock.mode == EXCLUSIVE:
                exclusive = max(exclusive, newest)
        bound = highest if mode == EXCLUSIVE else exclusive
        if token < bound:
            kind = "" if mode == EXCLUSIVE else " in exclusive mode"
            raise FencedOut(f"fencing token {token} ({_MODE_NAMES[mode]}) of lock {name!r} "
                            f"is stale: {bound} was seen{kind}")

    def see_fence(self, name: bytes, token: int, mode: str = EXCLUSIVE) -> None:
        """Remember `token`, granted in `mode`, as seen for `name` (most recently used)."""
        highest, exclusive = self.fences.pop(name, (0, 0))
        if mode == EXCLUSIVE:
            exclusive = max(exclusive, token)
        self.fences[name] = (max(highest, token), exclusive)
        if len(self.fences) > MAX_FENCED_LOCKS:
            del self.fences[next(iter(self.fences))]

    # ------------------------------------------------------------------- reading

    def status(self, name: bytes, waiter: int) -> Acquired | None:
        """Where `waiter` stands on lock `name`: granted (with its token), queued (with
        its position), or None when it is neither."""
        lock = self.locks.get(name)
        if lock is None:
            return None
        holder = lock.holders.get(waiter)
        if holder is not None:
            return Acquired("granted", holder.token)
        if waiter in lock.queue:
            return Acquired("queued", list(lock.queue).index(waiter) + 1)
        return None

    def describe(self) -> list[LockInfo]:
        """Every held lock by name: holders, queue, mode, limit (for `ringlock locks`)."""
        return [LockInfo(name, list(lock.holders.values()),
                         [Waiter(w, lease, mode) for w, (lease, mode) in lock.queue.items()],
                         lock.mode, lock.limit)
                for name, lock in sorted(self.locks.items())]

    def check_all(self) -> None:
        """Every invariant over the whole table (tests; too slow for each command)."""
        indexed: set[tuple[int, bytes, int]] = set()
        for name, lock in self.locks.items():
            self._check(name)
            indexed.update((h.lease, name, h.waiter) for h in lock.holders.values())
            indexed.update((lease, name, w) for w, (lease, _) in lock.queue.items())
            invariant(all(h.token <= self.last_token for h in lock.holders.values()),
                      f"lock {name!r} from the future")
        flat = {(lease, n, w) for lease, waits in self.by_lease.items() for n, w in waits}
        invariant(flat == indexed, "by_lease does not index exactly the holds and waits")
        invariant(all(self.by_lease.values()), "an empty lease entry in by_lease")
        invariant(all(x <= h for h, x in self.fences.values()),
                  "an exclusive watermark above the highest token seen")

    # ----------------------------------------------------------------- snapshots

    def to_record(self) -> list[Any]:
        return [
            LOCK_RECORD_FORMAT,
            self.last_token,
            [[name, lock.mode, lock.limit, [list(h) for h in lock.holders.values()],
              [[w, lease, mode] for w, (lease, mode) in lock.queue.items()]]
             for name, lock in sorted(self.locks.items())],
            # In least-recently-used order, which eviction relies on: not sorted.
            [[name, highest, exclusive] for name, (highest, exclusive) in self.fences.items()],
        ]

    @staticmethod
    def from_record(record: list[Any], next_token: Callable[[], int]) -> LockTable:
        table = LockTable(next_token)
        if len(record) == 3:  # format 1: one exclusive holder per lock, one token a fence
            last_token, old_locks, old_fences = record
            locks = [[name, EXCLUSIVE, 1, [holder], [[w, lease, EXCLUSIVE] for w, lease in queue]]
                     for name, holder, queue in old_locks]
            fences = [[name, token, token] for name, token in old_fences]
        else:
            version, last_token, locks, fences = record
            invariant(version == LOCK_RECORD_FORMAT, f"unknown lock record format {version}")
        table.last_token = last_token
        for name, mode, limit, holders, queue in locks:
            lock = _Lock(mode, limit, {h[0]: Holder(*h) for h in holders},
                         {w: (lease, wait_mode) for w, lease, wait_mode in queue})
            table.locks[name] = lock
            for holder in lock.holders.values():
                table._index(holder.lease, name, holder.waiter)
            for waiter, (lease, _) in lock.queue.items():
                table._index(lease, name, waiter)
            table._check(name)
        table.fences = {name: (highest, exclusive) for name, highest, exclusive in fences}
        return table

    # ------------------------------------------------------------------ internal

    def _take_token(self, name: bytes, mode: str) -> int:
        token = self._next_token()
        invariant(token > self.last_token, "token %d for lock %r not above the last %d",
                  token, name, self.last_token)
        self.last_token = token
        self.see_fence(name, token, mode)
        return token

    def _grant(self, name: bytes, lock: _Lock, waiter: int, lease: int, mode: str) -> Grant:
        """Make `waiter` a holder (already indexed under `lease`) with a new token."""
        invariant(_compatible(lock, mode), "grant of lock %r in mode %r while held in mode %r "
                  "by %d", name, mode, lock.mode, len(lock.holders))
        if not lock.holders:
            lock.mode = mode
        token = self._take_token(name, mode)
        lock.holders[waiter] = Holder(waiter, lease, token)
        return Grant(name, waiter, lease, token)

    def _grant_ready(self, name: bytes, lock: _Lock) -> list[Grant]:
        """Holders or waiters have gone: grant from the head of the queue while the head
        is compatible with the holders, then forget the lock if nobody holds it."""
        grants = []
        while lock.queue:
            waiter, (lease, mode) = next(iter(lock.queue.items()))
            if not _compatible(lock, mode):
                break
            del lock.queue[waiter]
            grants.append(self._grant(name, lock, waiter, lease, mode))
        if lock.holders:
            self._check(name)
        else:
            invariant(not lock.queue, "lock %r without holders keeps a queue", name)
            del self.locks[name]
        return grants

    def _check(self, name: bytes) -> None:
        """Checked after every change of a lock. The messages are formatted only when an
        invariant fails (`invariant`'s args): this runs on every acquire and release."""
        lock = self.locks[name]
        holders = len(lock.holders)
        invariant(holders >= 1, "lock %r exists without a holder", name)
        invariant(lock.mode in MODES, "lock %r in unknown mode %r", name, lock.mode)
        if lock.mode == SEMAPHORE:
            invariant(holders <= lock.limit, "semaphore %r has %d holders, over its limit %d",
                      name, holders, lock.limit)
            invariant(all(m == SEMAPHORE for _, m in lock.queue.values()),
                      "semaphore %r has a waiter in another mode", name)
        else:
            invariant(lock.limit == 1, "read-write lock %r with limit %d", name, lock.limit)
            invariant(lock.mode == SHARED or holders == 1,
                      "exclusive lock %r has %d holders", name, holders)
            invariant(all(m != SEMAPHORE for _, m in lock.queue.values()),
                      "read-write lock %r has a semaphore waiter", name)
        tokens = [h.token for h in lock.holders.values()]
        invariant(tokens == sorted(set(tokens)), "tokens of lock %r not increasing", name)
        both = lock.holders.keys() & lock.queue.keys()
        invariant(not both, "waiters %s both hold and wait for lock %r", both, name)
        invariant(not lock.queue or not _compatible(lock, next(iter(lock.queue.values()))[1]),
                  "the head of lock %r's queue waits though it could hold", name)
        invariant(len(lock.queue) <= MAX_WAITERS_PER_LOCK, "lock %r over its limit", name)

    def _index(self, lease: int, name: bytes, waiter: int) -> None:
        self.by_lease.setdefault(lease, set()).add((name, waiter))

    def _unindex(self, lease: int, name: bytes, waiter: int) -> None:
        waits = self.by_lease[lease]
        waits.remove((name, waiter))
        if not waits:
            del self.by_lease[lease]


_MODE_NAMES = {EXCLUSIVE: "exclusive", SHARED: "shared", SEMAPHORE: "semaphore"}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _compatible(lock: _Lock, mode: str) -> bool:
    """Whether `mode` may hold `lock` alongside its present holders."""
    if not lock.holders:
        return True
    if mode == SHARED:
        return lock.mode == SHARED
    if mode == SEMAPHORE:
        return lock.mode == SEMAPHORE and len(lock.holders) < lock.limit
    return False


def _check_mode(mode: Any, limit: Any) -> None:
    if not isinstance(mode, str) or mode not in MODES:
        raise StateMachineError(f"a lock mode is one of {', '.join(map(repr, MODES))}, "
                                f"got {mode!r}")
    if not _is_int(limit) or limit < 1:
        raise StateMachineError(f"a lock limit is a positive integer, got {limit!r}")
    if mode != SEMAPHORE and limit != 1:
        raise StateMachineError(f"a limit other than 1 is for mode {SEMAPHORE!r} "
                                f"(semaphores), not {mode!r}")
    if limit > MAX_SEMAPHORE_LIMIT:
        raise LockLimitExceeded(
            f"semaphore limit {limit}: MAX_SEMAPHORE_LIMIT={MAX_SEMAPHORE_LIMIT}")


def _same_kind(name: bytes, lock: _Lock, mode: str, limit: int) -> None:
    """An acquire of a held lock must treat it as what it is."""
    if (mode == SEMAPHORE) != (lock.mode == SEMAPHORE):
        what = (f"a semaphore (mode {SEMAPHORE!r}, limit {lock.limit})"
                if lock.mode == SEMAPHORE else
                f"a lock (modes {EXCLUSIVE!r} and {SHARED!r})")
        raise StateMachineError(f"lock {name!r} is held as {what}: mode {mode!r} refused")
    if limit != lock.limit:
        raise StateMachineError(f"semaphore {name!r} has limit {lock.limit}: every acquirer "
                                f"must pass it, got {limit}")


def _same_wait(name: bytes, waiter: int, held: tuple[int, str], asked: tuple[int, str]) -> None:
    if held[0] != asked[0]:
        raise StateMachineError(
            f"waiter {waiter} of lock {name!r} waits under lease {held[0]}, not {asked[0]}")
    if held[1] != asked[1]:
        raise StateMachineError(
            f"waiter {waiter} of lock {name!r} waits in mode {held[1]!r}, not {asked[1]!r}")


def _check_name(name: Any) -> None:
    if not isinstance(name, bytes):
        raise StateMachineError(f"a lock name is bytes, got {type(name).__name__}")
    if len(name) > MAX_LOCK_NAME_BYTES:
        raise LockLimitExceeded(
            f"lock name of {len(name)} bytes: MAX_LOCK_NAME_BYTES={MAX_LOCK_NAME_BYTES}")


def _handed(grants: list[Grant]) -> Handed:
    if not grants:
        return None
    return grants[0] if len(grants) == 1 else Grants(grants)


def parse_fence(fence: Any) -> tuple[bytes, int, str] | None:
    """The optional trailing fence of put/delete/cas: nil, [lock name, token] (granted
    in exclusive mode), or [lock name, token, mode]."""
    if fence is None:
        return None
    name, token, *rest = fence
    if len(rest) > 1:
        raise StateMachineError(f"a fence is [name, token] or [name, token, mode], got {fence!r}")
    _check_name(name)
    if not _is_int(token) or token < 1:
        raise StateMachineError(f"a fencing token is a positive integer, got {token!r}")
    mode = rest[0] if rest else EXCLUSIVE
    if not isinstance(mode, str) or mode not in MODES:
        raise StateMachineError(f"a fence's mode is one of {', '.join(map(repr, MODES))}, "
                                f"got {mode!r}")
    return name, token, mode


def grants_of(result: Any) -> list[Grant]:
    """The grants an apply result made to waiters other than the caller (to push them)."""
    if isinstance(result, Grant):
        return [result]
    grants = getattr(result, "grants", None)
    return list(grants) if isinstance(grants, tuple) else []
