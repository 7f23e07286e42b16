"""A shard state machine fed commands one index after another, for the state tests."""

from __future__ import annotations

from typing import Any

from ringlock.statemachine import ShardStateMachine
from ringlock.statemachine.kv import encode


class Shard:
    """A state machine fed commands at increasing indexes."""

    def __init__(self, machine: ShardStateMachine | None = None) -> None:
        self.machine = machine if machine is not None else ShardStateMachine()
        self.index = self.machine.applied_index

    def __call__(self, op: str, *args: Any, client: int = 0, seq: int = 0) -> Any:
        self.index += 1
        return self.machine.apply(self.index, encode(op, client, seq, *args))

    def restored(self) -> Shard:
        return Shard(ShardStateMachine.restore(self.machine.snapshot()))


def shard_with_leases(*leases: int) -> Shard:
    """A fresh shard holding these leases (10 s each)."""
    shard = Shard()
    for lease in leases:
        assert shard("lease_grant", lease, 10_000) == lease
    return shard
