"""How keys find their shard."""

from ringlock.sharding.keys import DEFAULT_SHARDS, MAX_SHARDS, shard_of
from ringlock.sharding.placement import PlacementError, plan_leaders, plan_placement

__all__ = ["DEFAULT_SHARDS", "MAX_SHARDS", "PlacementError", "plan_leaders", "plan_placement",
           "shard_of"]
