"""Keys onto shards: stable, tag-aware, and never `hash % nodes`."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringlock.sharding.keys import hash_part, shard_of


def test_shard_of_is_pinned_so_a_change_that_would_move_every_key_is_caught() -> None:
    # The function is part of the on-disk format: these values must never change.
    assert [shard_of(k, 64) for k in (b"a", b"user:1", b"{user:1}:cart", b"")] == [
        shard_of(b"a", 64), shard_of(b"user:1", 64), shard_of(b"user:1", 64), 0]
    assert shard_of(b"a", 64) == 0xE8B7BE43 % 64  # crc32(b"a")


def test_keys_with_the_same_hash_tag_share_a_shard() -> None:
    assert shard_of(b"{user:42}:name", 64) == shard_of(b"{user:42}:cart", 64)
    assert hash_part(b"x{tag}y{other}") == b"tag"


def test_empty_or_unclosed_tag_hashes_the_whole_key() -> None:
    assert hash_part(b"a{}b") == b"a{}b"
    assert hash_part(b"a{b") == b"a{b"


@given(st.binary(max_size=64), st.integers(1, 4096))
def test_every_key_lands_on_an_existing_shard(key: bytes, shards: int) -> None:
    assert 0 <= shard_of(key, shards) < shards


def test_shard_count_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="shards must be"):
        shard_of(b"a", 0)


def test_keys_spread_evenly_over_shards() -> None:
    counts = [0] * 64
    for n in range(64_000):
        counts[shard_of(f"key-{n}".encode(), 64)] += 1
    assert max(counts) < 1.2 * 1000 and min(counts) > 0.8 * 1000


def test_key_in_shard_lands_on_the_shard_asked_for() -> None:
    from ringlock.sharding.keys import key_in_shard

    for shard in range(64):
        assert shard_of(key_in_shard(shard, 64, "probe").encode(), 64) == shard
    with pytest.raises(ValueError, match="shard must be in"):
        key_in_shard(64, 64)
