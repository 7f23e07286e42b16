"""Raft consensus as a plain object (sans-I/O).

No networking, timing or storage code lives here: a driver (the node's event
loop, or the simulator) feeds messages and ticks in and carries `Ready` batches
out. See `ringlock.raft.core` for the contract.

The core's modules may run compiled by mypyc (setup.py); `BUILD` says which this
process runs, chosen by `ringlock.raft._native` before any of them is imported.
"""

from ringlock.raft._native import BUILD  # first: it chooses the build
from ringlock.raft.config import RaftConfig
from ringlock.raft.core import Raft
from ringlock.raft.messages import (
    Configuration,
    Entry,
    EntryKind,
    HardState,
    Message,
    MessageType,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
)

__all__ = [
    "BUILD",
    "Configuration",
    "Entry",
    "EntryKind",
    "HardState",
    "Message",
    "MessageType",
    "Raft",
    "RaftConfig",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "SnapshotMeta",
    "SoftState",
]
