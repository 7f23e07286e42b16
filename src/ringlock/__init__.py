"""ringlock: a sharded, replicated key-value store and lock service built on Raft.

The consensus core (`ringlock.raft`) and the cluster simulator (`ringlock.sim`)
are the foundation; the node, the client and the lock service are built on them.
"""

from ringlock.errors import InvariantViolation, RinglockError

__all__ = ["InvariantViolation", "RinglockError"]
__version__ = "0.1.0"
