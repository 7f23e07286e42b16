"""`Watch`: the changes of a key, or of every key under a prefix, as an async iterator that
survives leader changes, node deaths and reconnects without gaps or duplicates.

Why one stream per shard: revisions are per shard (each shard has its own log), so a
resume point is a revision per shard. A prefix may cover keys of every shard, and then
the watch opens one stream per shard and merges them; a prefix inside a `{hash tag}`
(`{user:42}:`) or a single key lives on one shard and needs one stream.

Why no gaps and no duplicates: for each shard the watch keeps the next revision it has
not received (`next_revisions`). The node sends events in revision order and says how far
it has got; after a broken connection, a NotLeader (the leader moved or died) or a
lagging stream, the watch opens the shard's stream again on the leader from that
revision, which replays what it missed from the shard's history; anything older than
what it already has is dropped.

Why the local buffer is bounded: events are taken from the connection as they come, so
a consumer slower than the writers would grow the buffer without end. Above
`WATCH_BUFFER_EVENTS` waiting events a shard's stream is closed, and opened again from
where it stopped once the consumer has caught up: the node's history is the buffer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ringlock.errors import (
    NotLeader,
    RequestError,
    RequestTimeout,
    Unavailable,
    WrongShard,
)
from ringlock.sharding.keys import hash_part, shard_of
from ringlock.transport.rpc import RpcStream, StreamEnded

if TYPE_CHECKING:
    from ringlock.client.aio import AsyncClient, Key

WATCH_BUFFER_EVENTS = 10_000
"""Events received and not yet consumed, above which the watch pauses its streams (it
resumes them from the nodes' history when the consumer has taken half)."""
ATTEMPT_TIMEOUT_S = 2.0
"""One try at opening a shard's stream on one node."""
_CLOSED = object()


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change: `kind` is "put", "delete" or "expire" (the key's lease ended);
    `value` is None unless a put. `revision` is the change's revision in `shard`.
    `lease`: the key's lease on a put, the lease it had on a delete, the lease that
    ended on an expire."""

    kind: str
    key: bytes
    value: bytes | None
    revision: int
    shard: int
    lease: int = 0


class Watch:
    """`async with client.watch(prefix="jobs/") as w: async for event in w: ...`

    Changes made after `start()` (or `async with`) returns are all seen. `start_revision`
    replays history: an int (the revision in the one shard of a key, or of a prefix
    within a hash tag), or a dict {shard: revision} (e.g. an earlier watch's
    `next_revisions`); shards it does not name start from now. A start older than a
    shard still remembers raises `Compacted` (its `floor` says what is remembered).
    """

    def __init__(self, client: AsyncClient, key: Key | None = None, *,
                 prefix: Key | None = None,
                 start_revision: int | Mapping[int, int] | None = None) -> None:
        from ringlock.client.aio import to_bytes

        if (key is None) == (prefix is None):
            raise ValueError("watch a key or a prefix: give exactly one")
        if isinstance(start_revision, bool) or not (
                start_revision is None or isinstance(start_revision, int | Mapping)):
            raise TypeError("start_revision is an int, a dict {shard: revision} or None")
        if isinstance(start_revision, int) and start_revision < 1:
            raise ValueError(f"start_revision must be at least 1, got {start_revision}")
        self._client = client
        self._exact = key is not None
        self._prefix = to_bytes(key if key is not None else prefix)  # type: ignore[arg-type]
        if self._exact and not self._prefix:
            raise ValueError("the key to watch must not be empty")
        self._start_revision = start_revision
        self.next_revisions: dict[int, int] = {}
        """shard -> the first revision not yet received from it."""
        self._consumed: dict[int, int] = {}
        self._pending: dict[int, int] = {}
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._streams: dict[int, RpcStream] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._drained = asyncio.Event()
        self._starting: asyncio.Future[None] | None = None
        self._closed = False
        self.resumes = 0
        """How many times a shard's stream was opened again (failover, lag, pause)."""

    # ---------------------------------------------------------------- the surface

    @property
    def shards(self) -> list[int]:
        return sorted(self.next_revisions)

    @property
    def revisions(self) -> dict[int, int]:
        """Where to resume after the events consumed so far: {shard: next revision}.
        Give it as `start_revision` to a new watch to go on with nothing lost or
        repeated (while the shards still remember)."""
        return {s: self._consumed[s] if self._pending.get(s) else n
                for s, n in self.next_revisions.items()}

    async def __aenter__(self) -> Watch:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> WatchEvent:
        await self.start()
        if self._closed and self._queue.empty():
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is _CLOSED:
            self._queue.put_nowait(_CLOSED)
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            await self.close()
            raise item
        event: WatchEvent = item
        self._consumed[event.shard] = event.revision + 1
        self._pending[event.shard] -= 1
        if self._queue.qsize() <= WATCH_BUFFER_EVENTS // 2:
            self._drained.set()
        return event

    async def get(self, timeout: float | None = None) -> WatchEvent:
        """The next event; TimeoutError if none comes within `timeout` seconds,
        StopAsyncIteration once the watch is closed."""
        return await asyncio.wait_for(self.__anext__(), timeout)

    async def start(self) -> Watch:
        """Open every shard's stream (retrying inside the client's timeout); from when it
        returns, every change is seen."""
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        await asyncio.shield(self._starting)
        return self

    async def close(self) -> None:
        """Stop every stream (telling the nodes) and end the iteration."""
        if self._closed:
            return
        self._closed = True
        self._client._watches.discard(self)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for stream in self._streams.values():
            stream.close(_cancel(stream))
        self._streams.clear()
        self._queue.put_nowait(_CLOSED)

    # -------------------------------------------------------------- the streams

    async def _start(self) -> None:
        client = self._client
        client._watches.add(self)
        await client._ensure_map(None)
        shards = client._map.shards
        if self._exact or hash_part(self._prefix) != self._prefix:
            mine = [shard_of(self._prefix, shards)]
        else:
            mine = list(range(shards))
        start = self._start_revision
        if isinstance(start, int):
            if len(mine) != 1:
                raise ValueError("this prefix spans every shard: give start_revision as a "
                                 "dict {shard: revision}")
            start = {mine[0]: start}
        for shard, revision in (start or {}).items():
            if shard not in mine:
                raise ValueError(f"shard {shard} holds no key this watch covers")
            if type(revision) is not int or revision < 1:
                raise ValueError(f"start revision of shard {shard} must be an int >= 1")
            self.next_revisions[shard] = revision
        loop = asyncio.get_running_loop()
        deadline = loop.time() + client.timeout
        opened = await asyncio.gather(*(self._open(s, deadline) for s in mine),
                                      return_exceptions=True)
        failed = [r for r in opened if isinstance(r, BaseException)]
        for shard, result in zip(mine, opened, strict=True):
            if isinstance(result, RpcStream):
                self._streams[shard] = result
        if failed:
            await self.close()
            raise failed[0]
        for shard in mine:
            self._pending[shard] = 0
            self._consumed[shard] = self.next_revisions[shard]
            self._tasks.append(loop.create_task(self._pump(shard)))

    async def _open(self, shard: int, deadline: float, *, avoid: bool = False) -> RpcStream:
        """Open `shard`'s stream on its leader from `next_revisions[shard]` (from now the
        first time, if no start was given), following redirects as `_shard_call` does."""
        client = self._client
        loop = asyncio.get_running_loop()
        attempt = 0
        last: Exception | None = None
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise RequestTimeout(f"shard {shard}: no watch stream within the deadline "
                                     f"after {attempt} attempts; last error: {last}")
            address = client._pick(shard, False, avoid)
            attempt += 1
            body = {"op": "watch", "shard": shard, "prefix": self._prefix,
                    "exact": self._exact, "start_revision": self.next_revisions.get(shard, 0)}
            try:
                stream = await client._connection(address).stream(
                    body, min(ATTEMPT_TIMEOUT_S, remaining), cancel=_cancel_request)
            except NotLeader as error:
                last = error
                if error.version > client._map.version:
                    await client._ensure_map(remaining, refresh=True)
                if error.leader and error.leader != address:
                    client._map.leaders[shard] = error.leader
                    avoid = False
                    continue
                client._map.leaders.pop(shard, None)
                avoid = True
            except WrongShard as error:
                last = error
                client._map.leaders.pop(shard, None)
                await client._ensure_map(remaining, refresh=True)
                avoid = True
            except (Unavailable, TimeoutError, OSError) as error:
                last = error
                if client._map.leaders.get(shard) == address:
                    del client._map.leaders[shard]
                avoid = True
            else:
                client._map.leaders[shard] = address
                answer = stream.answer if isinstance(stream.answer, dict) else {}
                start = answer.get("start")
                if shard not in self.next_revisions and type(start) is int:
                    self.next_revisions[shard] = start
                self.next_revisions.setdefault(shard, 1)
                return stream
            client.retries += 1
            await client._backoff(attempt, deadline)

    async def _pump(self, shard: int) -> None:
        """Move `shard`'s events to the queue; open the stream again when it breaks."""
        loop = asyncio.get_running_loop()
        stream = self._streams[shard]
        try:
            while True:
                try:
                    self._take(shard, await stream.next())
                except (NotLeader, WrongShard, Unavailable, StreamEnded) as error:
                    # Unavailable includes WatchLagged and a broken connection.
                    if isinstance(error, NotLeader) and error.leader:
                        self._client._map.leaders[shard] = error.leader
                    elif self._client._map.leaders.get(shard) == stream.connection.address:
                        del self._client._map.leaders[shard]
                    stream.close()
                    self.resumes += 1
                    stream = self._streams[shard] = await self._open(
                        shard, loop.time() + self._client.timeout,
                        avoid=not isinstance(error, NotLeader))
                    continue
                if self._queue.qsize() >= WATCH_BUFFER_EVENTS:
                    stream.close(_cancel(stream))  # the node's history is the buffer
                    self._drained.clear()
                    await self._drained.wait()
                    self.resumes += 1
                    stream = self._streams[shard] = await self._open(
                        shard, loop.time() + self._client.timeout)
        except asyncio.CancelledError:
            raise
        except (RequestError, ValueError, TypeError) as error:  # Compacted, a timeout...
            self._queue.put_nowait(error)

    def _take(self, shard: int, frame: dict[str, Any]) -> None:
        """Queue a frame's events not seen yet, and note how far the shard has got."""
        events = frame.get("events")
        if not isinstance(events, list):
            raise TypeError(f"a watch frame without events: {frame!r:.100}")
        next_revision = self.next_revisions[shard]
        for revision, kind, key, value, lease in events:
            if revision < next_revision:
                continue  # seen before a reconnect
            self._queue.put_nowait(WatchEvent(kind, key, value, revision, shard, lease))
            self._pending[shard] += 1
            next_revision = revision + 1
        reached = frame.get("rev")
        if type(reached) is int:
            next_revision = max(next_revision, reached + 1)
        self.next_revisions[shard] = next_revision


def _cancel(stream: RpcStream) -> dict[str, Any]:
    return _cancel_request(stream.id)


def _cancel_request(watch_id: int) -> dict[str, Any]:
    return {"op": "watch_cancel", "watch": watch_id}


class SyncWatch:
    """The blocking face of `Watch`, for `Client.watch`: a plain iterator, with
    `get(timeout)` and `close()`. It runs on the client's private loop."""

    def __init__(self, watch: Watch, loop: asyncio.AbstractEventLoop) -> None:
        self._watch = watch
        self._loop = loop

    @staticmethod
    def open(client: AsyncClient, loop: asyncio.AbstractEventLoop, key: Key | None, *,
             prefix: Key | None, start_revision: int | Mapping[int, int] | None) -> SyncWatch:
        async def start() -> Watch:
            watch = Watch(client, key, prefix=prefix, start_revision=start_revision)
            return await watch.start()

        return SyncWatch(asyncio.run_coroutine_threadsafe(start(), loop).result(), loop)

    def _run(self, coro: Any) -> Any:
        if self._loop.is_closed():  # the client was closed, and the watch with it
            coro.close()
            raise StopAsyncIteration
        future: concurrent.futures.Future[Any] = asyncio.run_coroutine_threadsafe(coro,
                                                                                  self._loop)
        return future.result()

    def __iter__(self) -> SyncWatch:
        return self

    def __next__(self) -> WatchEvent:
        try:
            event: WatchEvent = self._run(self._watch.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None
        return event

    def get(self, timeout: float | None = None) -> WatchEvent:
        """The next event; TimeoutError if none comes within `timeout` seconds,
        StopIteration once the watch is closed."""
        try:
            event: WatchEvent = self._run(self._watch.get(timeout))
        except StopAsyncIteration:
            raise StopIteration from None
        return event

    @property
    def revisions(self) -> dict[int, int]:
        return self._watch.revisions

    @property
    def resumes(self) -> int:
        return self._watch.resumes

    def close(self) -> None:
        if not self._loop.is_closed():
            self._run(self._watch.close())

    def __enter__(self) -> SyncWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
