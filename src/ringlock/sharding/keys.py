"""Keys onto shards: a fixed number S of shards, never `hash % nodes`.

A key's shard is `crc32(k) % S`, where `k` is the whole key, or only the part inside the
first `{...}` when that part is not empty (Redis Cluster's hash tags), so that
`{user:42}:name` and `{user:42}:cart` share a shard and can be used together. S is fixed
when the cluster is created; nodes come and go by moving whole shards, so adding a node
moves about 1/N of the data instead of nearly all of it.

The client and the server both call this function; changing it changes where every
key lives, so it is versioned with the cluster (see docs/SHARDING.md).
"""

from __future__ import annotations

import zlib

DEFAULT_SHARDS = 64
MAX_SHARDS = 4096
"""A cluster with more shards than this spends its time on heartbeats, not on work."""


def hash_part(key: bytes) -> bytes:
    """The bytes that decide the shard: the first non-empty `{tag}`, else the whole key."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def shard_of(key: bytes, shards: int) -> int:
    if not 1 <= shards <= MAX_SHARDS:
        raise ValueError(f"shards must be in 1..{MAX_SHARDS}, got {shards}")
    return zlib.crc32(hash_part(key)) % shards


def key_in_shard(shard: int, shards: int, prefix: str = "key") -> str:
    """A key (`prefix:N`, smallest N) that lands on `shard`: for tests, demos and
    benchmarks that must hit one shard on purpose."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard must be in 0..{shards - 1}, got {shard}")
    for n in range(1000 * shards):  # crc32 spreads evenly: found within a few * shards
        key = f"{prefix}:{n}"
        if shard_of(key.encode(), shards) == shard:
            return key
    raise ValueError(f"no key with prefix {prefix!r} found for shard {shard}")
