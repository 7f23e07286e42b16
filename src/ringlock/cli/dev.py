"""`ringlock dev`: a local cluster of real processes, stopped on Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from ringlock.cli.devdemo import run_demo
from ringlock.devcluster import (
    DEFAULT_BASE_PORT,
    DEFAULT_DATA_DIR,
    HTTP_PORT_OFFSET,
    DevCluster,
)


@click.command()
@click.option("--nodes", type=click.IntRange(1, 64), default=3, show_default=True)
@click.option("--data", "data_dir", default=DEFAULT_DATA_DIR, show_default=True,
              type=click.Path(file_okay=False), help="Where every node keeps its data.")
@click.option("--port", type=click.IntRange(1024, 65000), default=DEFAULT_BASE_PORT,
              show_default=True, help="First node's port; the others follow.")
@click.option("--http-port", type=click.IntRange(0, 65000), default=None,
              help="First node's HTTP API port (docs/HTTP.md); the others follow. "
                   f"Default: --port + {HTTP_PORT_OFFSET}; 0: no HTTP API.")
@click.option("--shards", type=click.IntRange(1, 4096), default=64, show_default=True)
@click.option("--demo", "with_demo", is_flag=True,
              help="Run a short demo (writes, a kill -9, a check) once the cluster is up.")
@click.option("--secure", is_flag=True,
              help="TLS and a cluster secret: certificates and secret made in DATA/tls.")
@click.option("--exit/--stay", "exit_after", default=None,
              help="Stop the cluster after the demo (default: stay up only on a terminal).")
def dev(nodes: int, data_dir: str, port: int, http_port: int | None, shards: int,
        with_demo: bool, secure: bool, exit_after: bool | None) -> None:
    """Start a local cluster on loopback and keep it running until Ctrl-C."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    if http_port is None:
        http_port = port + HTTP_PORT_OFFSET if port + HTTP_PORT_OFFSET + nodes <= 65535 else 0
    security = secure_settings(Path(data_dir), nodes) if secure else {}
    cluster = DevCluster(data_dir, nodes=nodes, base_port=port, shards=shards,
                         http_base_port=http_port or None, **security)
    started = time.monotonic()
    try:
        cluster.start(wait=False)
        click.echo(f"starting {len(cluster.nodes)} nodes, data in {cluster.data_dir} ...")
        try:
            cluster.wait_ready()
        except (RuntimeError, TimeoutError) as error:
            raise click.ClickException(
                f"{error} (is another cluster already using {cluster.data_dir} or ports "
                f"{cluster.addresses[0]}...?)") from error
        click.echo(f"ready in {time.monotonic() - started:.1f} s: every one of "
                   f"{cluster.shards} shards has a leader")
        for node_id, node in sorted(cluster.nodes.items()):
            http = f"  http {node.http}" if node.http else ""
            click.echo(f"  node {node_id}  {node.address}{http}  pid {node.pid}  "
                       f"log {node.data_dir / 'node.log'}")
        if with_demo:
            run_demo(cluster)
            if exit_after or (exit_after is None and not sys.stdin.isatty()):
                return
        exports = f"RINGLOCK_CLUSTER={cluster.cluster}"
        if cluster.secret is not None:
            exports += f" RINGLOCK_SECRET_FILE={cluster.secret_file}"
        if cluster.tls_ca is not None:
            exports += f" RINGLOCK_TLS_CA={cluster.tls_ca}"
        click.echo(f"\n  export {exports}\n  ringlock put greeting "
                   "hello && ringlock get greeting")
        if cluster.http_addresses and cluster.secret is None:
            click.echo(f"  curl -X PUT -d hello http://{cluster.http_addresses[0]}/v1/kv/greeting"
                       f"\n  curl http://{cluster.http_addresses[-1]}/v1/kv/greeting")
        click.echo("\nCtrl-C stops the cluster.")
        while not stop.wait(0.5):
            for node_id, node in cluster.nodes.items():
                if node.process is not None and node.process.poll() is not None:
                    click.echo(f"node {node_id} exited ({node.process.returncode}); "
                               "restarting it", err=True)
                    cluster.start_node(node_id)
    finally:
        click.echo("stopping the cluster ...")
        cluster.stop()


def secure_settings(data_dir: Path, nodes: int) -> dict[str, Any]:
    """Certificates and a secret in DATA/tls, made once and reused by later starts."""
    from ringlock.certs import make_certs
    from ringlock.server.config import read_secret_file

    tls_dir = data_dir.absolute() / "tls"
    if not (tls_dir / "ca.pem").exists():
        make_certs(tls_dir, nodes=max(nodes, 8))  # room for nodes added later
    return {"secret": read_secret_file(tls_dir / "secret"), "tls_dir": tls_dir}
