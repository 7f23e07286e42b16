"""Small value types, so that an index never passes for a count or a term.

They are `NewType`s: free at run time, checked by mypy.
"""

from __future__ import annotations

from typing import NewType

NodeId = NewType("NodeId", int)
"""A node of the cluster; 0 means "none" (no leader known, no vote cast)."""

GroupId = NewType("GroupId", int)
"""A Raft group: one per shard, plus the meta group."""

ShardId = NewType("ShardId", int)
Term = NewType("Term", int)
LogIndex = NewType("LogIndex", int)
FencingToken = NewType("FencingToken", int)

NO_NODE = NodeId(0)
