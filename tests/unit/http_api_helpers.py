"""A one-node HttpApi on loopback for the HTTP unit tests: the node is made but not
started (its HTTP API alone is served)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from ringlock.server.config import NodeConfig
from ringlock.server.httpapi import HttpApi
from ringlock.server.node import Node


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_node(data_dir: Path, **settings: Any) -> Node:
    """Node 1 of a one-node cluster, its HTTP API on a free loopback port."""
    return Node(NodeConfig(node_id=1, listen="127.0.0.1:1", data_dir=str(data_dir),
                           peers={1: "127.0.0.1:1"}, http_listen=f"127.0.0.1:{free_port()}",
                           **settings))


@asynccontextmanager
async def serving(api: HttpApi) -> AsyncIterator[int]:
    """`api` started for the block; yields the port it listens on, and stops it after."""
    await api.start()
    assert api._listener is not None
    try:
        yield api._listener.sockets[0].getsockname()[1]
    finally:
        await api.stop()
