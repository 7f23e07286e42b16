"""The order of one drive turn (server/node.py, `Node._turn`), on fakes that record it.

A leader applies before its fsync (its answers to committed entries may leave before
it: durable on a quorum already). A follower's acknowledgements leave after its fsync
and before its apply: the leader waits for them, nobody waits for the apply. Moving a
follower's apply back before its send puts the apply on every commit's path."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from ringlock.raft.messages import Entry, Message, MessageType, Ready, Role
from ringlock.server.config import NodeConfig
from ringlock.server.node import Node
from ringlock.transport.wire import encode_message


class FakeRaft:
    def __init__(self, role: Role, rd: Ready) -> None:
        self.role = role
        self._rd: Ready | None = rd

    def take_ready(self) -> Ready | None:
        rd, self._rd = self._rd, None
        return rd

    def step(self, message: Message) -> None:
        pass


class FakeReplica:
    def __init__(self, shard: int, role: Role, rd: Ready, events: list[str]) -> None:
        self.shard = shard
        self.raft = FakeRaft(role, rd)
        self.events = events

    def hard_state_to_persist(self, hard_state: Any) -> None:
        return None

    def apply(self, rd: Ready) -> None:
        self.events.append(f"apply {self.shard}")

    def advance(self, rd: Ready) -> None:
        self.events.append(f"advance {self.shard}")

    def maybe_compact(self, every: int) -> None:
        return None

    def needs_another_turn(self) -> bool:
        return False


class FakeStorage:
    def __init__(self, events: list[str]) -> None:
        self.events = events
        self._pending = False

    def append(self, shard: int, hard_state: Any, entries: list[Entry]) -> None:
        self.events.append(f"append {shard}")
        self._pending = True

    def pending(self) -> bool:
        return self._pending

    def sync(self) -> None:
        self.events.append("fsync")
        self._pending = False


class FakeLink:
    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.queued: list[bytes] = []

    def queue(self, frame: bytes) -> None:
        self.queued.append(frame)

    def flush(self) -> None:
        if self.queued:
            self.events.append(f"send {len(self.queued)}")
            self.queued = []


def turn_of(tmp_path: Path, role: Role, *, appends_first: bool = False) -> list[str]:
    """The events of one turn of shard 5, in `role`, with a new entry to persist, one
    committed entry to apply and one message for peer 2. With `appends_first` (as a
    leader's Ready allows) that APPEND may leave before the fsync, and a heartbeat is
    added that may not."""
    events: list[str] = []
    node = Node(NodeConfig(node_id=1, listen="127.0.0.1:1", data_dir=str(tmp_path),
                           peers={1: "127.0.0.1:1", 2: "127.0.0.1:2"}))
    kind = MessageType.APPEND if role == Role.LEADER else MessageType.APPEND_RESP
    rd = Ready(entries=[Entry(8, 1, b"new")], committed_entries=[Entry(7, 1, b"old")],
               messages=[Message(kind, to=2, frm=1, term=1, group=5, index=8)],
               appends_may_precede_persist=appends_first)
    if appends_first:
        rd.messages.append(Message(MessageType.HEARTBEAT, to=2, frm=1, term=1, group=5))
    node.replicas = {5: FakeReplica(5, role, rd, events)}  # type: ignore[dict-item]
    node.storage = FakeStorage(events)  # type: ignore[assignment]
    node.links = {2: FakeLink(events)}  # type: ignore[dict-item]
    node._dirty = {5}
    node._turn()
    return events


def test_a_follower_acknowledges_after_its_fsync_and_before_it_applies(
        tmp_path: Path) -> None:
    assert turn_of(tmp_path, Role.FOLLOWER) == [
        "append 5", "fsync", "send 1", "apply 5", "advance 5"]


def test_a_leader_applies_before_its_fsync(tmp_path: Path) -> None:
    assert turn_of(tmp_path, Role.LEADER) == [
        "append 5", "apply 5", "fsync", "send 1", "advance 5"]


def test_a_leaders_appends_leave_before_it_writes_its_own_log(tmp_path: Path) -> None:
    """The followers' fsyncs run while the leader encodes and applies, not after."""
    assert turn_of(tmp_path, Role.LEADER, appends_first=True) == [
        "send 1", "append 5", "apply 5", "fsync", "send 1", "advance 5"]


def test_only_a_turn_woken_by_a_local_request_waits_to_gather(tmp_path: Path) -> None:
    """Gathering batches requests into one fsync; a follower's APPEND or a leader's
    acknowledgement is on the path of every write and is not held back for it."""
    node = Node(NodeConfig(node_id=1, listen="127.0.0.1:1", data_dir=str(tmp_path),
                           peers={1: "127.0.0.1:1", 2: "127.0.0.1:2"}))
    node.replicas = {5: FakeReplica(5, Role.FOLLOWER, Ready(), [])}  # type: ignore[dict-item]
    events: list[str] = []

    async def gather() -> None:
        events.append("gather")
        await asyncio.sleep(0)

    def turn() -> None:
        events.append("turn")
        node._dirty.clear()

    node._gather = gather  # type: ignore[method-assign]
    node._turn = turn  # type: ignore[method-assign]

    async def main() -> None:
        driver = asyncio.get_running_loop().create_task(node._drive_loop())
        try:
            append = Message(MessageType.APPEND, to=1, frm=2, term=1, group=5, index=8)
            node.on_raft_messages(2, [encode_message(append)])
            for _ in range(5):
                await asyncio.sleep(0)
            assert events == ["turn"]
            node.mark(5)  # as a proposal, a read or a tick does
            for _ in range(5):
                await asyncio.sleep(0)
            assert events == ["turn", "gather", "turn"]
        finally:
            driver.cancel()

    asyncio.run(main())
