"""`Client`: the blocking face of `AsyncClient`, for code that is not async.

It runs one private event loop in a daemon thread and hands each call to it, so a
`Client` may be shared by many threads, and its connections are reused across calls.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable, Iterator, Mapping, MutableMapping
from typing import Any, TypeVar

from ringlock.client.aio import DEFAULT_TIMEOUT_S, AsyncClient, Key, Lease, ShardMap, to_bytes
from ringlock.client.watch import SyncWatch
from ringlock.statemachine.kv import KeyValue

T = TypeVar("T")


class Client:
    def __init__(self, cluster: str | Iterable[str] | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="ringlock-client")
        self._thread.start()
        self._aio = self._run_sync(_make(cluster, timeout))
        self._closed = False

    def _run_sync(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

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
            timeout: float | None = None) -> KeyValue | None:
        return self._run_sync(self._aio.put(key, value, lease=lease, prev=prev, timeout=timeout))

    def delete(self, key: Key, *, timeout: float | None = None) -> bool:
        return self._run_sync(self._aio.delete(key, timeout=timeout))

    def compare_and_set(self, key: Key, expected: Key | None, value: Key | None, *,
                        timeout: float | None = None) -> bool:
        return self._run_sync(self._aio.compare_and_set(key, expected, value, timeout=timeout))

    def cas(self, key: Key, target: str, expected: Any, value: Key | None, *,
            timeout: float | None = None) -> bool:
        return self._run_sync(self._aio.cas(key, target, expected, value, timeout=timeout))

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


async def _make(cluster: str | Iterable[str] | None, timeout: float) -> AsyncClient:
    return AsyncClient(cluster, timeout=timeout)


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
