"""Real node processes on loopback, started per test in a temporary directory.

Ports come from a per-test probe of free loopback ports; every process is stopped by
its PID when the test ends, whatever happened.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ringlock.devcluster import DevCluster, free_base_port

TEST_SHARDS = 8
"""Fewer shards than the default 64 keep start-up quick; the code paths are the same."""


def make_cluster(path: Path, *, nodes: int = 3, shards: int = TEST_SHARDS,
                 extra_args: tuple[str, ...] = ()) -> DevCluster:
    return DevCluster(path, nodes=nodes, base_port=free_base_port(nodes), shards=shards,
                      name=f"test-{path.name}", extra_args=extra_args)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[DevCluster]:
    dev = make_cluster(tmp_path / "cluster")
    try:
        dev.start()
        yield dev
    finally:
        dev.stop()
        for node_id, node in dev.nodes.items():
            log = node.data_dir / "node.log"
            if log.exists():
                tail = log.read_text(errors="replace").splitlines()[-15:]
                print(f"--- node {node_id} log tail ---", *tail, sep="\n")
