"""Test-only hooks for `ringlock torture`: a transport fault layer, and state digests.

Fault layer. Where network namespaces and iptables are not available (an unprivileged
CI runner), a partition is made inside the node: told `{"op": "fault", "drop_peers":
[ids]}`, the node drops every Raft message it would send to, or receives from, those
peers, as a cut link would. `"drop_outbound": [ids]` cuts one way only: the node drops
what it sends to those peers and still receives theirs (a one-way cut, as an iptables
rule dropping A's packets to B). Only Raft traffic is cut; client requests a node relays to
a leader (and membership reports) still pass, so a partitioned node's clients are
still served through the majority, as with a client that can reach both sides.

Told `{"op": "fault", "slow_peers": [ids], "delay_ms": D, "jitter_ms": J,
"loss_pct": L}`, the node holds each Raft message to those peers for D +- J ms (in
order, as a slow TCP link delivers) and drops L% of them: a delayed, lossy link, for
kernels without `tc netem` (torture's netns mode uses this there too).

The layer is off unless BOTH hold when the node starts: the environment variable
RINGLOCK_FAULTS is exactly "1", and the node listens on a loopback address
(127.0.0.0/8) or runs in a network namespace made by `ip netns add` (one a test
made: torture's netns mode). Otherwise the `fault` op does not exist (an unknown command), so a
production node cannot be partitioned by a request, by accident or on purpose. A node
that has it on says so in its log at start.

Digest. `{"op": "digest"}` answers, for every Raft group replica on the node,
[applied index, sha256 of its state machine's snapshot bytes]. It reads, changes
nothing, and is always available: two replicas of a group at the same applied index
must have the same digest (the state machine is deterministic), which is how torture
checks that the replicas converged after the faults healed. It snapshots every
replica on the event loop: cheap for torture's small shards, a stall on a node with
millions of keys, so it is a test and diagnostic op, not one to poll in production.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections.abc import Callable
from typing import Any

from ringlock.address import parse_address
from ringlock.errors import BadRequest
from ringlock.server.replica import Reply

log = logging.getLogger("ringlock.server")

FAULTS_ENV = "RINGLOCK_FAULTS"


MAX_LINK_DELAY_MS = 10_000
"""A slow link's delay plus jitter at most: longer is a partition, not a slow link."""


def faults_allowed(listen: str, environ: dict[str, str] | None = None) -> bool:
    """True only for a node started with RINGLOCK_FAULTS=1 that listens on loopback or
    runs inside a network namespace a test made."""
    env = os.environ if environ is None else environ
    if env.get(FAULTS_ENV) != "1":
        return False
    host, _ = parse_address(listen)
    return host.startswith("127.") or in_private_netns()


NAMED_NETNS_DIR = "/run/netns"


def in_private_netns() -> bool:
    """True in a network namespace made with `ip netns add` (one a test made, torture's
    netns mode): this process's namespace is one of those bound under /run/netns."""
    try:
        mine = os.stat("/proc/self/ns/net")
        with os.scandir(NAMED_NETNS_DIR) as entries:
            for entry in entries:
                named = os.stat(entry.path)
                if (named.st_dev, named.st_ino) == (mine.st_dev, mine.st_ino):
                    return True
    except OSError:
        return False
    return False


class FaultLayer:
    """The peers whose Raft traffic this node drops (empty: none, the normal case)."""

    def __init__(self, node_id: int, enabled: bool) -> None:
        self.node_id = node_id
        self.enabled = enabled
        self.drop_peers: frozenset[int] = frozenset()
        """Cut both ways: nothing sent to them, nothing received from them."""
        self.drop_outbound: frozenset[int] = frozenset()
        """Cut one way: nothing sent to them; theirs still received."""
        self.slow_peers: frozenset[int] = frozenset()
        """Raft traffic to them is delayed and lossy (`slow`)."""
        self.delay_ms = self.jitter_ms = self.loss_pct = 0
        self._rng = random.Random(node_id)
        self._release_at: dict[int, float] = {}
        """Per slow peer, when its last held message leaves: later ones never overtake."""
        self.active = False
        """Any fault at all: the hot path checks this one flag first."""
        self.dropped = 0
        self.delayed = 0
        if enabled:
            log.warning("node %d: FAULT INJECTION ENABLED (%s=1, loopback or a test's network "
                        "namespace): the `fault` op can cut or slow Raft traffic; never run "
                        "this way in production",
                        node_id, FAULTS_ENV)

    def blocks(self, peer: int, messages: int = 1) -> bool:
        """True when traffic from `peer` is cut; counts the messages dropped."""
        if peer in self.drop_peers:
            self.dropped += messages
            return True
        return False

    def blocks_send(self, peer: int) -> bool:
        """True when traffic to `peer` is cut (both ways, or outbound only)."""
        if peer in self.drop_peers or peer in self.drop_outbound:
            self.dropped += 1
            return True
        return False

    def hold(self, peer: int, now: float) -> float | None:
        """For a message to `peer` on a slow link: seconds to hold it (0: send now), or
        None to lose it."""
        if peer not in self.slow_peers:
            return 0.0
        if self._rng.random() * 100 < self.loss_pct:
            self.dropped += 1
            return None
        delay = (self.delay_ms + self._rng.uniform(-self.jitter_ms, self.jitter_ms)) / 1000
        release = max(now + max(0.0, delay), self._release_at.get(peer, 0.0))
        self._release_at[peer] = release
        self.delayed += 1
        return release - now

    def ops(self) -> dict[str, Callable[[dict[str, Any], Reply], None]]:
        """The `fault` op when enabled; nothing otherwise (the op is then unknown)."""
        return {"fault": self._op_fault} if self.enabled else {}

    def _op_fault(self, body: dict[str, Any], reply: Reply) -> None:
        peers = _node_ids(body, "drop_peers")
        outbound = _node_ids(body, "drop_outbound")
        slow = _node_ids(body, "slow_peers")
        delay_ms, jitter_ms = _bounded(body, "delay_ms", MAX_LINK_DELAY_MS), _bounded(
            body, "jitter_ms", MAX_LINK_DELAY_MS)
        loss_pct = _bounded(body, "loss_pct", 100)
        if delay_ms + jitter_ms > MAX_LINK_DELAY_MS:
            raise BadRequest(f"delay_ms + jitter_ms must be at most {MAX_LINK_DELAY_MS}")
        self.drop_peers = frozenset(p for p in peers if p != self.node_id)
        self.drop_outbound = frozenset(p for p in outbound if p != self.node_id)
        self.slow_peers = frozenset(p for p in slow if p != self.node_id)
        self.delay_ms, self.jitter_ms, self.loss_pct = delay_ms, jitter_ms, loss_pct
        self.active = bool(self.drop_peers or self.drop_outbound or self.slow_peers)
        log.warning("node %d: fault layer now drops Raft traffic with %s, and to %s; "
                    "slows it to %s (%d+-%d ms, %d%% lost)", self.node_id,
                    sorted(self.drop_peers) or "no one", sorted(self.drop_outbound) or "no one",
                    sorted(self.slow_peers) or "no one", delay_ms, jitter_ms, loss_pct)
        reply({"node": self.node_id, "drop_peers": sorted(self.drop_peers),
               "drop_outbound": sorted(self.drop_outbound),
               "slow_peers": sorted(self.slow_peers), "dropped": self.dropped,
               "delayed": self.delayed}, None)


def _node_ids(body: dict[str, Any], name: str) -> list[int]:
    peers = body.get(name, [])
    if not isinstance(peers, list) or not all(type(p) is int for p in peers):
        raise BadRequest(f"{name} must be a list of node ids")
    return peers


def _bounded(body: dict[str, Any], name: str, limit: int) -> int:
    value = body.get(name, 0)
    if type(value) is not int or not 0 <= value <= limit:
        raise BadRequest(f"{name} must be an integer in 0..{limit}")
    return value


def digest_replicas(replicas: dict[int, Any]) -> dict[int, list[Any]]:
    """group -> [applied index, sha256 hex of the snapshot bytes], for every replica."""
    digests: dict[int, list[Any]] = {}
    for group, replica in sorted(replicas.items()):
        sm = replica.sm
        data: bytes = sm.snapshot()
        digests[group] = [sm.applied_index, hashlib.sha256(data).hexdigest()]
    return digests
