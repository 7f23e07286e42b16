"""The accepting side of the front door on one in-process connection
(server/connection.py): what an unauthenticated connection may hold."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from ringlock.codec.frames import FrameDecoder, encode_frame
from ringlock.server import connection as connection_module
from ringlock.server.config import NodeConfig
from ringlock.server.connection import Connection
from ringlock.server.node import Node


def secret_node(tmp_path: Path, secret: str = "s3cret") -> Node:
    return Node(NodeConfig(node_id=1, listen="127.0.0.1:1", data_dir=str(tmp_path),
                           peers={1: "127.0.0.1:1", 2: "127.0.0.1:2"}, secret=secret))


async def serve_one(node: Node) -> tuple[asyncio.Server, int]:
    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await Connection(node, reader, writer).serve()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def read_all(reader: asyncio.StreamReader, timeout: float) -> list[Any]:
    decoder, bodies = FrameDecoder(), []
    async with asyncio.timeout(timeout):
        while data := await reader.read(65536):
            bodies.extend(decoder.feed(data))
    return bodies


def test_a_connection_that_never_proves_the_secret_is_closed_after_the_deadline(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connection_module, "AUTH_TIMEOUT_S", 0.3)

    async def main() -> None:
        server, port = await serve_one(secret_node(tmp_path))
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(encode_frame({"id": 1, "op": "get", "shard": 0, "key": b"k"}))
            # Refused, and then closed by the node (EOF) rather than held open for ever.
            bodies = await read_all(reader, timeout=3.0)
            assert [b.get("err") for b in bodies] == ["Unauthorized", "Unauthorized"]
            assert "AUTH_TIMEOUT_S" in bodies[-1]["msg"]
            writer.close()
        finally:
            server.close()

    asyncio.run(main())


def test_an_authenticated_connection_outlives_the_deadline(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ringlock.transport.auth import ConnectHandshake

    monkeypatch.setattr(connection_module, "AUTH_TIMEOUT_S", 0.2)

    async def main() -> None:
        server, port = await serve_one(secret_node(tmp_path))
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            handshake = ConnectHandshake("s3cret")
            writer.write(encode_frame({**handshake.hello(), "id": 1}))
            decoder = FrameDecoder()
            (challenge,) = decoder.feed(await reader.read(65536))
            writer.write(encode_frame({**handshake.answer(challenge["ok"]), "id": 2}))
            (ok,) = decoder.feed(await reader.read(65536))
            assert ok == {"id": 2, "ok": True}
            await asyncio.sleep(0.5)
            assert not reader.at_eof()
            writer.close()
        finally:
            server.close()

    asyncio.run(main())
