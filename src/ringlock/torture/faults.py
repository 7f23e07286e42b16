"""The fault schedule of `ringlock torture`, and how each fault is made and healed.

The schedule is drawn up front from `random.Random(seed)`: which fault, when, on which
node, for how long. Faults come one at a time, each kind once per round in a shuffled
order, so even a short run sees every kind asked for. (Which lock worker a pause also
stops depends on who holds a lock at that instant: that part is not seeded.)

  * kill: kill -9 of a node, restarted on the same data after a while.
  * pause: SIGSTOP of a node for longer than the lock lease TTL, then SIGCONT; a lock
    worker that holds a lock at that moment is stopped with it, so its next fenced
    write comes after its lease ran out (the cluster must refuse it once the lock went on).
  * partition: a minority cut from the rest, both ways.
  * oneway: one node's packets to every other node dropped; theirs to it still pass
    (it hears the leader and cannot answer; as leader it cannot be heard).
  * bridge: two sides that cannot reach each other, both reaching one bridge node
    (Jepsen's "bridge" nemesis).
  * slow_link: delay with jitter and loss on one node's link, or on every node's: tc
    netem in netns mode where the kernel has it; else the nodes' transport fault layer
    holds each Raft message for the delay (server/faults.py), with the loss made by
    iptables in netns mode and by the fault layer on loopback.
  * full_disk: a ballast file fills the node's small tmpfs data directory, then is
    deleted (netns mode only: mounting needs root). The node must not acknowledge what
    it could not persist; it exits on a failed WAL write and is restarted after.
  * corrupt_wal: kill -9, flip one byte inside an fsynced WAL record that has a valid
    record after it (not the torn tail), restart: the node must refuse to start,
    naming the file and offset. Healed as an operator would with a backup: the
    original bytes are put back and the node restarted (membership cannot yet replace
    a node on an empty data directory; RELIABILITY.md says why this is the choice).

Cuts go through a `Cuts` mechanism: iptables rules in network namespaces (netns.py), or
the nodes' transport fault layer (server/faults.py) on loopback.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ringlock.client.aio import secret_from_env
from ringlock.devcluster import DevCluster
from ringlock.storage import records
from ringlock.torture.netns import Disk, NetLab
from ringlock.transport.rpc import RpcConnection

FAULT_KINDS = ("kill", "pause", "partition", "oneway", "bridge", "slow_link", "full_disk",
               "corrupt_wal")
NETNS_ONLY_KINDS = ("full_disk",)
CUT_KINDS = ("partition", "oneway", "bridge")
TRANSPORT_MECHANISM = ("transport fault layer: nodes drop Raft messages to (and from) the "
                       "other side (RINGLOCK_FAULTS=1, loopback only; no netns/iptables)")
NETNS_MECHANISM = ("network namespaces: one per node on a bridge in its own namespace; "
                   "cuts are iptables DROP rules, slow links tc netem (without netem: "
                   "iptables loss and the transport fault layer's delay)")
WARMUP_S = 2.0
FAULT_CALL_TIMEOUT_S = 2.0
REFUSE_TO_START_TIMEOUT_S = 30.0
"""How long a node restarted on a corrupted WAL has to exit before the fault counts as
undetected (it replays the WAL first: a few seconds at most for a torture run's log)."""
POLL_S = 0.05


@dataclass
class Fault:
    at: float
    """Seconds after the workload started."""
    kind: str
    nodes: list[int]
    """kill/pause/full_disk/corrupt_wal/oneway: the node; partition: the side cut off from
    the rest; bridge: [bridge node, *left side] (the right side is the rest);
    slow_link: the degraded nodes."""
    duration: float
    applied_at: float | None = None
    healed_at: float | None = None
    applied_ns: int | None = None
    """time.monotonic_ns() when applied: the clock of the clients' history."""
    healed_ns: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"type": "fault", "kind": self.kind, "nodes": self.nodes, "at": self.at,
                "duration": round(self.duration, 3), "applied_at": self.applied_at,
                "healed_at": self.healed_at, "applied_ns": self.applied_ns,
                "healed_ns": self.healed_ns, **self.detail}


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
        nodes, duration, detail = _draw(rng, kind, node_ids, lease_ttl_s)
        if t + duration > seconds:
            return faults
        faults.append(Fault(round(t, 3), kind, nodes, duration, detail=detail))
        t += duration + rng.uniform(1.0, 2.5)


def _draw(rng: random.Random, kind: str, node_ids: list[int],
          lease_ttl_s: float) -> tuple[list[int], float, dict[str, Any]]:
    one = [rng.choice(node_ids)]
    if kind == "kill":
        return one, rng.uniform(1.0, 3.0), {}
    if kind == "pause":
        return one, lease_ttl_s * rng.uniform(1.5, 2.0), {}
    if kind == "partition":
        side = rng.randint(1, (len(node_ids) - 1) // 2)  # a minority: 1 of 3, 1-2 of 5
        return sorted(rng.sample(node_ids, side)), rng.uniform(2.0, 4.0), {}
    if kind == "oneway":
        return one, rng.uniform(2.0, 4.0), {}
    if kind == "bridge":
        shuffled = rng.sample(node_ids, len(node_ids))
        left = sorted(shuffled[1:1 + (len(node_ids) - 1) // 2])
        return [shuffled[0], *left], rng.uniform(2.0, 4.0), {}
    if kind == "slow_link":
        nodes = sorted(node_ids) if rng.random() < 0.3 else one
        delay = rng.randint(50, 200)
        return nodes, rng.uniform(3.0, 5.0), {"delay_ms": delay, "jitter_ms": delay // 4,
                                              "loss_pct": rng.randint(10, 30)}
    if kind == "full_disk":
        return one, rng.uniform(5.0, 8.0), {}
    if kind == "corrupt_wal":
        return one, rng.uniform(0.5, 1.5), {"pick": rng.random()}
    raise ValueError(f"unknown fault kind {kind!r}")


def cut_pairs(fault: Fault, node_ids: list[int]) -> set[tuple[int, int]]:
    """The (sender, receiver) pairs whose packets a cut fault drops."""
    others = [n for n in node_ids if n not in fault.nodes]
    if fault.kind == "partition":
        return ({(a, b) for a in fault.nodes for b in others}
                | {(b, a) for a in fault.nodes for b in others})
    if fault.kind == "oneway":
        return {(fault.nodes[0], b) for b in node_ids if b != fault.nodes[0]}
    if fault.kind == "bridge":
        left = fault.nodes[1:]
        right = [n for n in node_ids if n not in fault.nodes]
        return {(a, b) for a in left for b in right} | {(b, a) for a in left for b in right}
    raise ValueError(f"{fault.kind} is not a cut")


class Cuts(Protocol):
    mechanism: str

    def cut(self, pairs: set[tuple[int, int]]) -> dict[str, Any]: ...

    def heal(self) -> dict[str, Any]: ...


class IptablesCuts:
    """Cuts as iptables rules in the node namespaces (netns.py)."""

    mechanism = NETNS_MECHANISM

    def __init__(self, lab: NetLab) -> None:
        self.lab = lab

    def cut(self, pairs: set[tuple[int, int]]) -> dict[str, Any]:
        for sender, receiver in sorted(pairs):
            self.lab.cut(sender, receiver)
        return {"iptables_rules": len(pairs)}

    def heal(self) -> dict[str, Any]:
        self.lab.heal_links()
        return {}


class FaultLayerClient:
    """Orders to the nodes' transport fault layers (server/faults.py): each order
    replaces the node's whole fault state, so an empty order heals it."""

    def __init__(self, cluster: DevCluster) -> None:
        self.cluster = cluster

    def slow(self, nodes: list[int], delay_ms: int, jitter_ms: int,
             loss_pct: int) -> dict[str, Any]:
        """The links of `nodes` slow both ways: theirs to every peer, every peer's to them."""
        every = sorted(self.cluster.nodes)
        orders = {n: {"slow_peers": [p for p in every if p != n and (n in nodes or p in nodes)],
                      "delay_ms": delay_ms, "jitter_ms": jitter_ms, "loss_pct": loss_pct}
                  for n in every}
        return {"fault_layer_answers": self.tell(orders)}

    def clear(self) -> dict[int, Any]:
        return self.tell({n: {} for n in self.cluster.nodes})

    def tell(self, orders: dict[int, dict[str, Any]]) -> dict[int, Any]:
        """Give each node its order; its answer, or the error."""
        return ask_nodes(self.cluster, {n: {"op": "fault", **order}
                                        for n, order in orders.items()}, FAULT_CALL_TIMEOUT_S)


def ask_nodes(cluster: DevCluster, bodies: dict[int, dict[str, Any]],
              timeout: float) -> dict[int, Any]:
    """Send each node its request, all at once; per node its answer, or {"error": ...}
    (a node down or stopped: recorded, for the caller to heal or ask again)."""

    async def ask(node_id: int, body: dict[str, Any]) -> Any:
        connection = RpcConnection(cluster.nodes[node_id].address, secret=secret_from_env())
        try:
            return await connection.call(body, timeout)
        except Exception as error:
            return {"error": repr(error)}
        finally:
            await connection.close()

    async def ask_all() -> dict[int, Any]:
        ids = sorted(bodies)
        answers = await asyncio.gather(*[ask(n, bodies[n]) for n in ids])
        return dict(zip(ids, answers, strict=True))

    return asyncio.run(ask_all())


class TransportCuts:
    """Cuts through each node's transport fault layer (server/faults.py)."""

    mechanism = TRANSPORT_MECHANISM

    def __init__(self, cluster: DevCluster) -> None:
        self.cluster = cluster
        self.layer = FaultLayerClient(cluster)

    def cut(self, pairs: set[tuple[int, int]]) -> dict[str, Any]:
        orders: dict[int, dict[str, Any]] = {}
        for node in self.cluster.nodes:
            peers = self.cluster.nodes
            both = sorted(p for p in peers if (node, p) in pairs and (p, node) in pairs)
            out = sorted(p for p in peers if (node, p) in pairs and p not in both)
            orders[node] = {"drop_peers": both, "drop_outbound": out}
        return {"fault_layer_answers": self.layer.tell(orders)}

    def heal(self) -> dict[str, Any]:
        answers = self.layer.clear()
        return {"raft_messages_dropped": {n: a.get("dropped") for n, a in answers.items()
                                          if "error" not in a},
                "heal_errors": {n: a["error"] for n, a in answers.items() if "error" in a}}


class Injector:
    """Applies and heals faults on a DevCluster and the lock worker processes."""

    def __init__(self, cluster: DevCluster, workers: list[subprocess.Popen[bytes]],
                 worker_outputs: list[Path], cuts: Cuts, lab: NetLab | None = None,
                 disk: Disk | None = None) -> None:
        self.cluster = cluster
        self.layer = FaultLayerClient(cluster)
        self.workers = workers
        self.worker_outputs = worker_outputs
        self.cuts = cuts
        self.lab = lab
        self.disk = disk
        self._stopped_workers: list[int] = []
        self._corrupted: dict[int, tuple[Path, int, bytes]] = {}

    def apply(self, fault: Fault) -> None:
        node = fault.nodes[0]
        if fault.kind == "kill":
            self.cluster.kill(node)
        elif fault.kind == "pause":
            self._pause(fault)
        elif fault.kind in CUT_KINDS:
            fault.detail.update(self.cuts.cut(cut_pairs(fault, sorted(self.cluster.nodes))))
        elif fault.kind == "slow_link":
            self._slow(fault)
        elif fault.kind == "full_disk":
            if self.disk is None:
                raise ValueError("full_disk needs netns mode (a tmpfs per node)")
            fault.detail["ballast_bytes"] = self.disk.fill(self.cluster.nodes[node].store_dir)
        elif fault.kind == "corrupt_wal":
            self._corrupt(fault)

    def heal(self, fault: Fault) -> None:
        node = fault.nodes[0]
        if fault.kind == "kill":
            self.cluster.start_node(node)
        elif fault.kind == "pause":
            self.cluster.signal_node(node, signal.SIGCONT)
            self._resume_workers()
        elif fault.kind in CUT_KINDS:
            fault.detail.update(self.cuts.heal())
        elif fault.kind == "slow_link":
            fault.detail.update(self.cuts.heal())
            if self.lab is not None:  # the delay may have come from the fault layers
                self.layer.clear()
        elif fault.kind == "full_disk":
            assert self.disk is not None
            process = self.cluster.nodes[node].process
            self.disk.free(self.cluster.nodes[node].store_dir)
            code = process.poll() if process is not None else None
            fault.detail["node_exited"] = code
            if code is not None:
                fault.detail["node_said"] = _last_line(self.cluster.nodes[node].log_path,
                                                      "No space left")
                self.cluster.start_node(node)
        elif fault.kind == "corrupt_wal":
            self._restore(node)

    def heal_all(self) -> None:
        """Whatever may still be broken: every node running, resumed and fully connected."""
        for node_id in list(self._corrupted):
            self._restore(node_id)
        if self.disk is not None:
            for node in self.cluster.nodes.values():
                self.disk.free(node.store_dir)
        for node_id, node in self.cluster.nodes.items():
            if node.running:
                self.cluster.signal_node(node_id, signal.SIGCONT)
            else:
                self.cluster.start_node(node_id)
        self._resume_workers()
        deadline = time.monotonic() + 30.0
        while True:
            answer = self.cuts.heal()
            if self.lab is not None:
                answer.setdefault("heal_errors", {}).update(
                    {n: a["error"] for n, a in self.layer.clear().items() if "error" in a})
            if not answer.get("heal_errors") or time.monotonic() > deadline:
                return
            time.sleep(0.5)

    def _slow(self, fault: Fault) -> None:
        d = fault.detail
        loss = d["loss_pct"]
        if self.lab is not None:
            applied = [self.lab.degrade(n, d["delay_ms"], d["jitter_ms"], loss)
                       for n in fault.nodes]
            d["applied"] = applied[0]
            if self.lab.netem:
                return
            loss = 0  # iptables drops packets already; the fault layers add the delay
        answers = self.layer.slow(fault.nodes, d["delay_ms"], d["jitter_ms"], loss)
        d["applied"] = (d.get("applied", "") + "; " if d.get("applied") else "") + (
            f"transport fault layer: Raft messages held {d['delay_ms']}+-{d['jitter_ms']} ms"
            + (f", {loss}% lost" if loss else ""))
        d.update(answers)

    def _pause(self, fault: Fault) -> None:
        self.cluster.signal_node(fault.nodes[0], signal.SIGSTOP)
        holders = [i for i, out in enumerate(self.worker_outputs)
                   if Path(str(out) + ".holding").exists()
                   and self.workers[i].poll() is None]
        if holders:
            worker = holders[0]
            self.workers[worker].send_signal(signal.SIGSTOP)
            self._stopped_workers.append(worker)
            fault.detail["paused_lock_worker"] = worker

    def _resume_workers(self) -> None:
        for worker in self._stopped_workers:
            if self.workers[worker].poll() is None:
                self.workers[worker].send_signal(signal.SIGCONT)
        self._stopped_workers.clear()

    def _corrupt(self, fault: Fault) -> None:
        """kill -9, flip a byte in a record that has a valid record after it, restart, and
        see the node refuse to start."""
        node_id = fault.nodes[0]
        node = self.cluster.nodes[node_id]
        self.cluster.kill(node_id)
        target = pick_record(node.store_dir / "wal", fault.detail.pop("pick"))
        if target is None:
            fault.detail["skipped"] = "no WAL record with a valid record after it"
            self.cluster.start_node(node_id)
            return
        path, offset, flip_at = target
        with path.open("r+b") as f:
            f.seek(flip_at)
            original = f.read(1)
            f.seek(flip_at)
            f.write(bytes([original[0] ^ 0xFF]))
        self._corrupted[node_id] = (path, flip_at, original)
        fault.detail.update({"file": str(path), "record_offset": offset, "byte": flip_at})
        log_size = node.log_path.stat().st_size if node.log_path.exists() else 0
        self.cluster.start_node(node_id)
        process = node.process
        assert process is not None
        deadline = time.monotonic() + REFUSE_TO_START_TIMEOUT_S
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(POLL_S)
        code = process.poll()
        said = _last_line(node.log_path, "corrupt", since=log_size)
        fault.detail["exit_code"] = code
        fault.detail["node_said"] = said
        fault.detail["detected"] = code not in (None, 0) and said is not None \
            and str(path) in said and str(offset) in said
        if code is None:
            self.cluster.kill(node_id)  # it started on a corrupt log: stop it, flagged

    def _restore(self, node_id: int) -> None:
        """Put the original byte back (the operator's backup) and start the node."""
        saved = self._corrupted.pop(node_id, None)
        if saved is not None:
            if self.cluster.nodes[node_id].running:
                self.cluster.kill(node_id)
            path, at, original = saved
            with path.open("r+b") as f:
                f.seek(at)
                f.write(original)
        self.cluster.start_node(node_id)


def pick_record(wal_dir: Path, pick: float) -> tuple[Path, int, int] | None:
    """(segment, record offset, byte to flip) of a record with a valid record after it,
    in the newest segment that has two records or more; `pick` in [0, 1) chooses which."""
    for path in sorted(wal_dir.glob("*.wal"), reverse=True):
        valid, _ = records.scan(path.read_bytes())
        if len(valid) >= 2:
            record = valid[int(pick * (len(valid) - 1))]  # never the last
            return path, record.offset, record.offset + (record.end - record.offset) // 2
    return None


def _last_line(path: Path, needle: str, since: int = 0) -> str | None:
    """The last line of a node log that contains `needle` (after byte `since`)."""
    try:
        with path.open("rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    lines = [line for line in text.splitlines() if needle in line]
    return lines[-1][-600:] if lines else None
