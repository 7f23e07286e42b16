"""`AsyncClient`: the cluster as a few awaitable calls.

Where it sends: the client caches the shard map (how many shards, which nodes hold
them, who leads each) and sends a request straight to its shard's leader. `NotLeader`
carries the leader's address and is followed at once; `Unavailable` and broken
connections are retried on the next replica after an exponential backoff with full
jitter; everything happens inside the call's deadline, after which `RequestTimeout`.

Security: with a cluster secret (argument, else $RINGLOCK_SECRET) every connection
proves it first (transport/auth.py); with a CA (`tls_ca`, else $RINGLOCK_TLS_CA) every
connection is TLS and the node's certificate is checked. A missing or wrong secret
raises `Unauthorized`, a TLS mismatch `TlsError`, at once: retrying cannot help.

Exactly once: every write carries (client id, seq), the same on every retry, so a write
whose answer was lost is applied once even if it is sent twice.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ringlock.client.election import AsyncElection
from ringlock.client.locks import (
    DEFAULT_LOCK_TTL_S,
    AsyncLock,
    AsyncReadWriteLock,
    Fence,
    LockSessions,
    LockState,
    fence_field,
)
from ringlock.errors import (
    ConfigError,
    NotLeader,
    RequestError,
    RequestTimeout,
    Unavailable,
    WaitSuperseded,
    WrongShard,
)
from ringlock.sharding.clustermap import ClusterMap, MapError
from ringlock.sharding.keys import shard_of
from ringlock.sharding.meta import META_GROUP
from ringlock.statemachine.kv import KeyValue
from ringlock.transport.rpc import FATAL_ERRORS, RpcConnection
from ringlock.transport.tls import client_context

if TYPE_CHECKING:
    from ringlock.client.watch import Watch

DEFAULT_CLUSTER = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103"
"""Where `ringlock dev` puts its nodes; used when nothing else names a cluster."""
DEFAULT_TIMEOUT_S = 10.0
ATTEMPT_TIMEOUT_S = 2.0
"""One try at one node; a paused or partitioned node costs at most this before failover."""
BACKOFF_BASE_S = 0.02
BACKOFF_MAX_S = 0.2

Key = str | bytes


def secret_from_env() -> str | None:
    """$RINGLOCK_SECRET, else the contents of the file $RINGLOCK_SECRET_FILE names."""
    secret = os.environ.get("RINGLOCK_SECRET")
    if secret:
        return secret
    path = os.environ.get("RINGLOCK_SECRET_FILE")
    if path:
        from ringlock.server.config import read_secret_file

        return read_secret_file(path)
    return None


def client_tls(tls_ca: str | None, tls_cert: str | None = None,
               tls_key: str | None = None) -> ssl.SSLContext | None:
    """A TLS context from the arguments, else $RINGLOCK_TLS_CA (and optionally
    $RINGLOCK_TLS_CERT / $RINGLOCK_TLS_KEY, a client certificate); None: plain text."""
    ca = tls_ca if tls_ca is not None else os.environ.get("RINGLOCK_TLS_CA", "")
    if not ca:
        return None
    cert = tls_cert if tls_cert is not None else os.environ.get("RINGLOCK_TLS_CERT", "")
    key = tls_key if tls_key is not None else os.environ.get("RINGLOCK_TLS_KEY", "")
    if bool(cert) != bool(key):
        raise ConfigError("a client certificate needs its key (tls_cert and tls_key)")
    return client_context(ca, cert, key)


def cluster_addresses(cluster: str | Iterable[str] | None) -> list[str]:
    """The argument, else $RINGLOCK_CLUSTER, else the default `ringlock dev` cluster."""
    if cluster is None:
        cluster = os.environ.get("RINGLOCK_CLUSTER") or DEFAULT_CLUSTER
    if isinstance(cluster, str):
        cluster = cluster.split(",")
    addresses = [a.strip() for a in cluster if a.strip()]
    if not addresses:
        raise ConfigError("no cluster address given")
    return addresses


def to_bytes(key: Key) -> bytes:
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, bytes | bytearray | memoryview):
        return bytes(key)
    raise TypeError(f"keys and values are str or bytes, not {type(key).__name__}")


@dataclass(frozen=True, slots=True)
class Lease:
    """A lease lives on one shard; keys attached to it must hash to that shard (use a
    `{hash tag}`), because a lease's expiry deletes its keys in one shard's log."""

    id: int
    shard: int
    ttl_ms: int


@dataclass
class ShardMap:
    """What the client routes by: the cluster map, plus the leaders it has learned."""

    version: int = 0
    shards: int = 0
    nodes: dict[int, str] = field(default_factory=dict)
    """Every member not removed: id -> address."""
    states: dict[int, str] = field(default_factory=dict)
    replicas: dict[int, list[int]] = field(default_factory=dict)
    """shard -> its voters (the replicas that may lead, and serve stale reads)."""
    learners: dict[int, list[int]] = field(default_factory=dict)
    leaders: dict[int, str] = field(default_factory=dict)
    """shard -> the address of its leader, as last learned."""
    replica_count: int = 0
    """R: the replicas each shard should have."""
    conf_index: dict[int, int] = field(default_factory=dict)
    """shard -> the index of its configuration in the map."""
    moving: list[int] = field(default_factory=list)
    """Shards the rebalancer is moving now."""

    @staticmethod
    def from_wire(raw: Any) -> ShardMap:
        cmap = ClusterMap.parse(raw["map"])
        nodes = cmap.peers()
        leaders = {int(s): nodes[int(n)] for s, n in (raw.get("leaders") or {}).items()
                   if int(n) in nodes}
        return ShardMap(
            version=cmap.version, shards=cmap.shards, nodes=nodes,
            states={n: state for n, (_, state) in cmap.nodes.items()},
            replicas={g: list(v) for g, (v, _, _) in cmap.groups.items() if g < cmap.shards},
            learners={g: list(lr) for g, (_, lr, _) in cmap.groups.items()
                      if g < cmap.shards and lr},
            leaders=leaders, replica_count=cmap.replicas,
            conf_index={g: ci for g, (_, _, ci) in cmap.groups.items() if g < cmap.shards},
            moving=sorted(cmap.targets),
        )


def decode_kv(raw: Any) -> KeyValue | None:
    if raw is None:
        return None
    return KeyValue(*raw)


class AsyncClient:
    def __init__(self, cluster: str | Iterable[str] | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT_S, secret: str | None = None,
                 tls_ca: str | None = None, tls_cert: str | None = None,
                 tls_key: str | None = None) -> None:
        """`secret`: the cluster secret (else $RINGLOCK_SECRET or the file
        $RINGLOCK_SECRET_FILE names; "" for none). `tls_ca`:
        the cluster CA's certificate file (else $RINGLOCK_TLS_CA): TLS to every node.
        `tls_cert`/`tls_key`: a client certificate, optional."""
        self.seeds = cluster_addresses(cluster)
        self.timeout = timeout
        self._secret = secret if secret is not None else secret_from_env()
        self._ssl = client_tls(tls_ca, tls_cert, tls_key)
        self.client_id = secrets.randbits(62) + 1
        self._seq = 0
        self._connections: dict[str, RpcConnection] = {}
        self._map = ShardMap()
        self._map_lock: asyncio.Lock | None = None
        self._rng = random.Random()
        self.retries = 0
        self._route_events: dict[int, asyncio.Future[None]] = {}
        self.sessions = LockSessions(self)
        """The leases this client's locks wait and hold under, kept alive in the
        background: one per (shard, TTL)."""
        self._watches: set[Watch] = set()
        """Open watches (client/watch.py), closed with the client."""

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for watch in list(self._watches):  # before the connections they would reopen
            await watch.close()
        await self.sessions.close()
        connections, self._connections = self._connections, {}
        for connection in connections.values():
            await connection.close()

    # ------------------------------------------------------------------ key-value

    async def get(self, key: Key, *, consistency: str = "linearizable",
                  timeout: float | None = None) -> bytes | None:
        kv = await self.get_kv(key, consistency=consistency, timeout=timeout)
        return None if kv is None else kv.value

    async def get_kv(self, key: Key, *, consistency: str = "linearizable",
                     timeout: float | None = None) -> KeyValue | None:
        k = to_bytes(key)
        raw = await self._keyed({"op": "get", "key": k, "consistency": consistency}, k,
                                timeout, stale_ok=consistency == "stale")
        return decode_kv(raw)

    async def put(self, key: Key, value: Key, *, lease: Lease | None = None,
                  prev: bool = False, fence: Fence | None = None,
                  timeout: float | None = None) -> KeyValue | None:
        """Set `key`. With `fence` (a held lock, or (lock name, token)), the key's shard
        refuses the write with `FencedOut` once it has seen a newer grant of that lock,
        and this client refuses it before sending once it can no longer be sure it
        holds the lock."""
        k = to_bytes(key)
        body: dict[str, Any] = {"op": "put", "key": k, "value": to_bytes(value),
                                "prev": prev, **fence_field(fence)}
        if lease is not None:
            await self._ensure_map(timeout)
            if shard_of(k, self._map.shards) != lease.shard:
                raise ValueError(f"key {k!r} is not on lease {lease.id}'s shard {lease.shard}; "
                                 "give related keys a common {hash tag}")
            body["lease"] = lease.id
        return decode_kv(await self._keyed(self._session(body), k, timeout))

    async def delete(self, key: Key, *, fence: Fence | None = None,
                     timeout: float | None = None) -> bool:
        k = to_bytes(key)
        body = {"op": "delete", "key": k, **fence_field(fence)}
        return bool(await self._keyed(self._session(body), k, timeout))

    async def compare_and_set(self, key: Key, expected: Key | None, value: Key | None, *,
                              fence: Fence | None = None, timeout: float | None = None,
                              ) -> bool:
        """Set `key` to `value` (delete it when None) if its value is `expected` (absent
        when None). True if it was changed."""
        return await self.cas(key, "value", None if expected is None else to_bytes(expected),
                              value, fence=fence, timeout=timeout)

    async def cas(self, key: Key, target: str, expected: Any, value: Key | None, *,
                  fence: Fence | None = None, timeout: float | None = None) -> bool:
        """Compare `target` ("value", "version" or "mod_revision") with `expected`, then
        put `value` (or delete when None)."""
        k = to_bytes(key)
        body: dict[str, Any] = {"op": "cas", "key": k, "target": target, "expected": expected,
                                "then": "delete" if value is None else "put",
                                "value": b"" if value is None else to_bytes(value),
                                **fence_field(fence)}
        return bool(await self._keyed(self._session(body), k, timeout))

    async def scan(self, prefix: Key = b"", *, limit: int = 1000, after: Key = b"",
                   consistency: str = "linearizable",
                   timeout: float | None = None) -> list[KeyValue]:
        """Keys starting with `prefix` after `after`, in key order, at most `limit`:
        every shard is asked, and the answers merged."""
        await self._ensure_map(timeout)
        p, a = to_bytes(prefix), to_bytes(after)
        calls = [self._shard_call(shard, {"op": "scan", "shard": shard, "prefix": p,
                                          "after": a, "limit": limit,
                                          "consistency": consistency}, timeout,
                                  stale_ok=consistency == "stale")
                 for shard in range(self._map.shards)]
        found = [KeyValue(*raw) for part in await asyncio.gather(*calls) for raw in part]
        found.sort(key=lambda kv: kv.key)
        return found[:limit]

    # ---------------------------------------------------------------------- leases

    async def grant_lease(self, ttl: float, *, near: Key = b"",
                          timeout: float | None = None) -> Lease:
        """A lease of `ttl` seconds on the shard of `near`; keep it with `keepalive`."""
        await self._ensure_map(timeout)
        shard = shard_of(to_bytes(near), self._map.shards)
        return await self.grant_lease_on(shard, round(ttl * 1000), timeout=timeout)

    async def grant_lease_on(self, shard: int, ttl_ms: int, *,
                             timeout: float | None = None) -> Lease:
        lease_id = self._rng.randrange(1, 2**62)
        await self._shard_call(shard, self._session(
            {"op": "lease_grant", "shard": shard, "ttl_ms": ttl_ms, "lease": lease_id}), timeout)
        return Lease(lease_id, shard, ttl_ms)

    async def keepalive(self, lease: Lease, *, timeout: float | None = None) -> None:
        await self._shard_call(lease.shard, {"op": "lease_keepalive", "shard": lease.shard,
                                             "lease": lease.id}, timeout)

    async def revoke(self, lease: Lease, *, timeout: float | None = None) -> int:
        return int(await self._shard_call(lease.shard, self._session(
            {"op": "lease_revoke", "shard": lease.shard, "lease": lease.id}), timeout))

    async def ttl_remaining(self, lease: Lease, *, timeout: float | None = None) -> float:
        """Seconds the lease has left on its shard leader's clock (NotFound once gone)."""
        raw = await self._shard_call(lease.shard, {"op": "lease_ttl", "shard": lease.shard,
                                                   "lease": lease.id}, timeout)
        return float(raw["remaining_ms"]) / 1000

    # ----------------------------------------------------------------------- locks

    def lock(self, name: Key, *, ttl: float = DEFAULT_LOCK_TTL_S,
             on_lost: Callable[[AsyncLock], None] | None = None) -> AsyncLock:
        """A fair (FIFO) lock of the cluster, in the shape of `asyncio.Lock`:

            async with client.lock("jobs/42", ttl=10) as held:
                await client.put("jobs/42/state", "done", fence=held)

        It is held under a lease of `ttl` seconds that this client keeps alive; if the
        client cannot renew it in time, `held.valid` turns false, `on_lost(held)` is
        called, and fenced writes are refused (see docs/LOCKS.md)."""
        return AsyncLock(self, to_bytes(name), ttl=ttl, on_lost=on_lost)

    def rwlock(self, name: Key, *, ttl: float = DEFAULT_LOCK_TTL_S) -> AsyncReadWriteLock:
        """Many readers or one writer, FIFO, writers not starved:
        `async with client.rwlock("cfg").read() as held: ...`."""
        return AsyncReadWriteLock(self, to_bytes(name), ttl)

    def semaphore(self, name: Key, limit: int, *, ttl: float = DEFAULT_LOCK_TTL_S,
                  on_lost: Callable[[AsyncLock], None] | None = None) -> AsyncLock:
        """One slot of a counting semaphore of `limit` slots, FIFO."""
        return AsyncLock(self, to_bytes(name), ttl=ttl, on_lost=on_lost, mode="n",
                         limit=limit)

    def election(self, name: Key, *, ttl: float = DEFAULT_LOCK_TTL_S) -> AsyncElection:
        """Leader election on `name` (see client/election.py)."""
        return AsyncElection(self, to_bytes(name), ttl)

    async def locks(self, *, timeout: float | None = None) -> list[LockState]:
        """Every lock held in the cluster: holder, token, waiters, the lease's TTL left."""
        await self._ensure_map(timeout)
        calls = [self._shard_call(shard, {"op": "locks", "shard": shard}, timeout)
                 for shard in range(self._map.shards)]
        found = [LockState.from_wire(shard, raw)
                 for shard, part in enumerate(await asyncio.gather(*calls)) for raw in part]
        return sorted(found, key=lambda lock: lock.name)
    # ---------------------------------------------------------------------- watches

    def watch(self, key: Key | None = None, *, prefix: Key | None = None,
              start_revision: int | Mapping[int, int] | None = None) -> Watch:
        """The changes of `key`, or of every key under `prefix`: see client/watch.py."""
        from ringlock.client.watch import Watch

        return Watch(self, key, prefix=prefix, start_revision=start_revision)

    # ---------------------------------------------------------------------- cluster

    async def status(self, *, timeout: float | None = None) -> list[dict[str, Any]]:
        """Every node's own report; a node that does not answer gets {"error": ...}.
        The map is fetched afresh first: members come and go."""
        await self._ensure_map(timeout, refresh=True)
        budget = ATTEMPT_TIMEOUT_S if timeout is None else timeout

        async def one(node: int, address: str) -> dict[str, Any]:
            try:
                result: dict[str, Any] = await self._connection(address).call(
                    {"op": "status"}, budget)
                return result
            except (RequestError, TimeoutError, OSError) as error:
                return {"node": node, "address": address, "error": str(error) or "timeout"}

        nodes = sorted(self._map.nodes.items())
        return list(await asyncio.gather(*(one(n, a) for n, a in nodes)))

    async def set_node_state(self, node: int, state: str, *,
                             timeout: float | None = None) -> dict[str, Any]:
        """Drain a node (`draining`: its replicas and leaderships move away), cancel a
        drain (`up`), or take a drained node out (`removed`). Returns the new map.
        Any node relays the request to the meta group's leader."""
        await self._ensure_map(timeout)
        body = {"op": "node_state", "node": node, "state": state}
        result: dict[str, Any] = await self._shard_call(META_GROUP, body, timeout)
        await self._ensure_map(timeout, refresh=True)
        return result

    async def shard_map(self, *, timeout: float | None = None) -> ShardMap:
        await self._ensure_map(timeout, refresh=True)
        return self._map

    # ------------------------------------------------------------------- plumbing

    def _session(self, body: dict[str, Any]) -> dict[str, Any]:
        self._seq += 1
        body["client"] = self.client_id
        body["seq"] = self._seq
        return body

    with_session = _session

    @property
    def shard_count(self) -> int:
        return self._map.shards

    def new_waiter_id(self) -> int:
        return self._rng.randrange(1, 2**62)

    async def ensure_map(self, timeout: float | None) -> None:
        await self._ensure_map(timeout)

    def _connection(self, address: str) -> RpcConnection:
        connection = self._connections.get(address)
        if connection is None or connection.broken:
            connection = RpcConnection(address, secret=self._secret or None, ssl=self._ssl)
            self._connections[address] = connection
        return connection

    async def _ensure_map(self, timeout: float | None, *, refresh: bool = False) -> None:
        if self._map.shards and not refresh:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.timeout if timeout is None else timeout)
        candidates = list(dict.fromkeys([*self.seeds, *self._map.nodes.values()]))
        attempt = 0
        last: Exception | None = None
        while loop.time() < deadline:
            address = candidates[attempt % len(candidates)]
            attempt += 1
            budget = min(ATTEMPT_TIMEOUT_S, max(0.001, deadline - loop.time()))
            try:
                raw = await self._connection(address).call({"op": "map"}, budget)
            except FATAL_ERRORS:
                raise
            except (RequestError, TimeoutError, OSError) as error:
                last = error
                if attempt % len(candidates) == 0:
                    await self._backoff(attempt // len(candidates), deadline)
                continue
            try:
                fresh = ShardMap.from_wire(raw)
            except (MapError, KeyError, TypeError, ValueError, AttributeError) as error:
                last = error
                continue
            if fresh.version >= self._map.version:
                self._map = fresh
            return
        raise RequestTimeout(f"no node of {candidates} answered with the shard map: {last}")

    async def _keyed(self, body: dict[str, Any], key: bytes, timeout: float | None, *,
                     stale_ok: bool = False) -> Any:
        if not self._map.shards:  # (the test _ensure_map makes, without its coroutine)
            await self._ensure_map(timeout)
        shard = shard_of(key, self._map.shards)
        body["shard"] = shard
        return await self._shard_call(shard, body, timeout, stale_ok=stale_ok)

    def route_changed(self, shard: int) -> asyncio.Future[None]:
        """Done when this client stops believing in the leader it knew for `shard`: a
        wait held open there (a lock's) re-attaches at the new leader."""
        future = self._route_events.get(shard)
        if future is None:
            future = self._route_events[shard] = asyncio.get_running_loop().create_future()
        return future

    def _lost_leader(self, shard: int) -> None:
        self._map.leaders.pop(shard, None)
        future = self._route_events.pop(shard, None)
        if future is not None and not future.done():
            future.set_result(None)

    async def _shard_call(self, shard: int, body: dict[str, Any], timeout: float | None, *,
                          stale_ok: bool = False, attempt_timeout: float = ATTEMPT_TIMEOUT_S,
                          abandon: asyncio.Future[None] | None = None) -> Any:
        """`body`'s answer from the shard's leader, following it as it moves, retrying
        what is safe to retry; `Abandoned` once `abandon` is done (RpcConnection.call)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.timeout if timeout is None else timeout)
        attempt = 0
        last: Exception | None = None
        tried_other = False
        # Answer NotLeader rather than relay, so this client learns where the leader is
        # and goes there directly from now on. One body for every attempt: `call` only
        # sets its id, and the (client, seq) that makes a retry safe stays the same.
        body["redirect"] = True
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise RequestTimeout(f"shard {shard}: no answer within the deadline "
                                     f"after {attempt} attempts; last error: {last}")
            address = self._pick(shard, stale_ok, avoid=tried_other)
            attempt += 1
            try:
                return await self._connection(address).call(
                    body, min(attempt_timeout, remaining), abandon=abandon)
            except WaitSuperseded as error:
                last = error  # our own newer wait replaced it there: ask again, same place
                continue
            except NotLeader as error:
                last = error
                self.retries += 1
                if error.version > self._map.version:  # the shard may have moved
                    await self._ensure_map(remaining, refresh=True)
                if error.leader and error.leader != address:
                    self._lost_leader(shard)
                    self._map.leaders[shard] = error.leader
                    tried_other = False
                    continue
                self._lost_leader(shard)
                tried_other = True
            except WrongShard as error:
                last = error
                self.retries += 1
                self._lost_leader(shard)
                await self._ensure_map(remaining, refresh=True)
                tried_other = True
            except (Unavailable, TimeoutError, OSError) as error:
                last = error
                self.retries += 1
                if self._map.leaders.get(shard) == address:
                    self._lost_leader(shard)
                tried_other = True
            await self._backoff(attempt, deadline)

    shard_call = _shard_call

    def _pick(self, shard: int, stale_ok: bool, avoid: bool) -> str:
        leader = None if avoid else self._map.leaders.get(shard)
        if leader is not None and not stale_ok:  # the hot path: no replica list built
            return leader
        replicas = [self._map.nodes[n] for n in self._map.replicas.get(shard, ())
                    if n in self._map.nodes]
        if stale_ok and replicas:
            return self._rng.choice(replicas)
        if leader is not None:  # a stale read with no replica known
            return leader
        return self._rng.choice(replicas or list(self._map.nodes.values()) or self.seeds)

    async def _backoff(self, attempt: int, deadline: float) -> None:
        """Exponential backoff with full jitter, never past the deadline."""
        loop = asyncio.get_running_loop()
        ceiling = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** min(attempt, 10))
        await asyncio.sleep(min(self._rng.uniform(0, ceiling), max(0, deadline - loop.time())))
