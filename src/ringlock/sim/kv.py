"""The tiny replicated key-value state machine the simulator runs on every node.

Commands are msgpack arrays: ["put", key, value], ["cas", key, expected, new].
`apply` is deterministic: the same commands in the same order give the same
results and state on every replica. Reads do not go through the log; they are
served from this state after a ReadIndex round.
"""

from __future__ import annotations

from typing import Any

import msgpack


def encode_command(kind: str, key: str, *args: Any) -> bytes:
    return msgpack.packb([kind, key, *args])  # type: ignore[no-any-return]


class KVStateMachine:
    __slots__ = ("applied_index", "data")

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.applied_index = 0

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
        raise ValueError(f"unknown command {kind!r}")

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def snapshot(self) -> bytes:
        return msgpack.packb(sorted(self.data.items()))  # type: ignore[no-any-return]

    def restore(self, index: int, data: bytes) -> None:
        self.data = {key: value for key, value in msgpack.unpackb(data)}
        self.applied_index = index
