"""`ringlock serve`: run one node in the foreground until SIGTERM or Ctrl-C."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Any

import click

from ringlock import eventloop
from ringlock.errors import ConfigError
from ringlock.server.config import build_config, load_toml, parse_peers, read_secret_file

SECRET_ENV = "RINGLOCK_SECRET"
"""The cluster secret, when neither --secret-file nor the config file gives one. The
environment, not a flag: a flag's value shows in `ps` to every user."""


def setup_logging(node: int, level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr, level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)s node={node} %(name)s: %(message)s",
    )


@click.command()
@click.option("--id", "node_id", type=click.IntRange(1, 2**31), help="This node's id.")
@click.option("--listen", help="HOST:PORT for clients and peers.")
@click.option("--peers", help="Every node: ID=HOST:PORT,... (this one included).")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), help="Data directory.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True),
              help="TOML file with the same settings; flags override it.")
@click.option("--shards", type=click.IntRange(1, 4096), help="Shards (fixed at creation).")
@click.option("--cluster", "cluster_name", help="Cluster name peers must share.")
@click.option("--tick-ms", type=click.IntRange(1, 10_000), help="Raft tick interval.")
@click.option("--election-ticks", type=click.IntRange(2, 1000))
@click.option("--compact-every", type=click.IntRange(1, 10_000_000),
              help="Snapshot a shard and cut its log after this many applied entries.")
@click.option("--join", "join", metavar="HOST:PORT",
              help="Join the cluster this member belongs to (first start of a new node).")
@click.option("--replicas", type=click.IntRange(1, 9),
              help="Replicas per shard at founding (default 3).")
@click.option("--dead-after", "dead_after_s", type=click.FloatRange(1, 86_400),
              help="Seconds unheard before a node's replicas are re-created elsewhere "
                   "(default 60).")
@click.option("--max-moves", type=click.IntRange(1, 64),
              help="Shard replicas moving at once (default 2).")
@click.option("--max-connections", type=click.IntRange(1, 1_000_000),
              help="Open connections accepted at once; one more is told Unavailable "
                   "(default 10000).")
@click.option("--http", "http_listen", metavar="HOST:PORT",
              help="Serve the HTTP API and /metrics here (docs/HTTP.md); default: none.")
@click.option("--no-fsync", is_flag=True, default=None,
              help="UNSAFE: do not fsync the log (benchmarks of the rest only).")
@click.option("--secret-file", type=click.Path(dir_okay=False),
              help=f"File holding the cluster secret (else ${SECRET_ENV}); required when "
                   "any address is not loopback.")
@click.option("--tls-cert", type=click.Path(dir_okay=False), help="This node's certificate.")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="Its private key.")
@click.option("--tls-ca", type=click.Path(dir_okay=False),
              help="The cluster's CA certificate (all three TLS files or none).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def serve(node_id: int | None, listen: str | None, peers: str | None, data_dir: str | None,
          config_file: str | None, shards: int | None, cluster_name: str | None,
          tick_ms: int | None, election_ticks: int | None, compact_every: int | None,
          join: str | None, replicas: int | None, dead_after_s: float | None,
          max_moves: int | None, max_connections: int | None, http_listen: str | None,
          no_fsync: bool | None,
          secret_file: str | None, tls_cert: str | None, tls_key: str | None,
          tls_ca: str | None,
          log_level: str) -> None:
    """Run a ringlock node."""
    try:
        settings: dict[str, Any] = load_toml(config_file) if config_file else {}
        flags = {"node_id": node_id, "listen": listen, "data_dir": data_dir, "shards": shards,
                 "cluster": cluster_name, "tick_ms": tick_ms, "election_ticks": election_ticks,
                 "compact_every": compact_every, "join": join, "replicas": replicas,
                 "dead_after_s": dead_after_s, "max_moves": max_moves,
                 "max_connections": max_connections,
                 "peers": parse_peers(peers) if peers else None, "http_listen": http_listen,
                 "fsync": False if no_fsync else None,
                 "secret": read_secret_file(secret_file) if secret_file else None,
                 "tls_cert": tls_cert, "tls_key": tls_key, "tls_ca": tls_ca}
        settings.update({k: v for k, v in flags.items() if v is not None})
        if "secret" not in settings and os.environ.get(SECRET_ENV):
            settings["secret"] = os.environ[SECRET_ENV]
        for required in ("node_id", "listen", "data_dir"):
            if required not in settings:
                raise ConfigError(f"--{required.replace('_dir', '').replace('node_', '')} "
                                  "is required (flag or config file)")
        settings.setdefault("peers", {settings["node_id"]: settings["listen"]})
        config = build_config(settings)
        loop = eventloop.chosen()
    except ConfigError as error:
        raise click.UsageError(str(error)) from error
    setup_logging(config.node_id, log_level)
    profile = os.environ.get("RINGLOCK_PROFILE")  # a developer's tool: cProfile to this path
    if profile:
        import cProfile

        cProfile.runctx("run(_run(config), loop)", globals(),
                        {"config": config, "_run": _run, "run": eventloop.run, "loop": loop},
                        f"{profile}.{config.node_id}")
        return
    eventloop.run(_run(config), loop)


async def _run(config: Any) -> None:
    from ringlock.errors import RinglockError
    from ringlock.server.node import Node

    node = Node(config)
    try:
        await node.start()
    except (RinglockError, OSError) as error:
        logging.getLogger("ringlock.server").error("node %d cannot start: %s",
                                                   config.node_id, error)
        raise SystemExit(2) from error
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: asyncio.ensure_future(node.stop()))
    await node.stopped.wait()
