"""A grant pushed to a waiting connection is written at once (server/lockops.py).

In a contended lock every handoff waits for the next holder to hear of its grant and
send its release. The answers a drive turn gathers are written after its applies;
the push leaves in the apply that granted it, before the others."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from ringlock.errors import RequestError
from ringlock.server.lockops import LockOps, OpenWait, ShardWaits
from ringlock.statemachine.locks import Grant


class RecordingConnection:
    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.closed = False

    def flush(self) -> None:
        self.events.append("flush")


def test_a_pushed_grant_is_written_at_once_not_with_the_turns_answers() -> None:
    events: list[str] = []

    def answer(result: Any, error: RequestError | None) -> None:
        assert error is None
        events.append(f"answer {result.status} {result.value}")

    ops = LockOps(node=None)  # type: ignore[arg-type]
    waiting = RecordingConnection(events)
    ops.shards[5] = ShardWaits(waits={(b"jobs", 7): [OpenWait(answer, waiting)]})  # type: ignore[list-item]
    ops.open_count = 1
    replica = SimpleNamespace(shard=5, sm=SimpleNamespace(locks=SimpleNamespace(departures=0)))

    ops.after_apply(replica, Grant(name=b"jobs", waiter=7, lease=1, token=3))

    assert events == ["answer granted 3", "flush"]
    assert (ops.open_count, ops.pushed, ops.shards[5].waits) == (0, 1, {})
