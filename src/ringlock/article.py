"""The article's two shapes, `DistributedLock` and `DistributedHashTable`, done right.

The article that ringlock grew from (docs/ARTICLE.md walks through it) sketched a lock
class with `acquire()`/`release()` and a hash table with `put()`/`get()`. Its lock
lived in one process and busy-waited; its table placed keys with `hash % nodes`, which
moves almost every key when a node joins. These classes keep its method names and
nothing else: the lock is the cluster's FIFO lock with a fencing token, the table is
the cluster's sharded, replicated key space. They are thin on purpose; `Client.lock`
and `Client.dict` are the full interfaces.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ringlock.client import Client, Lock
    from ringlock.client.aio import Key


class DistributedLock:
    """`acquire()` blocks until this process holds `name` in the whole cluster (first
    come, first served) and returns the fencing token; `release()` lets the next one in.

        lock = DistributedLock(client, "reports/daily")
        token = lock.acquire()
        try:
            client.put("reports/daily/state", "running", fence=lock.held)
        finally:
            lock.release()
    """

    def __init__(self, client: Client, name: str, *, ttl: float = 10.0) -> None:
        self.held: Lock = client.lock(name, ttl=ttl)
        """The underlying lock: pass it as `fence=` to writes made while holding it."""

    def acquire(self, timeout: float | None = None) -> int:
        """Wait (at most `timeout` seconds; None: as long as it takes) and return the
        grant's fencing token. TimeoutError if the time ran out first."""
        if not self.held.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError(f"lock {self.held.name!r} not acquired within {timeout} s")
        token: int | None = self.held.token
        assert token is not None
        return token

    def release(self) -> None:
        self.held.release()

    @property
    def token(self) -> int | None:
        token: int | None = self.held.token
        return token

    def __enter__(self) -> DistributedLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.held.__exit__(*exc)  # type: ignore[arg-type]


class DistributedHashTable:
    """`put(key, value)` and `get(key)` on the cluster: each key hashed onto one of a fixed
    number of shards (never `hash % nodes`), each shard a Raft group of three replicas,
    any node able to take any request.

        table = DistributedHashTable(client)
        table.put("user:42", "Ada")
        table.get("user:42")     # "Ada"
    """

    def __init__(self, client: Client) -> None:
        self.client = client

    def put(self, key: Key, value: Key) -> None:
        self.client.put(key, value)

    def get(self, key: Key) -> str | None:
        """The value as text (UTF-8), or None if the key is absent."""
        value = self.client.get(key)
        return None if value is None else value.decode()

    def delete(self, key: Key) -> bool:
        return self.client.delete(key)
