"""A replica keeps only its snapshot's metadata; the node reads the data back from the
file to send it, and skips (rather than dies on) a snapshot whose file is gone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ringlock.raft.messages import (
    Configuration,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)
from ringlock.server.config import NodeConfig
from ringlock.server.node import Node
from ringlock.storage import NodeStorage
from ringlock.transport.wire import decode_message


class RecordingLink:
    def __init__(self) -> None:
        self.queued: list[Any] = []

    def queue(self, message: Any) -> None:
        self.queued.append(message)


def node_with_storage(tmp_path: Path) -> tuple[Node, NodeStorage, RecordingLink]:
    config = NodeConfig(node_id=1, listen="127.0.0.1:1", data_dir=str(tmp_path),
                        peers={1: "127.0.0.1:1", 2: "127.0.0.1:2"})
    node = Node(config)
    storage = NodeStorage(tmp_path / "wal-root")
    node.storage = storage
    link = RecordingLink()
    node.links = {2: link}  # type: ignore[dict-item]
    return node, storage, link


def meta(index: int) -> SnapshotMeta:
    return SnapshotMeta(index, 1, Configuration(frozenset({1, 2})))


def snapshot_message(index: int) -> Message:
    return Message(MessageType.SNAPSHOT, to=2, frm=1, term=1, group=0,
                   snapshot=Snapshot(meta(index), b""))


def test_a_snapshot_message_carries_the_data_read_back_from_its_file(tmp_path: Path) -> None:
    node, storage, link = node_with_storage(tmp_path)
    storage.append(0, None, [])
    storage.save_snapshot(0, Snapshot(meta(5), b"state at 5"))
    storage.sync()
    node._send([snapshot_message(5)])
    (sent,) = link.queued
    snapshot = decode_message(sent).snapshot
    assert snapshot is not None and snapshot.data == b"state at 5"
    assert node.counters["snapshots_sent"] == 1
    storage.close()


def test_a_snapshot_whose_file_is_gone_is_skipped_not_fatal(tmp_path: Path) -> None:
    node, storage, link = node_with_storage(tmp_path)
    node._send([snapshot_message(7), Message(MessageType.HEARTBEAT, to=2, frm=1, term=1)])
    assert [decode_message(m).type for m in link.queued] == [MessageType.HEARTBEAT]
    assert node.counters["snapshots_sent"] == 0
    storage.close()
