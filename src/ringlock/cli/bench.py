"""`ringlock bench`: W1 put, W2 linearizable get, W3 50/50 mix, L1 uncontended lock
pairs, L2 contended lock cycles (with handoff latency), on a cluster it starts (or one
named with --cluster), with a progress bar and a final table."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from ringlock import eventloop
from ringlock.benchmark import kv
from ringlock.benchmark.locks import run_lock_workload
from ringlock.benchmark.rebalance import rebalance_bench
from ringlock.client.sync import Client
from ringlock.devcluster import DevCluster, free_base_port
from ringlock.errors import ConfigError
from ringlock.raft import BUILD as RAFT_BUILD


@click.command()
@click.option("--cluster", default=None, help="host:port,... of a running cluster "
              "(default: start a fresh 3-node cluster in a temporary directory).")
@click.option("--workloads", default="W1,W2,W3", show_default=True,
              help="W1 put, W2 get, W3 mix, L1 uncontended lock pairs over 1,000 names, "
                   "L2 contended cycles on one lock (--contenders clients).")
@click.option("--contenders", type=click.IntRange(2, 1000), default=16, show_default=True,
              help="L2: clients contending for the one lock.")
@click.option("--seconds", type=click.FloatRange(0.5, 3600), default=10.0, show_default=True)
@click.option("--in-flight", type=click.IntRange(1, 10_000), default=64, show_default=True)
@click.option("--keys", type=click.IntRange(1, 10_000_000), default=10_000, show_default=True)
@click.option("--processes", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Load generator processes (the in-flight requests are split among them).")
@click.option("--shards", type=click.IntRange(1, 4096), default=64, show_default=True)
@click.option("--no-fsync", is_flag=True, help="Start the cluster without fsync (UNSAFE).")
@click.option("--idle", "idle_seconds", type=click.FloatRange(0, 600), default=0,
              help="Also measure each node's CPU while idle for this many seconds.")
@click.option("--memory-keys", type=click.IntRange(0, 100_000_000), default=0,
              help="Also load this many 100-byte values and report each node's RSS.")
@click.option("--failovers", type=click.IntRange(0, 1000), default=0,
              help="Also kill -9 a shard's leader this many times and time the first "
                   "successful write to that shard after each kill (needs no --cluster).")
@click.option("--rebalance-keys", type=click.IntRange(0, 100_000_000), default=0,
              help="Also load this many 100-byte values, add a node, and time the "
                   "rebalance, its bytes, and client p99 during it against at rest "
                   "(needs no --cluster).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON too.")
def bench(cluster: str | None, workloads: str, contenders: int, seconds: float,
          in_flight: int, keys: int, processes: int, shards: int, no_fsync: bool,
          idle_seconds: float, memory_keys: int, failovers: int, rebalance_keys: int,
          as_json: bool) -> None:
    """Measure throughput and latency. A benchmark, not a test."""
    names = [w.strip().upper() for w in workloads.split(",") if w.strip()]
    unknown = [w for w in names if w not in kv.WORKLOADS and w not in LOCK_WORKLOADS]
    if unknown:
        raise click.UsageError(f"unknown workloads {unknown}; known: {sorted(kv.WORKLOADS)}")
    try:
        loop = eventloop.chosen()  # the load generators', and a started cluster's
    except ConfigError as error:
        raise click.UsageError(str(error)) from error
    with tempfile.TemporaryDirectory(prefix="ringlock-bench-") as tmp:
        dev = None
        if cluster is None:
            dev = DevCluster(Path(tmp) / "cluster", nodes=3, base_port=free_base_port(4),
                             shards=shards, fsync=not no_fsync, name="bench")
            click.echo(f"starting a 3-node cluster ({shards} shards, fsync "
                       f"{'off' if no_fsync else 'on'}, Raft core {RAFT_BUILD}, "
                       f"event loop {loop}) in {dev.data_dir} ...")
            dev.start()
            if not dev.wait_balanced(timeout=60):  # measure the steady state
                click.echo("warning: shard leaders are not evenly spread; measuring anyway")
            addresses = dev.addresses
            builds = {"raft_core": RAFT_BUILD, "event_loop": loop}  # this install's
        else:
            addresses = cluster.split(",")
            builds = cluster_builds(addresses)
            click.echo(f"measuring the cluster at {cluster} (Raft core {builds['raft_core']}, "
                       f"event loop {builds['event_loop']}; the load generator's event loop "
                       f"{loop}) ...")
        try:
            report = _run(addresses, dev, [n for n in names if n in kv.WORKLOADS], seconds,
                          in_flight, keys, processes, idle_seconds, memory_keys)
            report.update(builds, load_generator_loop=loop)
            for name in [n for n in names if n in LOCK_WORKLOADS]:
                click.echo(f"{name} ({LOCK_WORKLOADS[name]}) for {seconds:g} s ...")
                report["results"].append(run_lock_workload(
                    addresses, name, seconds=seconds, lanes=in_flight, contenders=contenders,
                    processes=processes))
            if failovers and dev is not None:
                report["failover"] = _failovers(dev, failovers)
            if rebalance_keys and dev is not None:
                report["rebalance"] = rebalance_bench(dev, rebalance_keys, log=click.echo)
        finally:
            if dev is not None:
                dev.stop()
    _print(report)
    if as_json:
        click.echo(json.dumps(report, indent=2))


def cluster_builds(addresses: list[str]) -> dict[str, str]:
    """What a running cluster's nodes say they run (`status`): the Raft core's build and
    the event loop, each value once, comma-separated (a cluster mid-upgrade runs two);
    "unknown" for a node that did not answer."""
    with Client(addresses, timeout=5) as client:
        reports = client.status(timeout=2.0)
    return {field: ", ".join(sorted({str(r.get(field) or "unknown") for r in reports}))
            for field in ("raft_core", "event_loop")}


def _run(addresses: list[str], dev: DevCluster | None, names: list[str], seconds: float,
         in_flight: int, keys: int, processes: int, idle_seconds: float,
         memory_keys: int) -> dict[str, Any]:
    report: dict[str, Any] = {"in_flight": in_flight, "keys": keys, "processes": processes,
                              "seconds": seconds, "results": []}
    if idle_seconds and dev is not None:
        report["idle_cpu_percent"] = _idle_cpu(dev, idle_seconds)
    if any(n in ("W2", "W3") for n in names):
        click.echo(f"preloading {keys} keys ...")
        kv.preload(addresses, keys)
    for name in names:
        with click.progressbar(length=1000, label=f"{name} ({kv.WORKLOADS[name]})") as bar:
            done = [0]

            def tick(fraction: float, bar: Any = bar, done: list[int] = done) -> None:
                target = int(fraction * 1000)
                bar.update(target - done[0])
                done[0] = target

            result = kv.run_workload(addresses, name, seconds=seconds, in_flight=in_flight,
                                     keys=keys, processes=processes, on_tick=tick)
            tick(1.0)
        report["results"].append(kv.summary(result))
    if memory_keys and dev is not None:
        click.echo(f"loading {memory_keys} keys of {kv.VALUE_BYTES} bytes ...")
        started = time.monotonic()
        kv.preload(addresses, memory_keys)
        report["memory"] = {"keys": memory_keys,
                            "load_seconds": round(time.monotonic() - started, 1),
                            "rss_mib": {str(n): round(kv.rss_kib(p.pid) / 1024, 1)
                                        for n, p in dev.nodes.items() if p.pid}}
    return report


def _failovers(dev: DevCluster, count: int) -> dict[str, Any]:
    """kill -9 the leader of one shard, then write to that shard until a write succeeds:
    the time a client sees between a leader's death and its shard taking writes again."""
    from ringlock.sharding.keys import key_in_shard

    seconds = []
    with dev.client(timeout=30) as client, click.progressbar(range(count),
                                                            label="failovers") as bar:
        for round_ in bar:
            dev.wait_balanced(timeout=30)  # the restarted node has its share back: steady
            leaders = dev.wait_ready()
            shard = round_ % dev.shards
            victim = leaders[shard]
            key = key_in_shard(shard, dev.shards, "failover")
            client.put(key, "before")  # the client knows the leader before the kill
            dev.kill(victim)
            started = time.monotonic()
            client.put(key, "after")
            seconds.append(time.monotonic() - started)
            dev.start_node(victim)
    ordered = sorted(seconds)
    return {"kills": count, "p50_s": round(ordered[len(ordered) // 2], 3),
            "max_s": round(ordered[-1], 3), "min_s": round(ordered[0], 3)}


def _idle_cpu(dev: DevCluster, seconds: float) -> dict[str, float]:
    pids = {n: p.pid for n, p in dev.nodes.items() if p.pid}
    before = {n: kv.cpu_seconds(pid) for n, pid in pids.items()}
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    return {str(n): round(100 * (kv.cpu_seconds(pid) - before[n]) / elapsed, 2)
            for n, pid in pids.items()}


LOCK_WORKLOADS = {"L1": "uncontended acquire+release", "L2": "contended cycles"}


def _print(report: dict[str, Any]) -> None:
    click.echo(f"\n{'workload':<10}{'ops/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
    for row in report["results"]:
        p50 = row.get("p50_ms", row.get("pair_p50_ms", row.get("handoff_p50_ms")))
        p99 = row.get("p99_ms", row.get("pair_p99_ms", row.get("handoff_p99_ms")))
        what = {"L1": "  (acquire+release pair)", "L2": "  (handoff: release to next grant)"}
        click.echo(f"{row['workload']:<10}{row['ops_per_s']:>10}{p50!s:>10}"
                   f"{p99!s:>10}{row['errors']:>8}{what.get(row['workload'], '')}")
    if "idle_cpu_percent" in report:
        click.echo(f"idle CPU per node (% of a core): {report['idle_cpu_percent']}")
    if "failover" in report:
        click.echo(f"kill -9 of a leader to the first write on its shard: {report['failover']}")
    if "rebalance" in report:
        click.echo(f"rebalance on a 4th node's join: {report['rebalance']}")
    if "memory" in report:
        click.echo(f"memory: {report['memory']}")
