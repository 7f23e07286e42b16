"""One client process of the lock fault test (`test_lock_faults.py`).

It takes lock NAME COUNT times; each critical section reads LOG_KEY and writes it back
with one more entry, fenced with the grant. Each hold becomes one JSON line in OUT:
client, waiter, token, when the grant arrived and when the release was sent (null if
the client could no longer be sure it held the lock), and how the fenced write ended.
At acquisition PAUSE_AT it writes `<OUT>.holding` and sleeps in the critical section,
for the test to SIGSTOP it past its TTL; resumed, it tries two more fenced writes: one
the client must refuse itself, one (with the bare token) the cluster must refuse.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ringlock import FencedOut, NotHolder, RequestError
from ringlock.client import Client

LOG_KEY = "fenced/log"
HOLD_FOR_PAUSE_S = 30.0
"""Time the test has to SIGSTOP this process once it says it is holding (bounded)."""


def main() -> None:
    cluster, name, count, index, out, pause_at, ttl = sys.argv[1:8]
    output = Path(out)
    with Client(cluster, timeout=20) as client, output.open("a") as records:
        lock = client.lock(name, ttl=float(ttl))
        for attempt in range(int(count)):
            try:
                if not lock.acquire(timeout=120):
                    records.write(json.dumps({"client": int(index), "error": "timeout"}) + "\n")
                    continue
            except RequestError as error:
                records.write(json.dumps({"client": int(index), "error": repr(error)}) + "\n")
                continue
            acquired = time.monotonic()
            token = lock.token
            record: dict[str, object] = {"client": int(index), "waiter": lock._inner.waiter,
                                         "token": token, "acquired": acquired}
            try:
                log = client.get(LOG_KEY) or b""
                client.put(LOG_KEY, log + f"{index}:{token};".encode(), fence=lock)
                record["write"] = "ok"
            except FencedOut:
                record["write"] = "fenced"
            except RequestError as error:
                record["write"] = repr(error)
            if attempt == int(pause_at):
                Path(out + ".holding").write_text(str(token))
                deadline = time.monotonic() + HOLD_FOR_PAUSE_S
                while time.monotonic() < deadline and lock.valid:
                    time.sleep(0.01)  # stopped here by the test, resumed past the TTL
                record["after_pause"] = [_fenced_write(client, lock),
                                         _fenced_write(client, (name, token))]
            released = time.monotonic()
            record["released"] = released if lock.valid else None
            try:
                lock.release()
                record["release"] = "ok"
            except NotHolder:
                record["release"] = "not holder"
            except RequestError as error:
                record["release"] = repr(error)
            records.write(json.dumps(record) + "\n")
            records.flush()


def _fenced_write(client: Client, fence: object) -> str:
    try:
        client.put(LOG_KEY, "STALE WRITE", fence=fence)
    except FencedOut:
        return "fenced"
    except RequestError as error:
        return repr(error)
    return "accepted"


if __name__ == "__main__":
    main()
