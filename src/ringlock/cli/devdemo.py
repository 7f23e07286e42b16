"""The story `make run` tells on a real local cluster: writes, reads, a kill -9 of the
busiest leader while writing goes on, a check that nothing acknowledged was lost, and a
lock handed from one holder to the next with growing fencing tokens."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import click

from ringlock.devcluster import DevCluster
from ringlock.errors import FencedOut
from ringlock.sharding.keys import key_in_shard

DEMO_KEYS = 1000
BALANCE_WAIT_S = 20.0


def run_demo(cluster: DevCluster) -> None:
    say = click.echo
    with cluster.client(timeout=15) as client:
        say(f"\n1. writing {DEMO_KEYS} keys (user:0000 ...) through any node")
        started = time.monotonic()
        for n in range(DEMO_KEYS):
            client.put(f"user:{n:04d}", f"name-{n}")
        say(f"   done in {time.monotonic() - started:.2f} s; user:0042 = "
            f"{client.get('user:0042')!r}")
        say("   scan 'user:00' (first 3): " + ", ".join(
            f"{kv.key.decode()}={kv.value.decode()}" for kv in client.scan("user:00", limit=3)))

        leaders = cluster.wait_ready()
        victim, led = Counter(leaders.values()).most_common(1)[0]
        say(f"\n2. kill -9 node {victim} (pid {cluster.nodes[victim].pid}), leader of "
            f"{led} of {cluster.shards} shards, and keep writing")
        orphaned = min(shard for shard, node in leaders.items() if node == victim)
        probe = key_in_shard(orphaned, cluster.shards, "probe")
        cluster.kill(victim)
        started = time.monotonic()
        client.put(probe, "first write after the kill")
        say(f"   a write to shard {orphaned} (led by node "
            f"{victim} until now) was acknowledged {time.monotonic() - started:.2f} s "
            "after the kill: a new leader was elected")
        for n in range(DEMO_KEYS, 2 * DEMO_KEYS):
            client.put(f"user:{n:04d}", f"name-{n}")
        say(f"   {DEMO_KEYS} more keys written with node {victim} down")

        say("\n3. reading every acknowledged key back")
        lost = [n for n in range(2 * DEMO_KEYS)
                if client.get(f"user:{n:04d}") != f"name-{n}".encode()]
        say(f"   {2 * DEMO_KEYS - len(lost)} of {2 * DEMO_KEYS} keys read back; lost: {lost}")
        if lost:
            raise click.ClickException(f"acknowledged writes lost: {lost[:10]}")

        say(f"\n4. restarting node {victim}; it catches up from its log and its peers")
        cluster.start_node(victim)
        cluster.wait_ready()
        say(f"   shards led per node: {_spread(cluster)}; the nodes hand leaderships over "
            "until they are even ...")
        deadline = time.monotonic() + BALANCE_WAIT_S
        spread = _spread(cluster)
        while max(spread.values()) - min(spread.values()) > 1 and time.monotonic() < deadline:
            time.sleep(0.25)
            spread = _spread(cluster)
        say(f"   shards led per node: {spread}")

        say("\n5. a lock: two clients queue for 'jobs/report'; each holder writes with its "
            "fencing token")
        _lock_story(cluster, client)


def _lock_story(cluster: DevCluster, client: Any) -> None:
    say = click.echo
    with cluster.client(timeout=15) as other:
        first = client.lock("jobs/report", ttl=5)
        assert first.acquire()
        old_token = first.token
        client.put("jobs/report/owner", "first", fence=first)
        say(f"   client A holds it with token {old_token}")
        second = other.lock("jobs/report", ttl=5)
        waiting = threading.Thread(target=second.acquire)
        waiting.start()
        deadline = time.monotonic() + 10
        while not any(s.waiters for s in client.locks()) and time.monotonic() < deadline:
            time.sleep(0.02)
        first.release()
        started = time.monotonic()
        waiting.join(10)
        pushed_ms = 1000 * (time.monotonic() - started)
        say(f"   A released; B, queued, had its grant pushed {pushed_ms:.1f} ms after A's "
            f"release was acknowledged: token {second.token}")
        other.put("jobs/report/owner", "second", fence=second)
        try:
            client.put("jobs/report/owner", "stale", fence=("jobs/report", old_token))
            say("   A's write with its old token went through: THIS IS A BUG")
        except FencedOut:
            say(f"   A's late write with token {old_token} was refused: FencedOut")
        second.release()

def _spread(cluster: DevCluster) -> dict[int, int]:
    counts = Counter(cluster.wait_ready().values())
    return {node: counts.get(node, 0) for node in sorted(cluster.nodes)}
