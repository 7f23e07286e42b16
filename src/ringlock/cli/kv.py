"""`ringlock put|get|del|scan|status`: the client, from a shell."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ringlock.errors import RequestError
from ringlock.raft.messages import Role

cluster_option = click.option(
    "--cluster", envvar="RINGLOCK_CLUSTER", default=None,
    help="host:port,... (default: $RINGLOCK_CLUSTER, else the `ringlock dev` cluster).")
timeout_option = click.option("--timeout", type=click.FloatRange(0.01, 3600), default=10.0,
                              show_default=True, help="Seconds before giving up.")


def _client(cluster: str | None, timeout: float) -> Any:
    from ringlock.client import Client

    return Client(cluster, timeout=timeout)


def _fail(error: RequestError) -> None:
    click.echo(f"error: {type(error).__name__}: {error}", err=True)
    sys.exit(1)


@click.command()
@click.argument("key")
@click.argument("value")
@cluster_option
@timeout_option
def put(key: str, value: str, cluster: str | None, timeout: float) -> None:
    """Set KEY to VALUE."""
    with _client(cluster, timeout) as client:
        try:
            client.put(key, value)
        except RequestError as error:
            _fail(error)
    click.echo("OK")


@click.command()
@click.argument("key")
@click.option("--stale", is_flag=True, help="Read from any replica; may lag.")
@cluster_option
@timeout_option
def get(key: str, stale: bool, cluster: str | None, timeout: float) -> None:
    """Print KEY's value (exit 1 if absent)."""
    with _client(cluster, timeout) as client:
        try:
            value = client.get(key, consistency="stale" if stale else "linearizable")
        except RequestError as error:
            _fail(error)
    if value is None:
        click.echo(f"(not found: {key})", err=True)
        sys.exit(1)
    click.echo(value.decode(errors="replace"))


@click.command(name="del")
@click.argument("key")
@cluster_option
@timeout_option
def delete(key: str, cluster: str | None, timeout: float) -> None:
    """Delete KEY."""
    with _client(cluster, timeout) as client:
        try:
            found = client.delete(key)
        except RequestError as error:
            _fail(error)
    click.echo("deleted" if found else "(not found)")


@click.command()
@click.argument("prefix", default="")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@cluster_option
@timeout_option
def scan(prefix: str, limit: int, cluster: str | None, timeout: float) -> None:
    """List keys starting with PREFIX, in order."""
    with _client(cluster, timeout) as client:
        try:
            found = client.scan(prefix, limit=limit)
        except RequestError as error:
            _fail(error)
    for kv in found:
        click.echo(f"{kv.key.decode(errors='replace')}\t{kv.value.decode(errors='replace')}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object for scripts.")
@click.option("--shards", "verbose", is_flag=True, help="Also a line per shard.")
@cluster_option
@timeout_option
def status(as_json: bool, verbose: bool, cluster: str | None, timeout: float) -> None:
    """Nodes and shards: who is up, who leads what."""
    with _client(cluster, timeout) as client:
        try:
            reports = client.status(timeout=min(timeout, 2.0))
            shard_map = client.shard_map()
        except RequestError as error:
            _fail(error)
    report = cluster_report(reports, shard_map.shards, shard_map.replicas)
    if as_json:
        click.echo(json.dumps(report))
        return
    _print_report(report, verbose)


def cluster_report(reports: list[dict[str, Any]], shards: int,
                   replicas: list[int]) -> dict[str, Any]:
    """Every node's own view merged into one: a shard's leader is the replica that says
    it leads in the highest term; a replica that does not answer does not count."""
    leaders: dict[int, int] = {}
    terms: dict[int, int] = {}
    applied: dict[int, dict[int, int]] = {}
    hosted: dict[int, int] = {}
    for report in reports:
        node = int(report.get("node") or 0)
        for shard, role, _leader, term, _commit, applied_index in report.get("shards", []):
            applied.setdefault(shard, {})[node] = applied_index
            hosted[node] = hosted.get(node, 0) + 1
            if role == Role.LEADER and term >= terms.get(shard, -1):
                leaders[shard], terms[shard] = node, term
    up = {r.get("node") for r in reports if "error" not in r}
    nodes = [{"id": r.get("node"), "address": r.get("address"),
              "state": "down" if "error" in r else "up",
              "replicas": hosted.get(int(r.get("node") or 0), 0),
              "leaders": sum(1 for n in leaders.values() if n == r.get("node")),
              "uptime_s": r.get("uptime_s"),
              **({"error": r["error"]} if "error" in r else {})} for r in reports]
    shard_rows: list[dict[str, Any]] = [{"id": s, "replicas": replicas, "leader": leaders.get(s),
                   "term": terms.get(s), "applied": applied.get(s, {}),
                   "live_replicas": sum(1 for n in replicas if n in up)}
                  for s in range(shards)]
    return {"nodes": nodes, "shards": shard_rows,
            "under_replicated": [r["id"] for r in shard_rows
                                 if r["live_replicas"] < len(replicas)],
            "leaderless": [r["id"] for r in shard_rows if r["leader"] is None]}


def _print_report(report: dict[str, Any], verbose: bool) -> None:
    click.echo(f"{'node':<6}{'address':<22}{'state':<7}{'replicas':>9}{'leads':>7}"
               f"{'uptime':>10}")
    for node in report["nodes"]:
        uptime = f"{node['uptime_s']:.0f} s" if node.get("uptime_s") is not None else "-"
        click.echo(f"{node['id']!s:<6}{node['address']!s:<22}{node['state']:<7}"
                   f"{node['replicas']:>9}{node['leaders']:>7}{uptime:>10}"
                   + (f"  {node['error']}" if "error" in node else ""))
    shards = report["shards"]
    if verbose:
        click.echo(f"\n{'shard':<7}{'replicas':<12}{'leader':>7}{'term':>6}  applied by replica")
        for row in shards:
            applied = " ".join(f"{n}:{i}" for n, i in sorted(row["applied"].items()))
            click.echo(f"{row['id']:<7}{','.join(map(str, row['replicas'])):<12}"
                       f"{row['leader']!s:>7}{row['term']!s:>6}  {applied}")
    click.echo(f"\n{len(shards)} shards: {len(shards) - len(report['leaderless'])} with a "
               f"leader, {len(report['under_replicated'])} below their replica count"
               + (f"; without a leader: {report['leaderless']}" if report["leaderless"] else ""))
