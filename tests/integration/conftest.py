"""Real node processes on loopback, started per test in a temporary directory.

Ports come from a per-test probe of free loopback ports; every process is stopped by
its PID when the test ends, whatever happened.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ringlock.devcluster import DevCluster, free_base_port

TEST_SHARDS = 8
"""Fewer shards than the default 64 keep start-up quick; the code paths are the same."""


def make_cluster(path: Path, *, nodes: int = 3, shards: int = TEST_SHARDS,
                 extra_args: tuple[str, ...] = (), http: bool = False,
                 env: dict[str, str] | None = None, secret: str | None = None) -> DevCluster:
    """`http`: every node also serves the HTTP API, on ports of the same probe.
    `secret`: the cluster's secret (its own clients present it)."""
    base = free_base_port(2 * nodes if http else nodes)
    return DevCluster(path, nodes=nodes, base_port=base, shards=shards,
                      name=f"test-{path.name}", extra_args=extra_args, env=env,
                      http_base_port=base + nodes if http else None, secret=secret)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[DevCluster]:
    with running(make_cluster(tmp_path / "cluster")) as dev:
        yield dev


@contextmanager
def running(dev: DevCluster) -> Iterator[DevCluster]:
    """Start `dev`; at the end stop every node by PID and print each node's log tail."""
    try:
        dev.start()
        yield dev
    finally:
        dev.stop()
        print_log_tails(dev)


def print_log_tails(dev: DevCluster, lines: int = 15) -> None:
    """Each node's last log lines: pytest shows them when the test failed."""
    for node_id, node in dev.nodes.items():
        if node.log_path.exists():
            tail = node.log_path.read_text(errors="replace").splitlines()[-lines:]
            print(f"--- node {node_id} log tail ---", *tail, sep="\n")
