"""Graceful stop hands leadership over; leases expire without keepalives; a data
directory is never shared by two processes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter

from ringlock.devcluster import DevCluster


def test_sigterm_hands_leadership_over_before_the_node_exits(cluster: DevCluster) -> None:
    leaders = cluster.wait_ready()
    victim, led = Counter(leaders.values()).most_common(1)[0]
    assert led > 0
    process = cluster.nodes[victim].process
    assert process is not None
    cluster.signal_node(victim, signal.SIGTERM)
    assert process.wait(timeout=15) == 0
    stopped = time.monotonic()
    # Without a handover the survivors would wait out an election timeout (1-2 s).
    after = cluster.wait_ready(timeout=10)
    assert victim not in after.values()
    assert time.monotonic() - stopped < 1.0, "shards stayed leaderless after a graceful stop"
    log = (cluster.nodes[victim].data_dir / "node.log").read_text()
    assert "leadership transfer did not finish" not in log


def test_a_lease_without_keepalives_expires_and_takes_its_keys(cluster: DevCluster) -> None:
    with cluster.client(timeout=20) as client:
        lease = client.grant_lease(1.0, near="{session}")
        kept = client.grant_lease(1.0, near="{session}")
        client.put("{session}:mine", "held", lease=lease)
        client.put("{session}:kept", "held", lease=kept)
        deadline = time.monotonic() + 15
        while client.get("{session}:mine") is not None and time.monotonic() < deadline:
            client.keepalive(kept)
            time.sleep(0.2)
        assert client.get("{session}:mine") is None, "lease never expired"
        assert client.get("{session}:kept") == b"held", "a lease kept alive expired"
        assert client.revoke(kept) == 1
        assert client.get("{session}:kept") is None


def test_a_second_node_on_the_same_data_directory_refuses_to_start(
    cluster: DevCluster,
) -> None:
    node = cluster.nodes[1]
    result = subprocess.run(
        [sys.executable, "-m", "ringlock", "serve", "--id", "1", "--listen", "127.0.0.1:1",
         "--data", str(node.data_dir)], capture_output=True, timeout=30, text=True)
    assert result.returncode == 2
    assert "in use by another ringlock process" in result.stderr


def test_leaders_spread_out_again_after_a_failover_and_restart(cluster: DevCluster) -> None:
    leaders = cluster.wait_ready()
    victim, _ = Counter(leaders.values()).most_common(1)[0]
    cluster.kill(victim)
    assert victim not in cluster.wait_ready().values()  # the others took its shards
    cluster.start_node(victim)
    deadline = time.monotonic() + 30
    spread: Counter[int] = Counter()
    while time.monotonic() < deadline:
        current = cluster.wait_ready()
        spread = Counter(current.values())
        spread.update(dict.fromkeys(cluster.nodes, 0))  # a node leading nothing counts too
        if max(spread.values()) - min(spread.values()) <= 1:
            break
        time.sleep(0.2)
    assert max(spread.values()) - min(spread.values()) <= 1, dict(spread)
    assert spread[victim] >= 1
