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
    keepalive or any call found it gone), the wait re-attaches at the new one by
    re-sending the same acquire: applied once, answered from the waiter's state then,
    so the queue position is kept and no earlier request of ours can overtake it.
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
    NotHolder,
    RequestError,
    RequestTimeout,
)
from ringlock.sharding.keys import shard_of
from ringlock.transport.rpc import Abandoned

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
IDLE_SESSION_S = 60.0
"""A session with nothing held or awaited under it this long gives its lease back."""
FOREVER_S = 10.0 * 365 * 24 * 3600
"""A wait with no timeout: a deadline nobody reaches."""
GIVE_UP_TIMEOUT_S = 2.0
SETTLE_TTLS = 3
"""A release or cancel that cannot be confirmed is retried this many TTLs, then the
session's lease is given up."""
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
        self.users = 0
        """Acquires waiting under this session right now."""
        self.idle_since = sent_at
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
            if self.idle_for() >= IDLE_SESSION_S:
                self.retire()
                return

    def use(self) -> None:
        """An acquire is waiting under this session: it must not be retired."""
        self.users += 1

    def done_with(self) -> None:
        self.users -= 1
        self.idle_since = time.monotonic()

    def idle_for(self) -> float:
        """Seconds without a hold or a waiting acquire (0 while it has one)."""
        if self.holds or self.users:
            return 0.0
        return time.monotonic() - self.idle_since

    def retire(self) -> None:
        """Idle: give the lease back rather than keep it alive for nothing. Nothing is
        held or awaited under it (checked on the event loop, so nothing starts meanwhile:
        an acquire that took this session has called `use` already)."""
        self.lost_reason = "idle"
        self.client.sessions.forget(self)
        task = asyncio.get_running_loop().create_task(self._revoke())
        self.client.sessions.background.add(task)
        task.add_done_callback(self.client.sessions.background.discard)

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
        self._sessions: dict[tuple[int, int], asyncio.Task[LockSession]] = {}
        self.background: set[asyncio.Task[None]] = set()

    async def get(self, shard: int, ttl_ms: int, timeout: float) -> LockSession:
        """The live session of (shard, TTL), granting its lease if there is none. The
        grant runs in a task of its own, shared by every caller: one caller cancelled
        does not cancel the others."""
        key = (shard, ttl_ms)
        pending = self._sessions.get(key)
        if pending is None or (pending.done() and (
                pending.cancelled() or pending.exception() is not None
                or not pending.result().valid())):
            pending = asyncio.get_running_loop().create_task(self._create(key, timeout))
            pending.add_done_callback(_retrieve)
            self._sessions[key] = pending
        return await asyncio.shield(pending)

    async def _create(self, key: tuple[int, int], timeout: float) -> LockSession:
        sent = time.monotonic()
        try:
            lease = await self.client.grant_lease_on(key[0], key[1], timeout=timeout)
        except BaseException:
            if self._sessions.get(key) is asyncio.current_task():
                del self._sessions[key]
            raise
        return LockSession(self.client, lease, sent)

    def forget(self, session: LockSession) -> None:
        key = (session.lease.shard, session.lease.ttl_ms)
        pending = self._sessions.get(key)
        if pending is not None and pending.done() and not pending.cancelled() \
                and pending.exception() is None and pending.result() is session:
            del self._sessions[key]

    async def close(self) -> None:
        sessions, self._sessions = self._sessions, {}
        for pending in sessions.values():
            if not pending.done():
                pending.cancel()
            elif not pending.cancelled() and pending.exception() is None:
                await pending.result().close()
        for task in list(self.background):
            task.cancel()


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Read a failed grant's error even if every caller was cancelled meanwhile."""
    if not task.cancelled():
        task.exception()


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
        self._handle = asyncio.Lock()
        """Held from acquire to release: tasks sharing this handle take turns."""

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
        or at once if it is held and `blocking` is false (or `timeout` is 0). A waiter
        that gives up, or whose task is cancelled, leaves the queue. Tasks sharing one
        handle take turns, as on an `asyncio.Lock`."""
        if not blocking and timeout != -1:
            raise ValueError("can't specify a timeout for a non-blocking call")
        if timeout < 0 and timeout != -1:
            raise ValueError("timeout value must be a non-negative number or -1")
        waits = blocking and timeout != 0  # timeout 0: one try, as threading.Lock
        deadline = time.monotonic() + (FOREVER_S if timeout == -1 else timeout)
        if not await self._take_handle(waits, deadline):
            return False
        if not waits:  # the one try gets the client's usual budget
            deadline = time.monotonic() + self.client.timeout
        try:
            got = await self._acquire(waits, deadline)
        except BaseException:
            self._handle.release()
            raise
        if not got:
            self._handle.release()
        return got

    async def _take_handle(self, blocking: bool, deadline: float) -> bool:
        """One holder per handle: a second task waits here, not in the cluster."""
        if not self._handle.locked():  # the usual case: no other task on this handle
            await self._handle.acquire()
            return True
        if not blocking:
            return False
        try:  # not wait_for: on 3.11 it can swallow a cancel that races its result
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self._handle.acquire()
        except TimeoutError:
            return False
        return True

    async def _acquire(self, blocking: bool, deadline: float) -> bool:
        client = self.client
        await client.ensure_map(max(0.001, min(client.timeout, deadline - time.monotonic())))
        shard = shard_of(self.name, client.shard_count)
        self._attempt = 0
        try:
            return await self._wait_for_grant(shard, blocking, deadline)
        except asyncio.CancelledError:
            # As asyncio.Lock: a cancelled acquire leaves the queue (and gives back a
            # grant that raced with the cancel). The cancel itself must not be cancelled.
            if self._attempt:
                self._settle_later(shard, self._cancel_body(shard, self._attempt))
            raise

    async def _wait_for_grant(self, shard: int, blocking: bool, deadline: float) -> bool:
        used: list[LockSession] = []
        try:
            return await self._wait_under_sessions(shard, blocking, deadline, used)
        finally:
            for session in used:
                session.done_with()

    async def _wait_under_sessions(self, shard: int, blocking: bool, deadline: float,
                                   used: list[LockSession]) -> bool:
        client = self.client
        body: dict[str, Any] = {}
        session: LockSession | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if body:
                    await self._give_up(shard, body["waiter"])
                return False
            if session is None or not session.valid():
                session = await client.sessions.get(shard, self.ttl_ms,
                                                    max(0.001, min(client.timeout, remaining)))
                if not session.valid():
                    continue  # retired or lost while we were handed it: another one
                session.use()  # at once, with no await between: it cannot retire now
                used.append(session)
            if not body or body["lease"] != session.lease.id:
                if body:  # the session changed under a queued waiter: leave, queue anew
                    self._settle_later(shard, self._cancel_body(shard, body["waiter"]))
                # Re-sent as it is (same seq) until answered: applied once, and each
                # answer reads the waiter's state when it is applied, so a re-attach
                # after a leader change keeps its place and can never overtake it.
                self._attempt = client.new_waiter_id()
                body = client.with_session({
                    "op": "lock_acquire", "shard": shard, "name": self.name,
                    "lease": session.lease.id, "waiter": self._attempt, "wait": blocking,
                    "mode": self.mode, "limit": self.limit})
            remaining = max(0.001, deadline - time.monotonic())
            try:
                answer = await self._call_or_moved(shard, body, remaining)
                if answer is None:
                    continue  # the leader we waited at is gone: ask the new one
                status, value = answer
            except LockWaitAborted:
                body = {}  # our lease ended or the wait was cancelled: queue anew
                continue
            except NotFound:
                # The cluster ended our lease before we knew (this process was paused
                # past its TTL, say): that session is over; queue anew under another.
                session.lose(f"lease {session.lease.id} was gone when lock {self.name!r} "
                             "was asked for")
                body = {}
                continue
            except RequestTimeout:
                continue  # the deadline, checked at the top
            if status == "busy":
                return False
            if status == "queued":
                continue
            if not session.valid():  # granted too late to be sure of: give it back
                self._settle_later(shard, self._cancel_body(shard, body["waiter"]))
                body = {}
                continue
            self.token, self.waiter, self.lost_reason = value, body["waiter"], None
            self._session = session
            session.holds.add(self)
            return True

    async def _call_or_moved(self, shard: int, body: dict[str, Any],
                             remaining: float) -> Any | None:
        """The call's answer (its error raised), or None if this client stopped
        believing in the shard's leader first (a keepalive or another call found it
        gone). A lock call's answer is never None.

        The call is abandoned, not cancelled: the route's future fails the wait for the
        answer (RpcConnection.call), and a connect or backoff under way ends at its own
        timeout, the next attempt seeing the route changed. No cancel is involved, so
        none can be swallowed on the way (3.11's `wait_for` returns a connect that
        finished in the same loop turn), and the call runs in the acquiring task: a task
        of its own, as before, cost two loop iterations between a grant's arrival and the
        caller (docs/PERFORMANCE.md, session 11)."""
        route = self.client.route_changed(shard)
        if route.done():
            return None
        try:
            return await self.client.shard_call(shard, body, remaining,
                                                attempt_timeout=remaining, abandon=route)
        except Abandoned:
            return None

    async def release(self) -> None:
        """Let the next waiter in. Raises NotHolder if the cluster no longer counts this
        handle as the holder: the lock was lost (its lease ended) before the release.
        If the release cannot be confirmed, it goes on in the background until it is
        (or the lease is given up), and the error is raised here."""
        if self.token is None:
            raise RuntimeError(f"release of lock {self.name!r}, which this handle does not hold")
        client = self.client
        session = self._session
        self.token = None
        if session is not None:
            session.holds.discard(self)
            session.idle_since = time.monotonic()
        shard = shard_of(self.name, client.shard_count)
        body = client.with_session({"op": "lock_release", "name": self.name,
                                    "shard": shard, "waiter": self.waiter})
        try:
            await client.shard_call(shard, body, None)
        except (NotHolder, LockWaitAborted):
            raise
        except (RequestError, TimeoutError, OSError):
            self._settle_later(shard, body)
            raise
        finally:
            if self._handle.locked():
                self._handle.release()

    def _cancel_body(self, shard: int, waiter: int) -> dict[str, Any]:
        return self.client.with_session({"op": "lock_cancel", "shard": shard,
                                         "name": self.name, "waiter": waiter})

    async def _give_up(self, shard: int, waiter: int) -> None:
        body = self._cancel_body(shard, waiter)
        try:
            await self.client.shard_call(shard, body, GIVE_UP_TIMEOUT_S)
        except (RequestError, TimeoutError, OSError):
            self._settle_later(shard, body)

    def _settle_later(self, shard: int, body: dict[str, Any]) -> None:
        """Send a release or cancel (the same body: applied once) until the cluster
        confirms it. A waiter or hold nobody owns any more would otherwise live as long
        as the session's lease, which this client keeps alive. If it cannot be
        confirmed within a few TTLs, the session is given up: its lease then ends."""
        session = self._session
        ttl = self.ttl_ms / 1000

        async def settle() -> None:
            deadline = time.monotonic() + SETTLE_TTLS * ttl
            while time.monotonic() < deadline:
                try:
                    await self.client.shard_call(shard, body, ttl)
                    return
                except (NotHolder, LockWaitAborted):
                    return
                except (RequestError, TimeoutError, OSError):
                    await asyncio.sleep(RETRY_KEEPALIVE_S)
            if session is not None:
                session.lose(f"could not {body['op']} lock {self.name!r}")

        task = asyncio.get_running_loop().create_task(settle())
        self.client.sessions.background.add(task)
        task.add_done_callback(self.client.sessions.background.discard)

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
