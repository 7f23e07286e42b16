"""Clients that keep reading and writing while a test moves the cluster under them.

`Workload` runs its clients in a background thread with its own event loop: writers put
keys of their own, each once, and remember what was acknowledged; readers read
acknowledged keys back and count a read that misses an acknowledged write as a failure.
Any call that still fails after the client's own retries counts too: the ring issue wants
none. With `history_keys`, extra clients also put and get a few shared keys and record
every call and return, for the linearizability checker.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ringlock.checker import Op
from ringlock.client.aio import AsyncClient

CALL_TIMEOUT_S = 20.0
"""A client call's own deadline, retries included: longer than any move or election."""
SCAN_PAGE = 1000


@dataclass
class WorkloadResult:
    writes: int = 0
    reads: int = 0
    failures: list[str] = field(default_factory=list)
    acked: dict[bytes, bytes] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    history: list[Op] = field(default_factory=list)


class Workload:
    def __init__(self, addresses: list[str], *, writers: int = 4, readers: int = 4,
                 history_clients: int = 0, history_keys: int = 3, seed: int = 1,
                 pause_s: float = 0.002) -> None:
        self.addresses = addresses
        self.writers = writers
        self.readers = readers
        self.history_clients = history_clients
        self.history_keys = history_keys
        self.pause_s = pause_s
        self.result = WorkloadResult()
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="workload", daemon=True)
        self._started = threading.Event()

    def __enter__(self) -> Workload:
        self._thread.start()
        if not self._started.wait(30):
            raise RuntimeError("the workload did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> WorkloadResult:
        self._stop.set()
        self._thread.join(timeout=CALL_TIMEOUT_S * 2)
        if self._thread.is_alive():
            raise RuntimeError("the workload did not stop")
        return self.result

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        async with AsyncClient(self.addresses, timeout=CALL_TIMEOUT_S) as client:
            await client.shard_map()
            self._started.set()
            tasks = [self._writer(client, w) for w in range(self.writers)]
            tasks += [self._reader(client) for _ in range(self.readers)]
            tasks += [self._historian(c) for c in range(self.history_clients)]
            await asyncio.gather(*tasks)

    async def _writer(self, client: AsyncClient, writer: int) -> None:
        result = self.result
        n = 0
        while not self._stop.is_set():
            key, value = f"w{writer}:{n:08d}".encode(), f"v{n}".encode()
            started = time.perf_counter()
            try:
                await client.put(key, value)
            except Exception as error:  # every failure is the finding
                result.failures.append(f"put {key!r}: {type(error).__name__}: {error}")
            else:
                result.latencies_ms.append((time.perf_counter() - started) * 1000)
                result.acked[key] = value
                result.writes += 1
            n += 1
            await asyncio.sleep(self.pause_s)

    async def _reader(self, client: AsyncClient) -> None:
        result = self.result
        while not self._stop.is_set():
            if not result.acked:
                await asyncio.sleep(0.01)
                continue
            key = self._rng.choice(list(result.acked)[-1000:])
            started = time.perf_counter()
            try:
                value = await client.get(key)
            except Exception as error:
                result.failures.append(f"get {key!r}: {type(error).__name__}: {error}")
            else:
                result.latencies_ms.append((time.perf_counter() - started) * 1000)
                result.reads += 1
                if value != result.acked[key]:
                    result.failures.append(f"get {key!r} returned {value!r}, "
                                           f"acknowledged {result.acked[key]!r}")
            await asyncio.sleep(self.pause_s)

    async def _historian(self, number: int) -> None:
        """Its own client (own session), so its calls interleave with the others'."""
        rng = random.Random(number)
        async with AsyncClient(self.addresses, timeout=CALL_TIMEOUT_S) as client:
            n = 0
            while not self._stop.is_set():
                key = f"h{rng.randrange(self.history_keys)}"
                kind = rng.choice(("put", "get"))
                value = f"c{number}-{n}" if kind == "put" else None
                call = time.monotonic_ns()
                try:
                    if kind == "put":
                        await client.put(key, value or "")
                        got: Any = None
                    else:
                        raw = await client.get(key)
                        got = raw.decode() if raw is not None else None
                except Exception as error:  # outcome unknown
                    self.result.failures.append(f"history {kind} {key}: {error}")
                    self.result.history.append(Op(number, key, kind, value, None, call, None))
                else:
                    self.result.history.append(
                        Op(number, key, kind, value, got, call, time.monotonic_ns()))
                n += 1
                await asyncio.sleep(self.pause_s * 5)


def read_all(addresses: list[str], prefix: bytes) -> dict[bytes, bytes]:
    """Every key under `prefix`, page by page, with linearizable scans."""

    async def run() -> dict[bytes, bytes]:
        found: dict[bytes, bytes] = {}
        after = b""
        async with AsyncClient(addresses, timeout=CALL_TIMEOUT_S) as client:
            for _ in range(10_000_000 // SCAN_PAGE):
                page = await client.scan(prefix, limit=SCAN_PAGE, after=after)
                for kv in page:
                    found[kv.key] = kv.value
                if len(page) < SCAN_PAGE:
                    return found
                after = page[-1].key
        raise AssertionError("scan did not end")

    return asyncio.run(run())


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else 0.0
