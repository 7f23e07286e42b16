"""The node's watch hub without processes: a real shard state machine, fake connection,
replica and node. Frames, progress, step-down, lag, compaction, cancel and limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from ringlock.errors import NotLeader, RequestError
from ringlock.raft.messages import Role
from ringlock.server import watches
from ringlock.server.watches import WatchHub
from ringlock.sharding.keys import shard_of
from ringlock.statemachine import ShardStateMachine
from ringlock.statemachine.kv import encode

SHARDS = 4


@dataclass
class FakeTransport:
    buffered: int = 0

    def get_write_buffer_size(self) -> int:
        return self.buffered


@dataclass
class FakeWriter:
    transport: FakeTransport = field(default_factory=FakeTransport)


class FakeConnection:
    def __init__(self) -> None:
        self.writer = FakeWriter()
        self._out: list[bytes] = []
        self.frames: list[dict[str, Any]] = []

    def _send(self, body: dict[str, Any]) -> None:
        self.frames.append(body)

    def send_error(self, request_id: int, error: RequestError) -> None:
        self.frames.append({"id": request_id, "err": error.code, "msg": str(error)})

    def take(self) -> list[dict[str, Any]]:
        frames, self.frames = self.frames, []
        return frames


@dataclass
class FakeRaft:
    role: Role = Role.LEADER


class FakeReplica:
    def __init__(self, shard: int) -> None:
        self.shard = shard
        self.sm = ShardStateMachine()
        self.raft = FakeRaft()

    def not_leader(self) -> NotLeader:
        return NotLeader("not the leader", "127.0.0.1:9")

    def write(self, key: bytes, value: bytes | None = b"v") -> None:
        command = (encode("put", 0, 0, key, value, 0, False) if value is not None
                   else encode("delete", 0, 0, key, False))
        self.sm.apply(self.sm.applied_index + 1, command)


@dataclass
class FakeConfig:
    shards: int = SHARDS
    max_key_bytes: int = 64


class FakeNode:
    def __init__(self) -> None:
        self.id = 1
        self.config = FakeConfig()
        self.counters = {"requests": 0}
        self.replicas = {s: FakeReplica(s) for s in range(SHARDS)}

    def _replica(self, shard: int) -> FakeReplica:
        return self.replicas[shard]


def setup() -> tuple[FakeNode, WatchHub, FakeConnection, FakeReplica]:
    node = FakeNode()
    hub = WatchHub(node)  # type: ignore[arg-type]
    return node, hub, FakeConnection(), node.replicas[0]


def watch(hub: WatchHub, connection: FakeConnection, request_id: int = 1,
          **fields: Any) -> list[dict[str, Any]]:
    hub.request(connection, request_id,  # type: ignore[arg-type]
                {"op": "watch", "shard": 0, "prefix": b"a", **fields})
    return connection.take()


def test_ack_then_history_then_live_changes() -> None:
    _, hub, connection, replica = setup()
    replica.write(b"a1")
    replica.write(b"b1")
    replica.write(b"a2", None)  # deleting a missing key changes nothing
    replica.write(b"a2")
    ack, replay = watch(hub, connection, start_revision=1)
    assert ack == {"id": 1, "ok": {"start": 1, "revision": 3, "floor": 0}}
    assert replay == {"id": 1, "rev": 3,
                      "events": [[1, "put", b"a1", b"v", 0], [3, "put", b"a2", b"v", 0]]}
    replica.write(b"a1", None)
    hub.on_applied(replica)  # type: ignore[arg-type]
    assert connection.take() == [{"id": 1, "rev": 4, "events": [[4, "delete", b"a1", None, 0]]}]
    replica.write(b"zz")
    hub.on_applied(replica)  # type: ignore[arg-type]
    assert connection.take() == []  # nothing for it, and not far enough for progress


def test_from_now_and_an_exact_key() -> None:
    _, hub, connection, replica = setup()
    key = next(k for k in (b"a%d" % n for n in range(100)) if shard_of(k, SHARDS) == 0)
    replica.write(key)
    (ack,) = watch(hub, connection, prefix=key, exact=True)
    assert ack["ok"]["start"] == 2
    replica.write(key + b"x")
    replica.write(key)
    hub.on_applied(replica)  # type: ignore[arg-type]
    assert connection.take() == [{"id": 1, "rev": 3, "events": [[3, "put", key, b"v", 0]]}]


def test_a_quiet_watcher_hears_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watches, "WATCH_PROGRESS_REVISIONS", 5)
    _, hub, connection, replica = setup()
    watch(hub, connection)
    for _ in range(5):
        replica.write(b"other")
    hub.on_applied(replica)  # type: ignore[arg-type]
    assert connection.take() == [{"id": 1, "rev": 5, "events": []}]


def test_a_replica_that_stops_leading_ends_its_watches_with_not_leader() -> None:
    _, hub, connection, replica = setup()
    watch(hub, connection)
    replica.write(b"a")
    replica.raft.role = Role.FOLLOWER
    hub.on_applied(replica)  # type: ignore[arg-type]
    events, ended = connection.take()
    assert events["events"] == [[1, "put", b"a", b"v", 0]]  # what applied goes first
    assert ended["err"] == "NotLeader"
    assert hub.count == 0
    assert watch(hub, connection)[0]["err"] == "NotLeader"  # and a follower refuses


def test_a_lagging_connection_ends_the_watch_and_history_serves_the_resume() -> None:
    _, hub, connection, replica = setup()
    watch(hub, connection)
    connection.writer.transport.buffered = watches.MAX_WATCH_BACKLOG_BYTES + 1
    replica.write(b"a")
    hub.on_applied(replica)  # type: ignore[arg-type]
    (ended,) = connection.take()
    assert ended["err"] == "WatchLagged" and hub.count == 0
    connection.writer.transport.buffered = 0
    _, replay = watch(hub, connection, request_id=2, start_revision=1)
    assert replay["events"] == [[1, "put", b"a", b"v", 0]]


def test_a_watcher_behind_the_floor_is_compacted() -> None:
    _, hub, connection, replica = setup()
    replica.sm.history.budget.max_events = 2
    for _ in range(3):
        replica.write(b"a")
    (refused,) = watch(hub, connection, start_revision=1)
    assert refused["err"] == "Compacted" and refused["floor"] == 1
    _, replay = watch(hub, connection, start_revision=2)
    assert [e[0] for e in replay["events"]] == [2, 3]


def test_cancel_and_a_closed_connection_drop_watches() -> None:
    _, hub, connection, _ = setup()
    watch(hub, connection, request_id=1)
    watch(hub, connection, request_id=2)
    hub.request(connection, 3, {"op": "watch_cancel", "watch": 1})  # type: ignore[arg-type]
    assert connection.take() == [{"id": 1, "end": True}, {"id": 3, "ok": True}]
    hub.request(connection, 4, {"op": "watch_cancel", "watch": 1})  # type: ignore[arg-type]
    assert connection.take() == [{"id": 4, "ok": False}]
    assert hub.count == 1
    hub.drop_connection(connection)  # type: ignore[arg-type]
    assert hub.count == 0 and not hub._by_shard and not hub._by_connection


def test_limits_and_bad_requests_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watches, "MAX_WATCHES_PER_CONNECTION", 2)
    _, hub, connection, _ = setup()
    watch(hub, connection, request_id=1)
    assert watch(hub, connection, request_id=1)[0]["err"] == "BadRequest"  # id in use
    watch(hub, connection, request_id=2)
    assert watch(hub, connection, request_id=3)[0]["err"] == "TooLarge"
    assert watch(hub, connection, request_id=4, prefix=b"x" * 65)[0]["err"] == "TooLarge"
    other = FakeConnection()
    for bad in ({"prefix": 5}, {"start_revision": -1}, {"exact": 1}, {"shard": None}):
        assert watch(hub, other, request_id=5, **bad)[0]["err"] == "BadRequest"
    assert hub.count == 2
    monkeypatch.setattr(watches, "MAX_WATCHES_PER_NODE", 2)
    assert watch(hub, other, request_id=6)[0]["err"] == "TooLarge"


def test_large_changes_are_cut_into_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watches, "MAX_WATCH_FRAME_BYTES", 100)
    _, hub, connection, replica = setup()
    watch(hub, connection)
    for n in range(3):
        replica.sm.apply(replica.sm.applied_index + 1,
                         encode("put", 0, 0, b"a%d" % n, b"x" * 60, 0, False))
    hub.on_applied(replica)  # type: ignore[arg-type]
    frames = connection.take()
    assert [[e[0] for e in f["events"]] for f in frames] == [[1], [2], [3]]
    assert [f["rev"] for f in frames] == [1, 2, 3]
