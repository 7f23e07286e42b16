"""`ringlock torture`: real node processes, recording clients, seeded faults, then checks.

One run:
  1. choose the network (`--net`): `netns` (root, `ip netns` and iptables work; the
     default `auto` takes it when it can) puts every node in its own network namespace
     and this process's clients in a client namespace (torture/netns.py), each node's
     data directory on a small tmpfs, and sets a random RINGLOCK_SECRET for nodes and
     clients; `transport` runs the nodes on loopback with the transport fault layer on
     (RINGLOCK_FAULTS=1). The verdict says which (`network`, `partition_mechanism`);
     fault kinds a mode cannot make are listed as skipped, with why;
     start a DevCluster of N nodes in OUT/cluster;
  2. start the clients: KV register clients and ack writers (a thread of this process),
     lock workers (processes, so that a pause can stop one holding a lock);
  3. inject the seeded faults one at a time, each healed before the next;
  4. stop the clients, heal everything, wait until every group has a leader and every
     replica of every group reports the same applied index;
  5. check (torture/checks.py), measure how long each fault stalled writes and lock
     grants (torture/availability.py), and write OUT/history.jsonl and OUT/verdict.json;
     the node logs are OUT/cluster/node-N/node.log.
Teardown (nodes and workers stopped by PID, tmpfs unmounted, namespaces deleted) runs
in a `finally`, so a failure or Ctrl-C leaves nothing behind.
The verdict's last line is `torture: PASS ...` or `torture: FAIL <reason>`.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ringlock.checker import LockHold, Op
from ringlock.devcluster import DevCluster, free_base_port
from ringlock.server.faults import FAULTS_ENV
from ringlock.sharding.keys import shard_of
from ringlock.torture.availability import Success, windows_by_kind
from ringlock.torture.checks import (
    Check,
    FencedWrite,
    check_kv,
    check_locks,
    check_stored,
    compare_digests,
)
from ringlock.torture.faults import (
    FAULT_KINDS,
    NETNS_ONLY_KINDS,
    Cuts,
    Fault,
    Injector,
    IptablesCuts,
    TransportCuts,
    ask_nodes,
    schedule,
)
from ringlock.torture.lockworker import fenced_key
from ringlock.torture.netns import Disk, NetLab, netns_usable
from ringlock.torture.workload import (
    ACK_PREFIX,
    KvWorkload,
    read_registers,
    scan_prefix,
)

SHARDS = 8
LOCK_TTL_S = 2.0
LOCKS = ("torture-lock-0", "torture-lock-1")
LOCK_WORKERS = 3
CONVERGE_TIMEOUT_S = 60.0
NET_MODES = ("auto", "netns", "transport")
DISK_MIB = 256
"""Each node's tmpfs data directory in netns mode: room for a 30-minute run's WAL and
snapshots; the full-disk fault fills what is left."""
COMPACT_EVERY = 300
"""Entries between a replica's snapshots (the node default is 4,096): snapshots, their
files and InstallSnapshot happen often under the faults, and a full disk is met by a
snapshot write within seconds, not only when the WAL's 1 MiB preallocation runs out."""
SECRET_ENV = "RINGLOCK_SECRET"
"""The cluster secret nodes on non-loopback addresses require (read by `ringlock serve`
and by clients); netns mode sets a random one for the run."""


@dataclass
class Options:
    nodes: int = 3
    seconds: float = 30.0
    faults: list[str] = field(default_factory=lambda: list(FAULT_KINDS))
    seed: int = 1
    out: Path = Path("torture-out")
    net: str = "auto"


def choose_network(asked: str) -> tuple[str, str]:
    """("netns" | "transport", why), for `--net auto|netns|transport`."""
    if asked not in NET_MODES:
        raise ValueError(f"--net must be one of {NET_MODES}, got {asked!r}")
    if asked == "transport":
        return "transport", "asked for (--net transport)"
    usable, why = netns_usable()
    if asked == "netns" and not usable:
        raise RuntimeError(f"--net netns is not possible here: {why}")
    return ("netns", why) if usable else ("transport", f"no network namespaces: {why}")


@dataclass
class Outcome:
    passed: bool
    line: str
    verdict: dict[str, Any]


def run(options: Options, log: Any = print) -> Outcome:
    """One torture run; raises only on a failure of the harness itself."""
    out = options.out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("history.jsonl", "verdict.json"):
        (out / stale).unlink(missing_ok=True)
    shutil.rmtree(out / "cluster", ignore_errors=True)  # a new cluster each run
    network, why = choose_network(options.net)
    skipped = {k: "needs --net netns (root)" for k in options.faults
               if network == "transport" and k in NETNS_ONLY_KINDS}
    kinds = [k for k in options.faults if k not in skipped]
    log(f"torture: network {network} ({why})"
        + (f"; skipped fault kinds: {', '.join(skipped)} (need netns)" if skipped else ""))
    node_ids = list(range(1, options.nodes + 1))
    lab = NetLab(node_ids) if network == "netns" else None
    disk = Disk(DISK_MIB) if network == "netns" else None
    saved_secret = os.environ.get(SECRET_ENV)
    workers: list[subprocess.Popen[bytes]] = []
    cluster: DevCluster | None = None
    started = time.monotonic()
    try:
        cluster, cuts = _make_cluster(options, out, lab, disk)
        log(f"torture: starting {options.nodes} nodes in {cluster.data_dir}")
        cluster.start()
        faults = schedule(options.seed, options.seconds, kinds, sorted(cluster.nodes),
                          LOCK_TTL_S)
        kv = KvWorkload(cluster.addresses, seed=options.seed)
        stop_file = out / "workers.stop"
        stop_file.unlink(missing_ok=True)
        worker_outputs = [out / f"lockworker-{i}.jsonl" for i in range(LOCK_WORKERS)]
        for path in worker_outputs:
            path.unlink(missing_ok=True)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        workers = [subprocess.Popen(
            [sys.executable, "-m", "ringlock.torture.lockworker", cluster.cluster, str(i),
             str(path), ",".join(LOCKS), str(LOCK_TTL_S), str(options.seed * 1000 + i),
             str(stop_file)], env=env, stdin=subprocess.DEVNULL,
            stdout=(out / f"lockworker-{i}.log").open("ab"), stderr=subprocess.STDOUT)
            for i, path in enumerate(worker_outputs)]
        kv.start()
        injector = Injector(cluster, workers, worker_outputs, cuts, lab, disk)
        _run_schedule(injector, faults, options.seconds, log)
        log("torture: stopping clients, healing")
        stop_file.touch()
        for worker in workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(10)
        record = kv.stop()
        injector.heal_all()
        cluster.wait_ready(CONVERGE_TIMEOUT_S)
        load_s = time.monotonic() - started
        log("torture: converging")
        digests, converge_note = _converge(cluster)
        final_reads = asyncio.run(read_registers(cluster.addresses, kv.keys))
        acked_store = asyncio.run(scan_prefix(cluster.addresses, ACK_PREFIX))
        fenced_store: dict[str, tuple[str, int]] = {}
        for lock in LOCKS:
            fenced_store.update(asyncio.run(scan_prefix(cluster.addresses, f"{{{lock}}}/f/")))
        holds, writes, lock_errors = _read_workers(worker_outputs)
        history = record.history + final_reads
        _write_history(out / "history.jsonl", history, holds, writes, faults, record.acked,
                       record.unknown_writes)
        log("torture: checking")
        checks = [
            check_kv(history),
            check_locks(holds, writes, fenced_store, fenced_key),
            check_stored(record.acked, record.unknown_writes, set(), acked_store),
            _fenced_stored(writes, fenced_store),
            digests,
            _faults_seen(faults),
        ]
        unavailability = _unavailability(faults, history, record.ack_times, holds)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(10)
        if cluster is not None:
            cluster.stop()
        _teardown(lab, disk, saved_secret, log)
    facts = {"network": network, "network_why": why, "skipped": skipped,
             "partition_mechanism": cuts.mechanism, "unavailability_s": unavailability}
    outcome = _verdict(options, kinds, out, checks, faults, history, holds, lock_errors,
                       load_s, converge_note, cluster, facts)
    log(unavailability_text(unavailability))
    return outcome


def unavailability_text(unavailability: dict[str, Any]) -> str:
    """`torture: unavailability p50/p99 s: writes kill 0.4/1.9, ...; lock grants ...`."""
    parts = []
    for what, by_kind in unavailability.items():
        cells = [f"{kind} {row['p50_s']}/{row['p99_s']}" for kind, row in by_kind.items()]
        parts.append(f"{what.replace('_', ' ')} " + ", ".join(cells))
    return "torture: unavailability p50/p99 s: " + "; ".join(parts)


def _make_cluster(options: Options, out: Path, lab: NetLab | None,
                  disk: Disk | None) -> tuple[DevCluster, Cuts]:
    """The cluster, in its namespaces (each made here) or on loopback, and its cuts."""
    name = f"torture-{options.seed}"
    if lab is None or disk is None:
        cluster = DevCluster(out / "cluster", nodes=options.nodes,
                             base_port=free_base_port(options.nodes), shards=SHARDS,
                             name=name, env={FAULTS_ENV: "1"},
                             extra_args=("--compact-every", str(COMPACT_EVERY)))
        return cluster, TransportCuts(cluster)
    lab.create()
    for node_id in lab.node_ids:
        disk.mount(out / "cluster" / f"node-{node_id}" / "data")
    secret = secrets.token_hex(16)
    os.environ[SECRET_ENV] = secret  # the clients of this process and the lock workers
    cluster = DevCluster(out / "cluster", nodes=options.nodes, shards=SHARDS, name=name,
                         secret=secret, env={FAULTS_ENV: "1"},  # the fault layer: slow links
                         node_addresses={i: lab.address(i) for i in lab.node_ids},
                         launcher=lab.launcher, store_subdir="data",
                         extra_args=("--compact-every", str(COMPACT_EVERY)))
    lab.enter_client()
    return cluster, IptablesCuts(lab)


def _teardown(lab: NetLab | None, disk: Disk | None, saved_secret: str | None,
              log: Any) -> None:
    """Unmount, delete the namespaces, restore the environment; say what failed."""
    problems: list[str] = []
    if lab is not None:
        lab.leave_client()
    if disk is not None:
        problems += disk.unmount_all()
    if lab is not None:
        problems += lab.teardown()
        if saved_secret is None:
            os.environ.pop(SECRET_ENV, None)
        else:
            os.environ[SECRET_ENV] = saved_secret
    if problems:
        log(f"torture: teardown problems: {problems}")


def _faults_seen(faults: list[Fault]) -> Check:
    """Faults the nodes had to notice did get noticed: a corrupted WAL record refused at
    start with its file and offset; a node that exited on a full disk said why."""
    problems = []
    corrupt = [f for f in faults if f.kind == "corrupt_wal" and "skipped" not in f.detail]
    for f in corrupt:
        if not f.detail.get("detected"):
            problems.append(f"node {f.nodes[0]} started on a corrupted WAL record "
                            f"({f.detail.get('file')} at {f.detail.get('record_offset')}; "
                            f"exit {f.detail.get('exit_code')}, said {f.detail.get('node_said')})")
    full = [f for f in faults if f.kind == "full_disk"]
    for f in full:
        if f.detail.get("node_exited") is not None and not f.detail.get("node_said"):
            problems.append(f"node {f.nodes[0]} exited ({f.detail['node_exited']}) on a full "
                            "disk without saying 'No space left'")
    exited = sum(f.detail.get("node_exited") is not None for f in full)
    message = "; ".join(problems) if problems else (
        f"{len(corrupt)} corrupted WAL records refused at start with file and offset; "
        f"{exited} of {len(full)} full disks stopped their node with a disk-full error")
    return Check("faults_detected", not problems, message, len(corrupt) + len(full), 0.0,
                 {"corrupt_wal_detected": len(corrupt) - len(problems),
                  "full_disk_node_exited": exited})


def _unavailability(faults: list[Fault], history: list[Op],
                    ack_times: list[tuple[str, int, int]],
                    holds: list[LockHold]) -> dict[str, Any]:
    """Per fault kind, p50/p99 of how long writes (per shard) and lock grants stalled."""
    writes = [Success(f"shard {shard_of(op.key.encode(), SHARDS)}", op.call, op.ret)
              for op in history if op.kind != "get" and op.ret is not None]
    writes += [Success(f"shard {shard_of(key.encode(), SHARDS)}", call, ret)
               for key, call, ret in ack_times]
    grants = [Success(h.lock, h.acquired, h.acquired) for h in holds]
    return {"writes": windows_by_kind(faults, writes, lambda f: f.applied_ns),
            "lock_grants": windows_by_kind(faults, grants, lambda f: f.applied_ns)}


def _run_schedule(injector: Injector, faults: list[Fault], seconds: float, log: Any) -> None:
    began = time.monotonic()
    for fault in faults:
        _sleep_until(began + fault.at)
        fault.applied_at = round(time.monotonic() - began, 3)
        fault.applied_ns = time.monotonic_ns()
        injector.apply(fault)
        log(f"torture: t={fault.applied_at:.1f}s {fault.kind} {fault.nodes} "
            f"for {fault.duration:.1f}s {fault.detail.get('paused_lock_worker', '')}")
        _sleep_until(began + fault.applied_at + fault.duration)
        injector.heal(fault)
        fault.healed_at = round(time.monotonic() - began, 3)
        fault.healed_ns = time.monotonic_ns()
    _sleep_until(began + seconds)


def _sleep_until(deadline: float) -> None:
    time.sleep(max(0.0, deadline - time.monotonic()))


def _converge(cluster: DevCluster) -> tuple[Check, str]:
    """Ask every node for its replicas' digests until every group's replicas are at one
    applied index (then compared), or the deadline passes."""
    started = time.monotonic()
    deadline = started + CONVERGE_TIMEOUT_S
    verified: dict[int, int] = {}
    groups: set[int] = set()
    diverged: list[str] = []
    attempts = 0
    while time.monotonic() < deadline:
        attempts += 1
        reports = _digests(cluster)
        groups |= {g for r in reports.values() for g in r}
        agreed, diverged = compare_digests(reports)
        if diverged:
            break
        verified.update({g: n for g, n in agreed.items() if n >= min(3, len(cluster.nodes))})
        if groups and groups <= set(verified):
            break
        time.sleep(0.2)
    missing = sorted(groups - set(verified))
    seconds = time.monotonic() - started
    ok = not diverged and not missing
    if diverged:
        message = "replicas differ at the same applied index: " + "; ".join(diverged[:3])
    elif missing:
        message = f"groups not converged in {CONVERGE_TIMEOUT_S:.0f} s: {missing}"
    else:
        message = (f"all {len(groups)} groups: every replica at one applied index with one "
                   f"digest ({sum(verified.values())} replicas compared)")
    check = Check("replicas_identical", ok, message, sum(verified.values()), seconds,
                  {"groups": len(groups), "attempts": attempts})
    return check, f"converged in {seconds:.1f} s"


def _digests(cluster: DevCluster) -> dict[int, dict[int, list[Any]]]:
    """node -> group -> [applied index, digest], from the nodes that answered."""
    answers = ask_nodes(cluster, {n: {"op": "digest"} for n in cluster.nodes}, 5.0)
    return {n: {int(g): v for g, v in a["groups"].items()}
            for n, a in answers.items() if "error" not in a}


def _fenced_stored(writes: list[FencedWrite], stored: dict[str, tuple[str, int]]) -> Check:
    """The fenced writes' keys: acknowledged ones there, refused ones absent."""
    acked = {fenced_key(w.lock, w.token, w.write): f"{w.client}:{w.token}:{w.write}"
             for w in writes if w.outcome == "ok"}
    unknown = {fenced_key(w.lock, w.token, w.write): f"{w.client}:{w.token}:{w.write}"
               for w in writes if w.outcome == "unknown"}
    refused = {fenced_key(w.lock, w.token, w.write) for w in writes if w.outcome == "fenced"}
    check = check_stored(acked, unknown, refused, stored)
    check.name = "fenced_writes_stored"
    return check


def _read_workers(paths: list[Path]) -> tuple[list[LockHold], list[FencedWrite], list[str]]:
    holds: list[LockHold] = []
    writes: list[FencedWrite] = []
    errors: list[str] = []
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            if not line.endswith("}"):
                continue  # a line cut by a kill
            r = json.loads(line)
            if r["type"] == "hold":
                holds.append(LockHold(r["lock"], r["client"], r["token"], r["acquired"],
                                      r["released"]))
            elif r["type"] == "fenced_write":
                writes.append(FencedWrite(r["client"], r["lock"], r["token"], r["write"],
                                          r["call"], r["ret"], r["outcome"]))
            else:
                errors.append(r.get("error", line))
    return holds, writes, errors


def _write_history(path: Path, history: list[Op], holds: list[LockHold],
                   writes: list[FencedWrite], faults: list[Fault], acked: dict[str, str],
                   unknown: dict[str, str]) -> None:
    with path.open("w") as f:
        for fault in faults:
            f.write(json.dumps(fault.to_json()) + "\n")
        for op in history:
            f.write(json.dumps({"type": "kv", "client": op.client, "key": op.key,
                                "kind": op.kind, "arg": op.arg, "result": op.result,
                                "call": op.call, "ret": op.ret,
                                "outcome": "unknown" if op.ret is None else "ok"}) + "\n")
        for hold in holds:
            f.write(json.dumps({"type": "hold", "lock": hold.lock, "holder": hold.holder,
                                "token": hold.token, "acquired": hold.acquired,
                                "released": hold.released}) + "\n")
        for w in writes:
            f.write(json.dumps({"type": "fenced_write", **w.__dict__}) + "\n")
        for key, value in acked.items():
            f.write(json.dumps({"type": "ack_write", "key": key, "value": value,
                                "outcome": "ok"}) + "\n")
        for key, value in unknown.items():
            f.write(json.dumps({"type": "ack_write", "key": key, "value": value,
                                "outcome": "unknown"}) + "\n")


def _verdict(options: Options, kinds: list[str], out: Path, checks: list[Check],
             faults: list[Fault], history: list[Op], holds: list[LockHold],
             lock_errors: list[str], load_s: float, converge_note: str, cluster: DevCluster,
             facts: dict[str, Any]) -> Outcome:
    counts = {kind: sum(f.kind == kind for f in faults) for kind in kinds}
    failed = [c for c in checks if not c.ok]
    enough = [f"no {kind} fault fit in {options.seconds:g} s" for kind in kinds
              if counts[kind] == 0]
    if not holds:
        enough.append("no lock was ever held")
    checker_s = sum(c.seconds for c in checks if c.name != "replicas_identical")
    passed = not failed and not enough
    reason = "; ".join([f"{c.name}: {c.message}" for c in failed] + enough)
    fault_text = ",".join(f"{k}:{v}" for k, v in counts.items())
    summary = (f"net={facts['network']} nodes={options.nodes} seed={options.seed} "
               f"seconds={options.seconds:g} "
               f"ops={len(history)} holds={len(holds)} faults={fault_text} "
               f"violations={len(failed)} checker={checker_s:.2f}s out={out}")
    line = f"torture: PASS {summary}" if passed else f"torture: FAIL {reason} ({summary})"
    verdict = {
        "verdict": "PASS" if passed else "FAIL", "reason": reason or None,
        "nodes": options.nodes, "seconds": options.seconds, "seed": options.seed,
        "faults_asked": options.faults, "faults": counts, **facts,
        "ops_checked": len(history), "ops_unknown": sum(op.ret is None for op in history),
        "lock_holds": len(holds), "lock_errors": lock_errors[:20],
        "violations": len(failed), "checker_s": round(checker_s, 3),
        "load_and_heal_s": round(load_s, 1), "convergence": converge_note,
        "checks": {c.name: c.to_json() for c in checks},
        "history": str(out / "history.jsonl"),
        "node_logs": [str(n.log_path) for _, n in sorted(cluster.nodes.items())],
        "last_line": line,
    }
    (out / "verdict.json").write_text(json.dumps(verdict, indent=2) + "\n")
    return Outcome(passed, line, verdict)
