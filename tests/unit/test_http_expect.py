"""`Expect: 100-continue` on a node with a secret: the body is invited only once the
bearer is right (aiohttp answers the expectation before any middleware runs)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from ringlock.server.config import NodeConfig
from ringlock.server.httpapi import HttpApi
from ringlock.server.node import Node


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("bearer, continued", [(b"", False), (b"wrong", False),
                                               (b"s3cret", True)])
def test_only_an_authorized_request_is_told_to_continue(tmp_path: Path, bearer: bytes,
                                                        continued: bool) -> None:
    node = Node(NodeConfig(node_id=1, listen="127.0.0.1:1", data_dir=str(tmp_path),
                           peers={1: "127.0.0.1:1"}, secret="s3cret",
                           http_listen=f"127.0.0.1:{free_port()}"))

    async def main() -> None:
        api = HttpApi(node)
        await api.start()
        assert api._listener is not None
        port = api._listener.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            auth = b"Authorization: Bearer " + bearer + b"\r\n" if bearer else b""
            writer.write(b"PUT /v1/kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                         + auth + b"Expect: 100-continue\r\n\r\n")
            async with asyncio.timeout(5):
                status = await reader.readline()
            assert status.startswith(b"HTTP/1.1 100 ") is continued, status
            if not continued:
                assert status.startswith(b"HTTP/1.1 401 "), status
            writer.close()
        finally:
            await api.stop()

    asyncio.run(main())
