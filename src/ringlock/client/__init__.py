"""Clients: `Client` (blocking) and `AsyncClient`."""

from ringlock.client.aio import AsyncClient, Lease, ShardMap
from ringlock.client.sync import Client, KeyValueMapping

__all__ = ["AsyncClient", "Client", "KeyValueMapping", "Lease", "ShardMap"]
