"""`ringlock put|get|del|scan|status`: the client, from a shell."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ringlock.errors import ConfigError, RequestError
from ringlock.raft.messages import Role

cluster_option = click.option(
    "--cluster", envvar="RINGLOCK_CLUSTER", default=None,
    help="host:port,... (default: $RINGLOCK_CLUSTER, else the `ringlock dev` cluster).")
timeout_option = click.option("--timeout", type=click.FloatRange(0.01, 3600), default=10.0,
                              show_default=True, help="Seconds before giving up.")


def _client(cluster: str | None, timeout: float) -> Any:
    """A client; its secret and TLS come from $RINGLOCK_SECRET (or _SECRET_FILE) and
    $RINGLOCK_TLS_CA (see `ringlock certs`)."""
    from ringlock.client import Client

    try:
        return Client(cluster, timeout=timeout)
    except ConfigError as error:
        raise click.ClickException(str(error)) from error


def _fail(error: RequestError) -> None:
    click.echo(f"error: {type(error).__name__}: {error}", err=True)
    sys.exit(1)


@click.command()
@click.argument("key")
@click.argument("value")
@click.option("--fenced", is_flag=True,
              help="Fence the write with $RINGLOCK_LOCK_NAME and $RINGLOCK_FENCE_TOKEN (set "
                   "by `ringlock lock`): refused once a newer holder of the lock exists.")
@cluster_option
@timeout_option
def put(key: str, value: str, fenced: bool, cluster: str | None, timeout: float) -> None:
    """Set KEY to VALUE."""
    fence = _fence_from_env() if fenced else None
    with _client(cluster, timeout) as client:
        try:
            client.put(key, value, fence=fence)
        except RequestError as error:
            _fail(error)
    click.echo("OK")


def _fence_from_env() -> tuple[str, int]:
    import os

    name = os.environ.get("RINGLOCK_LOCK_NAME", "")
    token = os.environ.get("RINGLOCK_FENCE_TOKEN", "")
    if not name or not token.isdigit() or int(token) < 1:
        raise click.UsageError("--fenced needs RINGLOCK_LOCK_NAME and a positive "
                               "RINGLOCK_FENCE_TOKEN (run under `ringlock lock`)")
    return name, int(token)


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
    """Nodes and shards: who is up, who holds and leads what, what is short of copies."""
    with _client(cluster, timeout) as client:
        try:
            shard_map = client.shard_map()
            reports = client.status(timeout=min(timeout, 2.0))
        except RequestError as error:
            _fail(error)
    report = cluster_report(reports, shard_map)
    if as_json:
        click.echo(json.dumps(report))
        return
    _print_report(report, verbose)


def cluster_report(reports: list[dict[str, Any]], shard_map: Any) -> dict[str, Any]:
    """Every node's own view merged with the map: a shard's leader is the replica that
    says it leads in the highest term; a node that does not answer counts as down."""
    leaders: dict[int, int] = {}
    terms: dict[int, int] = {}
    applied: dict[int, dict[int, int]] = {}
    heard: dict[str, float] = {}
    for report in reports:
        node = int(report.get("node") or 0)
        heard.update(report.get("heard_s_ago") or {})
        for shard, role, _leader, term, _commit, applied_index in report.get("shards", []):
            if shard >= shard_map.shards:
                continue  # the meta group
            applied.setdefault(shard, {})[node] = applied_index
            if role == Role.LEADER and term >= terms.get(shard, -1):
                leaders[shard], terms[shard] = node, term
    reachable = {int(r.get("node") or 0) for r in reports if "error" not in r}
    hosted: dict[int, int] = {}
    for holders in shard_map.replicas.values():
        for n in holders:
            hosted[n] = hosted.get(n, 0) + 1
    by_id = {int(r.get("node") or 0): r for r in reports}
    nodes = []
    for node_id, address in sorted(shard_map.nodes.items()):
        own = by_id.get(node_id, {})
        nodes.append({
            "id": node_id, "address": address,
            "state": shard_map.states.get(node_id, "unknown"),
            "reachable": node_id in reachable,
            "replicas": hosted.get(node_id, 0),
            "leaders": sum(1 for n in leaders.values() if n == node_id),
            "last_heartbeat_s": heard.get(str(node_id)),
            "uptime_s": own.get("uptime_s"),
            "raft_core": own.get("raft_core"),
            "event_loop": own.get("event_loop"),
            **({"error": own["error"]} if "error" in own else {})})
    wanted = shard_map.replica_count
    live = {n for n in reachable if shard_map.states.get(n) == "up"}
    shard_rows: list[dict[str, Any]] = []
    for s in range(shard_map.shards):
        voters = shard_map.replicas.get(s, [])
        shard_rows.append({
            "id": s, "replicas": voters, "learners": shard_map.learners.get(s, []),
            "leader": leaders.get(s), "term": terms.get(s), "applied": applied.get(s, {}),
            "conf_index": shard_map.conf_index.get(s, 0),
            "live_replicas": sum(1 for n in voters if n in live)})
    return {"version": shard_map.version, "replicas_per_shard": wanted,
            "nodes": nodes, "shards": shard_rows,
            "under_replicated": [r["id"] for r in shard_rows if r["live_replicas"] < wanted],
            "leaderless": [r["id"] for r in shard_rows if r["leader"] is None]}


def _print_report(report: dict[str, Any], verbose: bool) -> None:
    click.echo(f"map version {report['version']}, {report['replicas_per_shard']} replicas "
               "per shard\n")
    click.echo(f"{'node':<6}{'address':<22}{'state':<10}{'replicas':>9}{'leads':>7}"
               f"{'heartbeat':>11}{'uptime':>9}  core/loop")
    for node in report["nodes"]:
        uptime = f"{node['uptime_s']:.0f} s" if node.get("uptime_s") is not None else "-"
        beat = node.get("last_heartbeat_s")
        heartbeat = f"{beat:.1f} s ago" if beat is not None else "-"
        state = node["state"] + ("" if node["reachable"] else "!")
        click.echo(f"{node['id']!s:<6}{node['address']!s:<22}{state:<10}"
                   f"{node['replicas']:>9}{node['leaders']:>7}{heartbeat:>11}{uptime:>9}"
                   f"  {node.get('raft_core') or '-'}/{node.get('event_loop') or '-'}"
                   + (f"  unreachable: {node['error']}" if "error" in node else ""))
    shards = report["shards"]
    if verbose:
        click.echo(f"\n{'shard':<7}{'replicas':<14}{'leader':>7}{'term':>6}{'config':>8}"
                   "  applied by replica")
        for row in shards:
            applied = " ".join(f"{n}:{i}" for n, i in sorted(row["applied"].items()))
            holders = ",".join(map(str, row["replicas"])) + "".join(
                f",{n}L" for n in row["learners"])
            flag = "  BELOW R" if row["id"] in report["under_replicated"] else ""
            click.echo(f"{row['id']:<7}{holders:<14}{row['leader']!s:>7}{row['term']!s:>6}"
                       f"{row['conf_index']:>8}  {applied}{flag}")
    below = report["under_replicated"]
    click.echo(f"\n{len(shards)} shards: {len(shards) - len(report['leaderless'])} with a "
               f"leader, {len(below)} below {report['replicas_per_shard']} live copies"
               + (f" {below[:16]}" if below else "")
               + (f"; without a leader: {report['leaderless']}" if report["leaderless"] else ""))


@click.group()
def node() -> None:
    """Drain, restore or remove a node (membership)."""


def _set_state(node_id: int, state: str, cluster: str | None, timeout: float) -> None:
    with _client(cluster, timeout) as client:
        try:
            client.set_node_state(node_id, state)
        except RequestError as error:
            _fail(error)
    click.echo(f"node {node_id}: {state}")


@node.command()
@click.argument("node_id", type=click.IntRange(1, 2**31))
@cluster_option
@timeout_option
def drain(node_id: int, cluster: str | None, timeout: float) -> None:
    """Move NODE_ID's replicas and leaderships to other nodes (watch `ringlock status`)."""
    _set_state(node_id, "draining", cluster, timeout)


@node.command()
@click.argument("node_id", type=click.IntRange(1, 2**31))
@cluster_option
@timeout_option
def undrain(node_id: int, cluster: str | None, timeout: float) -> None:
    """Cancel a drain: NODE_ID may hold replicas again."""
    _set_state(node_id, "up", cluster, timeout)


@node.command()
@click.argument("node_id", type=click.IntRange(1, 2**31))
@cluster_option
@timeout_option
def remove(node_id: int, cluster: str | None, timeout: float) -> None:
    """Take a drained (or dead) NODE_ID out of the cluster; it then stops itself."""
    _set_state(node_id, "removed", cluster, timeout)
