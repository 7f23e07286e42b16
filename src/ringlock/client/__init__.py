"""Clients: `Client` (blocking) and `AsyncClient`."""

from ringlock.client.aio import AsyncClient, Lease, ShardMap
from ringlock.client.locks import AsyncLock, LockState
from ringlock.client.sync import Client, KeyValueMapping, Lock
from ringlock.client.watch import Watch, WatchEvent

__all__ = ["AsyncClient", "AsyncLock", "Client", "KeyValueMapping", "Lease", "Lock",
           "LockState", "ShardMap", "Watch", "WatchEvent"]
