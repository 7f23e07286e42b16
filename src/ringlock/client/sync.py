"""`Client`: the blocking face of `AsyncClient`, for code that is not async.

It runs one private event loop in a daemon thread and hands each call to it, so a
`Client` may be shared by many threads, and its connections are reused across calls.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, MutableMapping
from typing import Any, TypeVar

from ringlock import eventloop
from ringlock.client.aio import DEFAULT_TIMEOUT_S, AsyncClient, Key, Lease, ShardMap, to_bytes
from ringlock.client.election import AsyncElection
from ringlock.client.locks import DEFAULT_LOCK_TTL_S, AsyncLock, Fence, LockState
from ringlock.client.watch import SyncWatch
from ringlock.errors import RequestError
from ringlock.statemachine.kv import KeyValue

T = TypeVar("T")


class Client:
    def __init__(self, cluster: str | Iterable[str] | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT_S, secret: str | None = None,
                 tls_ca: str | None = None, tls_cert: str | None = None,
                 tls_key: str | None = None) -> None:
        """The arguments of `AsyncClient` (secret and TLS default from the environment)."""
        self._loop = eventloop.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="ringlock-client")
        self._thread.start()
        self._aio = self._run_sync(_make(cluster, timeout, {
            "secret": secret, "tls_ca": tls_ca, "tls_cert": tls_cert, "tls_key": tls_key}))
        self._closed = False

    def _run_sync(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            # Interrupted here (Ctrl-C): the call must not go on alone in the client's
            # thread (an acquire would take a lock nobody holds). Cancelled, it cleans up.
            future.cancel()
            raise

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._run_sync(self._aio.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    @property
    def client_id(self) -> int:
        return self._aio.client_id

    def get(self, key: Key, *, consistency: str = "linearizable",
            timeout: float | None = None) -> bytes | None:
        return self._run_sync(self._aio.get(key, consistency=consistency, timeout=timeout))

    def get_kv(self, key: Key, *, consistency: str = "linearizable",
               timeout: float | None = None) -> KeyValue | None:
        return self._run_sync(self._aio.get_kv(key, consistency=consistency, timeout=timeout))

    def put(self, key: Key, value: Key, *, lease: Lease | None = None, prev: bool = False,
            fence: Fence | None = None, timeout: float | None = None) -> KeyValue | None:
        """Set `key`; with `fence` (a held lock), refused with FencedOut once the lock
        was granted again, or once this client is no longer sure it holds it."""
        return self._run_sync(self._aio.put(key, value, lease=lease, prev=prev, fence=fence,
                                            timeout=timeout))

    def delete(self, key: Key, *, fence: Fence | None = None,
               timeout: float | None = None) -> bool:
        return self._run_sync(self._aio.delete(key, fence=fence, timeout=timeout))

    def compare_and_set(self, key: Key, expected: Key | None, value: Key | None, *,
                        fence: Fence | None = None, timeout: float | None = None) -> bool:
        return self._run_sync(self._aio.compare_and_set(key, expected, value, fence=fence,
                                                        timeout=timeout))

    def cas(self, key: Key, target: str, expected: Any, value: Key | None, *,
            fence: Fence | None = None, timeout: float | None = None) -> bool:
        return self._run_sync(self._aio.cas(key, target, expected, value, fence=fence,
                                            timeout=timeout))

    def scan(self, prefix: Key = b"", *, limit: int = 1000, after: Key = b"",
             consistency: str = "linearizable", timeout: float | None = None) -> list[KeyValue]:
        return self._run_sync(self._aio.scan(prefix, limit=limit, after=after,
                                             consistency=consistency, timeout=timeout))

    def grant_lease(self, ttl: float, *, near: Key = b"") -> Lease:
        return self._run_sync(self._aio.grant_lease(ttl, near=near))

    def keepalive(self, lease: Lease) -> None:
        self._run_sync(self._aio.keepalive(lease))

    def revoke(self, lease: Lease) -> int:
        return self._run_sync(self._aio.revoke(lease))

    def ttl_remaining(self, lease: Lease) -> float:
        return self._run_sync(self._aio.ttl_remaining(lease))

    def lock(self, name: Key, *, ttl: float = DEFAULT_LOCK_TTL_S,
             on_lost: Callable[[Lock], None] | None = None) -> Lock:
        """A fair (FIFO) lock of the cluster, in the shape of `threading.Lock`:

            with client.lock("jobs/42", ttl=10) as held:
                client.put("jobs/42/state", "done", fence=held)

        `on_lost(held)` runs (on the client's own thread) if the lease could not be
        kept alive; `held.valid` is then false and fenced writes are refused."""
        return Lock(self, self._aio.lock(name, ttl=ttl), on_lost)

    def locks(self, *, timeout: float | None = None) -> list[LockState]:
        return self._run_sync(self._aio.locks(timeout=timeout))

    def rwlock(self, name: Key, *, ttl: float = DEFAULT_LOCK_TTL_S) -> ReadWriteLock:
        """Many readers or one writer, first come first served (writers do not starve):

            rw = client.rwlock("config")
            with rw.read() as held: ...        # shares with other readers
            with rw.write() as held: ...       # alone"""
        return ReadWriteLock(self, name, ttl)

    def semaphore(self, name: Key, limit: int, *, ttl: float = DEFAULT_LOCK_TTL_S,
                  on_lost: Callable[[Lock], None] | None = None) -> Lock:
        """One slot of a counting semaphore of `limit` slots (every user of `name` must
        give the same limit): `with client.semaphore("gpu", 4): ...`."""
        return Lock(self, self._aio.semaphore(name, limit, ttl=ttl), on_lost)

    def election(self, name: Key, *, ttl: float = DEFAULT_LOCK_TTL_S) -> Election:
        """Leader election on `name`: campaign, leader, observe, resign."""
        return Election(self, self._aio.election(name, ttl=ttl))

    def status(self, *, timeout: float | None = None) -> list[dict[str, Any]]:
        return self._run_sync(self._aio.status(timeout=timeout))

    def set_node_state(self, node: int, state: str) -> dict[str, Any]:
        return self._run_sync(self._aio.set_node_state(node, state))

    def shard_map(self) -> ShardMap:
        return self._run_sync(self._aio.shard_map())

    def watch(self, key: Key | None = None, *, prefix: Key | None = None,
              start_revision: int | Mapping[int, int] | None = None) -> SyncWatch:
        """An iterator of the changes of `key` or under `prefix` (see client/watch.py),
        open when this returns; close() it when done."""
        return SyncWatch.open(self._aio, self._loop, key, prefix=prefix,
                              start_revision=start_revision)

    def dict(self, prefix: Key = b"") -> KeyValueMapping:
        """A `MutableMapping` view of the keys under `prefix` (keys given without it)."""
        return KeyValueMapping(self, to_bytes(prefix))


class Lock:
    """`threading.Lock`'s shape over `AsyncLock` (see `Client.lock`). Safe to share
    between threads like a `threading.Lock`: one holder at a time per handle."""

    def __init__(self, client: Client, inner: AsyncLock,
                 on_lost: Callable[[Lock], None] | None) -> None:
        self._client = client
        self._inner = inner
        if on_lost is not None:
            inner.on_lost = lambda _: on_lost(self)
        self._local = threading.Lock()
        """Threads of this process queue here, not in the cluster: one handle, one
        holder."""

    name = property(lambda self: self._inner.name)
    token = property(lambda self: self._inner.token,
                     doc="The fencing token of the current hold.")
    valid = property(lambda self: self._inner.valid,
                     doc="True while this client is sure it holds the lock.")
    lost_reason = property(lambda self: self._inner.lost_reason)

    def __repr__(self) -> str:
        return repr(self._inner).replace("AsyncLock", "Lock")

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        start = time.monotonic()
        if not self._local.acquire(blocking, timeout):
            return False
        left = -1 if timeout == -1 else max(0.0, timeout - (time.monotonic() - start))
        try:
            got = self._client._run_sync(self._inner.acquire(blocking, left))
        except BaseException:
            self._local.release()
            raise
        if not got:
            self._local.release()
        return got

    def release(self) -> None:
        if not self._inner.locked():
            raise RuntimeError(f"release of lock {self.name!r}, which this handle "
                               "does not hold")
        try:
            self._client._run_sync(self._inner.release())
        finally:
            self._local.release()

    def locked(self) -> bool:
        return self._inner.locked()

    def fence_pair(self) -> tuple[Any, ...]:
        return self._inner.fence_pair()

    def __enter__(self) -> Lock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        try:
            self.release()
        except RequestError:
            if kind is None:  # a lost lock is loud, unless something louder is on its way
                raise


class ReadWriteLock:
    """The two sides of one read-write lock; each call gives a fresh handle."""

    def __init__(self, client: Client, name: Key, ttl: float) -> None:
        self._client = client
        self._inner = client._aio.rwlock(name, ttl=ttl)
        self.name = self._inner.name

    def read(self, on_lost: Callable[[Lock], None] | None = None) -> Lock:
        return Lock(self._client, self._inner.read(), on_lost)

    def write(self, on_lost: Callable[[Lock], None] | None = None) -> Lock:
        return Lock(self._client, self._inner.write(), on_lost)


class Election:
    """The blocking face of `AsyncElection`."""

    def __init__(self, client: Client, inner: AsyncElection) -> None:
        self._client = client
        self._inner = inner

    def campaign(self, value: Key, timeout: float = -1) -> bool:
        return self._client._run_sync(self._inner.campaign(value, timeout))

    def leader(self) -> bytes | None:
        return self._client._run_sync(self._inner.leader())

    def resign(self) -> None:
        self._client._run_sync(self._inner.resign())

    @property
    def held(self) -> Lock:
        """The candidate's lock: `fence=election.held` while leading."""
        return Lock(self._client, self._inner.lock, None)

    def observe(self) -> Iterator[bytes | None]:
        """Each change of leader (None: nobody leads), as it happens; close the
        iterator (or leave the loop) to stop."""
        watch = self._client.watch(self._inner.leader_key)
        try:
            for event in watch:
                yield None if event.kind != "put" else event.value
        finally:
            watch.close()


async def _make(cluster: str | Iterable[str] | None, timeout: float,
                security: dict[str, str | None]) -> AsyncClient:
    return AsyncClient(cluster, timeout=timeout, **security)


class KeyValueMapping(MutableMapping[str, bytes]):
    """`view["a"] = b"1"` puts `prefix + "a"`; iteration scans the prefix in pages.
    Keys are str (UTF-8 on the wire); values come back as bytes."""

    PAGE = 1000

    def __init__(self, client: Client, prefix: bytes) -> None:
        self._client = client
        self._prefix = prefix

    def _key(self, key: str | bytes) -> bytes:
        return self._prefix + to_bytes(key)

    def __getitem__(self, key: str) -> bytes:
        value = self._client.get(self._key(key))
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: bytes | str) -> None:
        self._client.put(self._key(key), value)

    def __delitem__(self, key: str) -> None:
        if not self._client.delete(self._key(key)):
            raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        after = b""
        while True:
            page = self._client.scan(self._prefix, limit=self.PAGE, after=after)
            for kv in page:
                yield kv.key[len(self._prefix):].decode()
            if len(page) < self.PAGE:
                return
            after = page[-1].key

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str | bytes) and self._client.get(self._key(key)) is not None

    def __repr__(self) -> str:
        return f"<ringlock dict view of {self._prefix!r}>"
