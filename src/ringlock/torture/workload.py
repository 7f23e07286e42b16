"""The key-value clients of `ringlock torture`, and what they saw.

Clients run in one background thread with its own event loop, each with its own
`AsyncClient` (its own session and connections), so their calls interleave:

  * register clients get, put, cas and delete a few shared keys; every call becomes a
    checker `Op` with its invoke and return times (time.monotonic_ns). A call that
    raises, or times out, has outcome unknown (`ret = None`): it may have taken effect
    at any time after its call, or never. "Failed" is never assumed.
  * ack writers put keys of their own, each once, and remember which were acknowledged
    (and which ended unknown): after the heal every acknowledged one must be there.
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

CALL_TIMEOUT_S = 2.0
"""One call's deadline, the client's retries included: past it the outcome is unknown.
Shorter than a pause (1.5-2 lease TTLs), so that calls stuck on a stopped leader do end
unknown and the checker has to place them."""
REGISTER_PREFIX = "torture/kv/"
ACK_PREFIX = "torture/w/"
FINAL_READER = 1_000_000
"""Client number of the reads made after the heal (they join the checked history)."""


@dataclass
class KvRecord:
    history: list[Op] = field(default_factory=list)
    acked: dict[str, str] = field(default_factory=dict)
    unknown_writes: dict[str, str] = field(default_factory=dict)
    ack_times: list[tuple[str, int, int]] = field(default_factory=list)
    """(key, call, return) of each acknowledged ack write: the unavailability figures."""
    errors: int = 0


class KvWorkload:
    """Start with `start()`, stop with `stop()`; `record` holds what the clients saw."""

    def __init__(self, addresses: list[str], *, seed: int, register_clients: int = 4,
                 keys: int = 5, ack_writers: int = 2, think_s: float = 0.01) -> None:
        self.addresses = addresses
        self.seed = seed
        self.register_clients = register_clients
        self.keys = [f"{REGISTER_PREFIX}k{i}" for i in range(keys)]
        self.ack_writers = ack_writers
        self.think_s = think_s
        self.record = KvRecord()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()),
                                        name="torture-kv", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> KvRecord:
        self._stop.set()
        self._thread.join(timeout=CALL_TIMEOUT_S * 4)
        if self._thread.is_alive():
            raise RuntimeError("the KV workload did not stop")
        return self.record

    async def _run(self) -> None:
        await asyncio.gather(*[self._register_client(c) for c in range(self.register_clients)],
                             *[self._ack_writer(w) for w in range(self.ack_writers)])

    async def _register_client(self, number: int) -> None:
        rng = random.Random(f"{self.seed}/kv/{number}")
        last_seen: dict[str, str | None] = {}
        async with AsyncClient(self.addresses, timeout=CALL_TIMEOUT_S) as client:
            n = 0
            while not self._stop.is_set():
                key = rng.choice(self.keys)
                roll = rng.random()
                value = f"c{number}-{n}"
                n += 1
                call = time.monotonic_ns()
                arg: Any = None
                try:
                    if roll < 0.45:
                        kind, arg = "get", None
                        raw = await client.get(key)
                        result: Any = None if raw is None else raw.decode()
                        last_seen[key] = result
                    elif roll < 0.75:
                        kind, arg, result = "put", value, None
                        await client.put(key, value)
                    elif roll < 0.95:
                        expected = last_seen.get(key)
                        kind, arg = "cas", (expected, value)
                        result = await client.compare_and_set(key, expected, value)
                    else:
                        kind, arg, result = "delete", None, None
                        await client.delete(key)
                except Exception:  # timeout, node gone: the outcome is unknown
                    self.record.errors += 1
                    self.record.history.append(Op(number, key, kind, arg, None, call, None))
                else:
                    self.record.history.append(
                        Op(number, key, kind, arg, result, call, time.monotonic_ns()))
                await asyncio.sleep(self.think_s)

    async def _ack_writer(self, number: int) -> None:
        async with AsyncClient(self.addresses, timeout=CALL_TIMEOUT_S) as client:
            n = 0
            while not self._stop.is_set():
                key, value = f"{ACK_PREFIX}{number}/{n:08d}", f"v{n}"
                n += 1
                call = time.monotonic_ns()
                try:
                    await client.put(key, value)
                except Exception:  # unknown: may or may not be there
                    self.record.errors += 1
                    self.record.unknown_writes[key] = value
                else:
                    self.record.acked[key] = value
                    self.record.ack_times.append((key, call, time.monotonic_ns()))
                await asyncio.sleep(self.think_s)


async def read_registers(addresses: list[str], keys: list[str]) -> list[Op]:
    """One linearizable read of each register key after the heal, as history ops: a write
    acknowledged then lost shows up as a read the checker cannot place."""
    ops: list[Op] = []
    async with AsyncClient(addresses, timeout=30.0) as client:
        for key in keys:
            call = time.monotonic_ns()
            raw = await client.get(key)
            ops.append(Op(FINAL_READER, key, "get", None,
                          None if raw is None else raw.decode(), call, time.monotonic_ns()))
    return ops


async def scan_prefix(addresses: list[str], prefix: str) -> dict[str, tuple[str, int]]:
    """key -> (value, mod_revision) of every key under `prefix` (linearizable scans)."""
    found: dict[str, tuple[str, int]] = {}
    after = b""
    async with AsyncClient(addresses, timeout=30.0) as client:
        while True:
            page = await client.scan(prefix, limit=1000, after=after)
            for kv in page:
                found[kv.key.decode()] = (kv.value.decode(), kv.mod_revision)
            if len(page) < 1000:
                return found
            after = page[-1].key
