"""The fault schedule of `ringlock torture`, and how each fault is made and healed.

The schedule is drawn up front from `random.Random(seed)`: which fault, when, on which
node, for how long. Faults come one at a time, each kind once per round in a shuffled
order, so even a short run sees every kind asked for. (Which lock worker a pause also
stops depends on who holds a lock at that instant: that part is not seeded.)

  * kill: kill -9 of a node, restarted on the same data after a while.
  * pause: SIGSTOP of a node for longer than the lock lease TTL, then SIGCONT; a lock
    worker that holds a lock at that moment is stopped with it, so its next fenced
    write comes after its lease ran out (the cluster must refuse it once the lock went on).
  * partition: through the nodes' transport fault layer (server/faults.py): each side
    is told to drop the Raft traffic of the other. Namespaces/iptables are not used.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ringlock.devcluster import DevCluster
from ringlock.transport.rpc import RpcConnection

FAULT_KINDS = ("kill", "pause", "partition")
PARTITION_MECHANISM = ("transport fault layer: each node drops Raft messages to and from "
                       "the other side (RINGLOCK_FAULTS=1, loopback only; no netns/iptables)")
WARMUP_S = 2.0
FAULT_CALL_TIMEOUT_S = 2.0


@dataclass
class Fault:
    at: float
    """Seconds after the workload started."""
    kind: str
    nodes: list[int]
    """kill/pause: the node; partition: the side cut off from the rest."""
    duration: float
    applied_at: float | None = None
    healed_at: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"type": "fault", "kind": self.kind, "nodes": self.nodes, "at": self.at,
                "duration": round(self.duration, 3), "applied_at": self.applied_at,
                "healed_at": self.healed_at, **self.detail}


def schedule(seed: int, seconds: float, kinds: list[str], node_ids: list[int],
             lease_ttl_s: float) -> list[Fault]:
    """Faults for a run of `seconds`, one at a time, each over before the run ends."""
    rng = random.Random(f"{seed}/faults")
    faults: list[Fault] = []
    t = WARMUP_S
    order: list[str] = []
    while True:
        if not order:
            order = list(kinds)
            rng.shuffle(order)
        kind = order.pop()
        if kind == "kill":
            nodes, duration = [rng.choice(node_ids)], rng.uniform(1.0, 3.0)
        elif kind == "pause":
            nodes, duration = [rng.choice(node_ids)], lease_ttl_s * rng.uniform(1.5, 2.0)
        else:
            side = rng.randint(1, (len(node_ids) - 1) // 2)  # a minority: 1 of 3, 1-2 of 5
            nodes, duration = sorted(rng.sample(node_ids, side)), rng.uniform(2.0, 4.0)
        if t + duration > seconds:
            return faults
        faults.append(Fault(round(t, 3), kind, nodes, duration))
        t += duration + rng.uniform(1.0, 2.5)


class Injector:
    """Applies and heals faults on a DevCluster and the lock worker processes."""

    def __init__(self, cluster: DevCluster, workers: list[subprocess.Popen[bytes]],
                 worker_outputs: list[Path]) -> None:
        self.cluster = cluster
        self.workers = workers
        self.worker_outputs = worker_outputs
        self._stopped_workers: list[int] = []

    def apply(self, fault: Fault) -> None:
        if fault.kind == "kill":
            self.cluster.kill(fault.nodes[0])
        elif fault.kind == "pause":
            self.cluster.signal_node(fault.nodes[0], signal.SIGSTOP)
            holders = [i for i, out in enumerate(self.worker_outputs)
                       if Path(str(out) + ".holding").exists()
                       and self.workers[i].poll() is None]
            if holders:
                worker = holders[0]
                self.workers[worker].send_signal(signal.SIGSTOP)
                self._stopped_workers.append(worker)
                fault.detail["paused_lock_worker"] = worker
        else:
            rest = [n for n in self.cluster.nodes if n not in fault.nodes]
            answers = self._partition({**{n: rest for n in fault.nodes},
                                       **{n: fault.nodes for n in rest}})
            fault.detail["partition"] = PARTITION_MECHANISM
            fault.detail["fault_layer_answers"] = answers

    def heal(self, fault: Fault) -> None:
        if fault.kind == "kill":
            self.cluster.start_node(fault.nodes[0])
        elif fault.kind == "pause":
            self.cluster.signal_node(fault.nodes[0], signal.SIGCONT)
            self._resume_workers()
        else:
            answers = self._partition({n: [] for n in self.cluster.nodes})
            fault.detail["raft_messages_dropped"] = {
                n: a.get("dropped") for n, a in answers.items() if "error" not in a}

    def heal_all(self) -> None:
        """Whatever may still be broken: every node running, resumed and fully connected."""
        for node_id, node in self.cluster.nodes.items():
            if node.running:
                self.cluster.signal_node(node_id, signal.SIGCONT)
            else:
                self.cluster.start_node(node_id)
        self._resume_workers()
        deadline = time.monotonic() + 30.0
        while True:
            answers = self._partition({n: [] for n in self.cluster.nodes})
            if all("error" not in a for a in answers.values()) or time.monotonic() > deadline:
                return
            time.sleep(0.5)

    def _resume_workers(self) -> None:
        for worker in self._stopped_workers:
            if self.workers[worker].poll() is None:
                self.workers[worker].send_signal(signal.SIGCONT)
        self._stopped_workers.clear()

    def _partition(self, drops: dict[int, list[int]]) -> dict[int, Any]:
        """Tell each node whose Raft traffic to drop; its answer, or the error."""

        async def tell(node_id: int, peers: list[int]) -> Any:
            connection = RpcConnection(self.cluster.nodes[node_id].address)
            try:
                return await connection.call({"op": "fault", "drop_peers": peers},
                                             FAULT_CALL_TIMEOUT_S)
            except Exception as error:  # a node down or stopped: recorded, healed later
                return {"error": repr(error)}
            finally:
                await connection.close()

        async def tell_all() -> dict[int, Any]:
            ids = sorted(drops)
            answers = await asyncio.gather(*[tell(n, drops[n]) for n in ids])
            return dict(zip(ids, answers, strict=True))

        return asyncio.run(tell_all())
