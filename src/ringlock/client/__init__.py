"""Clients: `Client` (blocking) and `AsyncClient`."""

from ringlock.client.aio import AsyncClient, Lease, ShardMap
from ringlock.client.sync import Client, KeyValueMapping
from ringlock.client.watch import Watch, WatchEvent

__all__ = ["AsyncClient", "Client", "KeyValueMapping", "Lease", "ShardMap", "Watch",
           "WatchEvent"]
