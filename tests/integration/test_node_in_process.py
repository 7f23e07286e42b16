"""A node run in this process, for what only its own objects can show."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ringlock.devcluster import free_base_port
from ringlock.server.config import build_config
from ringlock.server.node import Node
from ringlock.statemachine import records


def test_dropping_a_replica_gives_its_watch_history_back_to_the_node(tmp_path: Path) -> None:
    """Node.drop_replica closes the replica's state machine, so the changes its watch
    history held leave the node's shared budget at once instead of pinning their values
    until newer changes push them out (statemachine/history.py)."""

    async def main() -> None:
        address = f"127.0.0.1:{free_base_port(1)}"
        node = Node(build_config({"node_id": 1, "listen": address, "peers": {1: address},
                                  "data_dir": str(tmp_path / "node"), "shards": 4,
                                  "fsync": False, "cluster": "in-process"}))
        await node.start()
        try:
            group = min(g for g in node.replicas if g in range(4))
            machine = node.replicas[group].sm
            history = machine.history
            budget = history.budget
            revision = machine.revision + 1
            history.record_put(revision, b"k", records.pack(revision, revision, 1, 0, b"v"))
            held = budget.events
            assert held >= 1 and not history.released
            node.drop_replica(group)
            assert group not in node.replicas
            assert history.released
            assert budget.events == held - 1
        finally:
            await node.stop()

    asyncio.run(main())
