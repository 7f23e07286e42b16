"""Locks for `AsyncClient`: sessions that keep leases alive, and `AsyncLock`.

Theory of operation.

  * A lock lives on the shard its name hashes to, and its holder and waiters hold it
    under a lease of that shard. The client keeps one lease per (shard, TTL), its
    *session*, alive in the background (a keepalive every TTL/3), as etcd's
    concurrency package keeps one session lease.
  * The client knows, conservatively, until when it may believe its lease alive: the
    TTL counted from when it *sent* the last keepalive that succeeded. The shard leader
    counts from when it received it, later, and a new leader restarts the TTL from its
    election, later still; so the server never ends a lease before the client stops
    believing in it (clocks drift, not jump: CLOCK_MONOTONIC on both sides).
  * Past that moment, the session is lost: every lock held under it turns invalid
    (`valid` is false), its `on_lost` callback runs, fenced writes are refused here
    before they are sent, and the lease is revoked so the next waiter goes ahead.
  * A queued acquire is answered by the server when the grant is applied (a push on
    the connection). If the client stops believing in that shard's leader (a
    keepalive or any call found it gone), the wait re-attaches at the new one with
    `lock_wait`, a read: the queue position is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ringlock.errors import (
    FencedOut,
    LockWaitAborted,
    NotFound,
    RequestError,
    RequestTimeout,
)
from ringlock.sharding.keys import shard_of

if TYPE_CHECKING:
    from ringlock.client.aio import AsyncClient, Lease

log = logging.getLogger("ringlock.client")

DEFAULT_LOCK_TTL_S = 10.0
"""A lock's lease TTL unless told otherwise: how long a crashed holder blocks others."""
MIN_LOCK_TTL_S = 0.5
"""Shorter TTLs cannot be kept alive reliably across a leader election."""
KEEPALIVES_PER_TTL = 3
"""Keepalives sent per TTL: two may be lost before the lease is."""
RETRY_KEEPALIVE_S = 0.1
"""After a failed keepalive, the next one goes this soon (within the TTL)."""
FOREVER_S = 10.0 * 365 * 24 * 3600
"""A wait with no timeout: a deadline nobody reaches."""
GIVE_UP_TIMEOUT_S = 2.0
"""How long a waiter that gives up tries to leave the queue (its lease ends it anyway)."""

Fence = Any
"""A held lock (`AsyncLock` or `Lock`), or a (lock name, token) pair."""


@dataclass(frozen=True, slots=True)
class LockState:
    """One held lock as `ringlock locks` shows it."""

    name: bytes
    shard: int
    holder: int
    """The holder's waiter id (one per acquire)."""
    lease: int
    token: int
    waiters: list[tuple[int, int]]
    """(waiter, lease), first in line first."""
    ttl_remaining: float | None
    """Seconds the holder's lease has left on the leader's clock (None: just elected)."""

    @staticmethod
    def from_wire(shard: int, raw: Any) -> LockState:
        name, (holder, lease, token, *_), queue, left_ms = raw
        return LockState(name, shard, holder, lease, token, [(w[0], w[1]) for w in queue],
                         None if left_ms is None else left_ms / 1000)


def fence_field(fence: Fence | None) -> dict[str, Any]:
    """The `fence` field of a write: {} without one; FencedOut if the lock is lost."""
    if fence is None:
        return {}
    pair = fence.fence_pair() if hasattr(fence, "fence_pair") else fence
    try:
        name, token, *rest = pair
        if len(rest) > 1:
            raise ValueError("a fence has a name, a token and perhaps a mode")
    except (TypeError, ValueError) as error:
        raise TypeError("fence is a held lock or a (lock name, token) pair") from error
    if isinstance(name, str):
        name = name.encode()
    if not isinstance(name, bytes) or type(token) is not int or token < 1:
        raise TypeError("fence is a held lock or a (lock name, token) pair")
    return {"fence": [name, token, *rest]}


class LockSession:
    """A lease of one shard kept alive for this client's locks there."""

    def __init__(self, client: AsyncClient, lease: Lease, sent_at: float) -> None:
        self.client = client
        self.lease = lease
        self.ttl = lease.ttl_ms / 1000
        self.valid_until = sent_at + self.ttl
        self.lost_reason: str | None = None
        self.holds: set[AsyncLock] = set()
        self.keepalives = 0
        self._task = asyncio.get_running_loop().create_task(self._keep_alive())

    def valid(self) -> bool:
        return self.lost_reason is None and time.monotonic() < self.valid_until

    async def _keep_alive(self) -> None:
        interval = self.ttl / KEEPALIVES_PER_TTL
        pause = interval
        while True:
            await asyncio.sleep(max(0.0, min(pause, self.valid_until - time.monotonic())))
            sent = time.monotonic()
            if sent >= self.valid_until:
                self.lose(f"no keepalive of lease {self.lease.id} succeeded within its "
                          f"TTL of {self.ttl:g} s")
                return
            try:
                await self.client.keepalive(self.lease, timeout=self.valid_until - sent)
            except NotFound:
                self.lose(f"lease {self.lease.id} expired on the cluster")
                return
            except (RequestError, TimeoutError, OSError) as error:
                log.info("keepalive of lease %d failed: %s", self.lease.id, error)
                pause = RETRY_KEEPALIVE_S
                continue
            self.valid_until = max(self.valid_until, sent + self.ttl)
            self.keepalives += 1
            pause = interval

    def lose(self, reason: str) -> None:
        """Stop believing in the lease: its locks are lost, loudly."""
        if self.lost_reason is not None:
            return
        self.lost_reason = reason
        log.warning("lock session lost: %s", reason)
        self.client.sessions.forget(self)
        for hold in list(self.holds):
            hold._lost(reason)
        self.holds.clear()
        task = asyncio.get_running_loop().create_task(self._revoke())
        self.client.sessions.background.add(task)
        task.add_done_callback(self.client.sessions.background.discard)

    async def _revoke(self) -> None:
        """Whatever the cluster still holds under the lease goes to the next waiters."""
        with contextlib.suppress(RequestError, TimeoutError, OSError):
            await self.client.revoke(self.lease, timeout=GIVE_UP_TIMEOUT_S)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self.lost_reason is None:
            self.lost_reason = "the client closed"
            await self._revoke()


class LockSessions:
    """The sessions of one client, by (shard, TTL in ms)."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self._sessions: dict[tuple[int, int], asyncio.Future[LockSession]] = {}
        self.background: set[asyncio.Task[None]] = set()

    async def get(self, shard: int, ttl_ms: int, timeout: float) -> LockSession:
        key = (shard, ttl_ms)
        pending = self._sessions.get(key)
        if pending is not None and (not pending.done() or (
                not pending.exception() and pending.result().valid())):
            return await asyncio.shield(pending)
        future: asyncio.Future[LockSession] = asyncio.get_running_loop().create_future()
        self._sessions[key] = future
        try:
            sent = time.monotonic()
            lease = await self.client.grant_lease_on(shard, ttl_ms, timeout=timeout)
            session = LockSession(self.client, lease, sent)
        except BaseException as error:
            del self._sessions[key]
            future.set_exception(error)
            future.exception()  # retrieved: other waiters re-raise it themselves
            raise
        future.set_result(session)
        return session

    def forget(self, session: LockSession) -> None:
        key = (session.lease.shard, session.lease.ttl_ms)
        pending = self._sessions.get(key)
        if pending is not None and pending.done() and not pending.exception() \
                and pending.result() is session:
            del self._sessions[key]

    async def close(self) -> None:
        sessions, self._sessions = self._sessions, {}
        for pending in sessions.values():
            if pending.done() and not pending.exception():
                await pending.result().close()
        for task in list(self.background):
            task.cancel()


class AsyncLock:
    """A fair lock of the cluster, in the shape of `asyncio.Lock` (see
    `AsyncClient.lock`). One handle is one holder: acquire it, release it, again."""

    def __init__(self, client: AsyncClient, name: bytes, *, ttl: float,
                 on_lost: Callable[[AsyncLock], None] | None, mode: str = "x",
                 limit: int = 1) -> None:
        if not ttl >= MIN_LOCK_TTL_S:
            raise ValueError(f"a lock's ttl must be at least {MIN_LOCK_TTL_S} s, got {ttl}")
        if not name:
            raise ValueError("a lock needs a name")
        self.client = client
        self.name = name
        self.ttl_ms = round(ttl * 1000)
        self.on_lost = on_lost
        self.mode = mode
        """"x" exclusive, "s" a read-write lock's reader, "n" a semaphore's slot."""
        self.limit = limit
        self.token: int | None = None
        """The fencing token of the current hold: larger than every earlier grant's."""
        self.waiter = 0
        self.lost_reason: str | None = None
        self._session: LockSession | None = None
        self._attempt = 0
        """The waiter id of the acquire under way (a new one each time it queues)."""

    def __repr__(self) -> str:
        state = f"token={self.token}" if self.token is not None else "not held"
        return f"<AsyncLock {self.name!r} {state}{' LOST' if self.lost_reason else ''}>"

    @property
    def valid(self) -> bool:
        """True while this client is sure it holds the lock: held, and its lease's TTL,
        counted from the last keepalive sent that succeeded, has not run out."""
        return (self.token is not None and self.lost_reason is None
                and self._session is not None and self._session.valid())

    def locked(self) -> bool:
        """True while this handle holds the lock (as far as this client knows: see
        `valid`). Who holds a lock elsewhere: `AsyncClient.locks()`."""
        return self.token is not None

    def fence_pair(self) -> tuple[Any, ...]:
        """(name, token[, mode]) for a fenced write; FencedOut if the hold is not sure.
        A reader's or a semaphore slot's fence is refused only after a later writer's
        grant: holders that share a lock do not fence each other out."""
        if self.token is None:
            raise FencedOut(f"lock {self.name!r} is not held by this handle")
        if not self.valid:
            raise FencedOut(f"lock {self.name!r} (token {self.token}) may be lost: "
                            f"{self.lost_reason or 'its lease TTL ran out'}")
        return (self.name, self.token) if self.mode == "x" else (
            self.name, self.token, self.mode)

    async def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        """Wait for the lock (FIFO) and hold it; False if `timeout` seconds passed first,
        or at once if it is held and `blocking` is false. A waiter that gives up leaves
        the queue."""
        if self.token is not None:
            raise RuntimeError(f"lock {self.name!r} is already held by this handle")
        if not blocking and timeout != -1:
            raise ValueError("can't specify a timeout for a non-blocking call")
        if timeout < 0 and timeout != -1:
            raise ValueError("timeout value must be a non-negative number or -1")
        client = self.client
        deadline = time.monotonic() + (FOREVER_S if timeout == -1 else timeout)
        await client.ensure_map(max(0.001, min(client.timeout, deadline - time.monotonic())))
        shard = shard_of(self.name, client.shard_count)
        waiter = self._attempt = client.new_waiter_id()
        try:
            return await self._wait_for_grant(shard, waiter, blocking, deadline)
        except asyncio.CancelledError:
            # As asyncio.Lock: a cancelled acquire leaves the queue (and gives back a
            # grant that raced with the cancel). The cancel itself must not be cancelled.
            task = asyncio.get_running_loop().create_task(
                self._give_up(shard, self._attempt))
            client.sessions.background.add(task)
            task.add_done_callback(client.sessions.background.discard)
            raise

    async def _wait_for_grant(self, shard: int, waiter: int, blocking: bool,
                              deadline: float) -> bool:
        client = self.client
        queued = False
        attach = False
        body: dict[str, Any] = {}
        session: LockSession | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if queued:
                    await self._give_up(shard, waiter)
                return False
            if session is None or not session.valid():
                session = await client.sessions.get(shard, self.ttl_ms,
                                                    min(client.timeout, remaining))
                attach = False
            if attach:
                body = {"op": "lock_wait", "shard": shard, "name": self.name,
                        "waiter": waiter}
            elif not body or body["op"] != "lock_acquire" or body["lease"] != session.lease.id:
                body = client.with_session({
                    "op": "lock_acquire", "shard": shard, "name": self.name,
                    "lease": session.lease.id, "waiter": waiter, "wait": blocking,
                    "mode": self.mode, "limit": self.limit})
            route = client.route_changed(shard)
            call = asyncio.ensure_future(client.shard_call(
                shard, body, remaining, attempt_timeout=remaining))
            moved = asyncio.ensure_future(route.wait())
            queued = True
            try:
                await asyncio.wait({call, moved}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                moved.cancel()
                if not call.done():
                    call.cancel()
            if not call.done() or call.cancelled():
                attach = True  # the leader we waited at is gone: wait at the new one
                continue
            try:
                status, value = call.result()
            except LockWaitAborted:
                # Our lease ended or the wait was cancelled: queue again, at the back,
                # as a new waiter (what the cluster saw of the old one is over).
                waiter = self._attempt = client.new_waiter_id()
                attach = False
                body = {}
                continue
            except RequestTimeout:
                continue  # the deadline, checked at the top
            if status == "busy":
                return False
            if status == "queued":
                attach = True
                continue
            self.token, self.waiter, self.lost_reason = value, waiter, None
            self._session = session
            session.holds.add(self)
            return True

    async def release(self) -> None:
        """Let the next waiter in. Raises NotHolder if the cluster no longer counts this
        handle as the holder: the lock was lost (its lease ended) before the release."""
        if self.token is None:
            raise RuntimeError(f"release of lock {self.name!r}, which this handle does not hold")
        client = self.client
        session = self._session
        self.token = None
        if session is not None:
            session.holds.discard(self)
        body = client.with_session({"op": "lock_release", "name": self.name,
                                    "shard": shard_of(self.name, client.shard_count),
                                    "waiter": self.waiter})
        await client.shard_call(body["shard"], body, None)

    async def _give_up(self, shard: int, waiter: int) -> None:
        body = self.client.with_session({"op": "lock_cancel", "shard": shard,
                                         "name": self.name, "waiter": waiter})
        with contextlib.suppress(RequestError, TimeoutError, OSError):
            await self.client.shard_call(shard, body, GIVE_UP_TIMEOUT_S)

    def _lost(self, reason: str) -> None:
        self.lost_reason = reason
        if self.on_lost is not None:
            try:
                self.on_lost(self)
            except Exception:
                log.exception("on_lost callback of lock %r failed", self.name)

    async def __aenter__(self) -> AsyncLock:
        await self.acquire()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        try:
            await self.release()
        except RequestError:
            if kind is None:  # a lost lock is loud, unless something louder is on its way
                raise


class AsyncReadWriteLock:
    """The two sides of one read-write lock; each call gives a fresh handle."""

    def __init__(self, client: AsyncClient, name: bytes, ttl: float) -> None:
        self.client = client
        self.name = name
        self.ttl = ttl

    def read(self, on_lost: Callable[[AsyncLock], None] | None = None) -> AsyncLock:
        return AsyncLock(self.client, self.name, ttl=self.ttl, on_lost=on_lost, mode="s")

    def write(self, on_lost: Callable[[AsyncLock], None] | None = None) -> AsyncLock:
        return AsyncLock(self.client, self.name, ttl=self.ttl, on_lost=on_lost, mode="x")
