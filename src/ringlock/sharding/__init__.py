"""How keys find their shard."""

from ringlock.sharding.keys import DEFAULT_SHARDS, MAX_SHARDS, shard_of

__all__ = ["DEFAULT_SHARDS", "MAX_SHARDS", "shard_of"]
