"""`ringlock put|get|del|scan|status`: the client, from a shell."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from ringlock.errors import RequestError

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
@cluster_option
@timeout_option
def status(as_json: bool, cluster: str | None, timeout: float) -> None:
    """Nodes and shards: who is up, who leads what."""
    with _client(cluster, timeout) as client:
        try:
            reports = client.status(timeout=min(timeout, 2.0))
            shard_map = client.shard_map()
        except RequestError as error:
            _fail(error)
    leaders: dict[int, int] = {}
    terms: dict[int, int] = {}
    for report in reports:
        for shard, role, _leader, term, _commit, _applied in report.get("shards", []):
            if role == 3 and term >= terms.get(shard, -1):
                leaders[shard], terms[shard] = report["node"], term
    nodes = [{"id": r.get("node"), "address": r.get("address"),
              "state": "down" if "error" in r else "up",
              "leaders": sum(1 for n in leaders.values() if n == r.get("node")),
              **({"error": r["error"]} if "error" in r else {})} for r in reports]
    shards = [{"id": s, "replicas": shard_map.replicas, "leader": leaders.get(s),
               "term": terms.get(s)} for s in range(shard_map.shards)]
    if as_json:
        click.echo(json.dumps({"nodes": nodes, "shards": shards}))
        return
    for node in nodes:
        click.echo(f"node {node['id']}  {node['address']}  {node['state']}  "
                   f"leads {node['leaders']} shards" + (f"  ({node['error']})"
                                                        if "error" in node else ""))
    without = [s["id"] for s in shards if s["leader"] is None]
    click.echo(f"{shard_map.shards} shards, {shard_map.shards - len(without)} with a leader"
               + (f"; without: {without}" if without else ""))
