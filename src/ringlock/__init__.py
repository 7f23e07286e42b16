"""ringlock: a sharded, replicated key-value store and lock service built on Raft.

    from ringlock import Client
    with Client() as client:          # $RINGLOCK_CLUSTER, else the `ringlock dev` cluster
        client.put("greeting", "hello")
        client.get("greeting")        # b"hello"

The clients are imported lazily, so that `import ringlock.raft` stays free of I/O.
"""

from typing import Any

from ringlock.errors import (
    BadRequest,
    FencedOut,
    InvariantViolation,
    LockWaitAborted,
    NotFound,
    NotHolder,
    NotLeader,
    RequestError,
    RequestTimeout,
    RinglockError,
    TooLarge,
    Unavailable,
    WrongShard,
)

__all__ = [
    "AsyncClient", "AsyncLock", "BadRequest", "Client", "DistributedHashTable",
    "DistributedLock", "FencedOut", "InvariantViolation", "Lock", "LockLimitExceeded",
    "LockWaitAborted", "NotFound", "NotHolder", "NotLeader", "RequestError",
    "RequestTimeout", "RinglockError", "TooLarge", "Unavailable", "WrongShard",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in ("Client", "AsyncClient", "Lock", "AsyncLock"):
        from ringlock import client

        return getattr(client, name)
    if name in ("DistributedLock", "DistributedHashTable"):
        from ringlock import article

        return getattr(article, name)
    raise AttributeError(f"module 'ringlock' has no attribute {name!r}")
