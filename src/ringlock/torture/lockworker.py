"""One lock client process of `ringlock torture` (a process, so a fault can SIGSTOP it).

    python -m ringlock.torture.lockworker CLUSTER INDEX OUT LOCKS TTL SEED STOP_FILE

Until STOP_FILE exists, it takes one of LOCKS (comma list) at a time and, holding it,
makes two fenced writes a little apart, each to a key of its own next to the lock
(`{lock}/f/TOKEN/I`, the hash tag puts it on the lock's shard, where the fence is
checked against the lock's current holder). The writes are fenced with the bare
(name, token) pair, not the held lock, so that the CLUSTER decides whether a holder
that was paused past its TTL may still write; the client's own check would refuse first.

While holding, `OUT.holding` names the token, so the torture runner can pause a worker
that holds a lock. Each hold and each fenced write is one JSON line in OUT, with times
from time.monotonic_ns() (one clock for every process of the host).
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from ringlock.client.aio import AsyncClient
from ringlock.errors import FencedOut, NotHolder, RequestError

CALL_TIMEOUT_S = 5.0
ACQUIRE_TIMEOUT_S = 10.0
WRITES_PER_HOLD = 2


def fenced_key(lock: str, token: int, index: int) -> str:
    """The key of a fenced write: on the lock's shard, unique per (token, write)."""
    return f"{{{lock}}}/f/{token}/{index}"


async def run(cluster: str, index: int, out: Path, locks: list[str], ttl: float, seed: int,
              stop_file: Path) -> None:
    rng = random.Random(seed)
    marker = Path(str(out) + ".holding")
    async with AsyncClient(cluster, timeout=CALL_TIMEOUT_S) as client:
        with out.open("a") as records:
            while not stop_file.exists():
                await _one_hold(client, index, rng, rng.choice(locks), ttl, marker, records)
                await asyncio.sleep(rng.uniform(0.0, 0.05))


async def _one_hold(client: AsyncClient, index: int, rng: random.Random, name: str,
                    ttl: float, marker: Path, records: TextIO) -> None:
    lock = client.lock(name, ttl=ttl)
    try:
        if not await lock.acquire(timeout=ACQUIRE_TIMEOUT_S):
            return
    except (RequestError, TimeoutError, OSError) as error:
        _write(records, {"type": "lock_error", "client": index, "lock": name,
                         "error": repr(error)})
        return
    acquired = time.monotonic_ns()
    token = lock.token
    assert token is not None
    marker.write_text(str(token))
    for write in range(WRITES_PER_HOLD):
        await asyncio.sleep(rng.uniform(0.02, 0.15))  # a pause may land here
        call = time.monotonic_ns()
        outcome = "unknown"
        try:
            await client.put(fenced_key(name, token, write), f"{index}:{token}:{write}",
                             fence=(name, token))
            outcome = "ok"
        except FencedOut:
            outcome = "fenced"
        except (RequestError, TimeoutError, OSError):
            outcome = "unknown"  # timed out or failed: it may or may not have been applied
        _write(records, {"type": "fenced_write", "client": index, "lock": name,
                         "token": token, "write": write, "call": call,
                         "ret": time.monotonic_ns(), "outcome": outcome})
    released: int | None = time.monotonic_ns() if lock.valid else None
    marker.unlink(missing_ok=True)
    try:
        await lock.release()
        release = "ok"
    except NotHolder:
        release = "not holder"
    except (RequestError, TimeoutError, OSError) as error:
        release = repr(error)
    _write(records, {"type": "hold", "client": index, "lock": name, "token": token,
                     "acquired": acquired, "released": released, "release": release})


def _write(records: TextIO, record: dict[str, Any]) -> None:
    records.write(json.dumps(record) + "\n")
    records.flush()


def main() -> None:
    cluster, index, out, locks, ttl, seed, stop_file = sys.argv[1:8]
    asyncio.run(run(cluster, int(index), Path(out), locks.split(","), float(ttl), int(seed),
                    Path(stop_file)))


if __name__ == "__main__":
    main()
