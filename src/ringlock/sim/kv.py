"""The tiny replicated key-value state machine the simulator runs on every node.

Commands are msgpack arrays: ["put", key, value], ["cas", key, expected, new], and
["shard", command]: a command of the real shard state machine
(`ringlock.statemachine.ShardStateMachine`: leases, locks, fenced writes), which the
lock workload runs. The linearizability workload keeps its own small map, so its
history checker stays as simple as it was; the lock workload runs the code the
server runs, so the simulator tests that code and not a model of it.

`apply` is deterministic: the same commands in the same order give the same
results and state on every replica. Reads do not go through the log; they are
served from this state after a ReadIndex round.
"""

from __future__ import annotations

from typing import Any

import msgpack

from ringlock.statemachine import ShardStateMachine


def encode_command(kind: str, key: Any, *args: Any) -> bytes:
    return msgpack.packb([kind, key, *args])  # type: ignore[no-any-return]


class KVStateMachine:
    __slots__ = ("applied_index", "data", "shard")

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.applied_index = 0
        self.shard = ShardStateMachine()
        """Leases, locks and fenced keys: the real state machine of one shard."""

    def apply(self, index: int, command: bytes) -> Any:
        """Apply one committed entry; an empty command is Raft's no-op."""
        self.applied_index = index
        if not command:
            return None
        kind, key, *args = msgpack.unpackb(command)
        if kind == "put":
            self.data[key] = args[0]
            return None
        if kind == "cas":
            expected, new = args
            if self.data.get(key) == expected:
                self.data[key] = new
                return True
            return False
        if kind == "shard":
            return self.shard.apply(index, key)
        raise ValueError(f"unknown command {kind!r}")

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def snapshot(self) -> bytes:
        return msgpack.packb(  # type: ignore[no-any-return]
            [SNAPSHOT_TAG, sorted(self.data.items()), self.shard.snapshot()])

    def restore(self, index: int, data: bytes) -> None:
        """Either layout: tagged (pairs and the shard), or bare pairs, which the placement
        simulator's meta adapter still writes (and reads back through here on boot)."""
        fields = msgpack.unpackb(data)
        if fields and fields[0] == SNAPSHOT_TAG:
            _, items, shard = fields
            self.shard = ShardStateMachine.restore(shard)
        else:
            items = fields
            self.shard = ShardStateMachine()
        self.data = {key: value for key, value in items}
        self.applied_index = index


SNAPSHOT_TAG = "kv+shard"
"""Marks a snapshot holding the shard state machine too (a bare one starts with a pair)."""
