"""The accepting side of the front door on one in-process connection
(server/connection.py): what an unauthenticated connection may hold."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from ringlock.codec.frames import FrameDecoder, encode_frame
from ringlock.server import connection as connection_module
from ringlock.server.config import NodeConfig
from ringlock.server.connection import Connection
from ringlock.server.node import Node
from ringlock.transport import streams
from ringlock.transport.streams import DirectReader


def secret_node(tmp_path: Path, secret: str = "s3cret") -> Node:
    return Node(NodeConfig(node_id=1, listen="127.0.0.1:1", data_dir=str(tmp_path),
                           peers={1: "127.0.0.1:1", 2: "127.0.0.1:2"}, secret=secret))


async def serve_one(node: Node, served: list[Connection] | None = None,
                    ) -> tuple[asyncio.Server, int]:
    """A listener serving `node`'s connections; each Connection goes into `served`."""
    async def accept(reader: DirectReader, writer: asyncio.StreamWriter) -> None:
        connection = Connection(node, reader, writer)
        if served is not None:
            served.append(connection)
        await connection.serve()

    server = await streams.start_server(accept, "127.0.0.1", 0, backlog=16)
    return server, server.sockets[0].getsockname()[1]


async def answers_until_closed(node: Node, body: dict[str, Any]) -> list[Any]:
    """Send `body` on a fresh connection; every frame the node sends until it closes the
    connection (3 s at most)."""
    server, port = await serve_one(node)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(encode_frame(body))
        bodies = await read_all(reader, timeout=3.0)
        writer.close()
        return bodies
    finally:
        server.close()


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
        # Refused, and then closed by the node (EOF) rather than held open for ever.
        bodies = await answers_until_closed(
            secret_node(tmp_path), {"id": 1, "op": "get", "shard": 0, "key": b"k"})
        assert [b.get("err") for b in bodies] == ["Unauthorized", "Unauthorized"]
        assert "AUTH_TIMEOUT_S" in bodies[-1]["msg"]

    asyncio.run(main())


def test_a_refused_hello_is_answered_and_the_connection_closed_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What follows a refused peer's hello is Raft traffic that must not be read as
    requests: the connection ends with the answer, not at the proof's deadline."""
    monkeypatch.setattr(connection_module, "AUTH_TIMEOUT_S", 60.0)

    async def main() -> None:
        bodies = await answers_until_closed(  # EOF, well before the deadline
            secret_node(tmp_path), {"id": 1, "op": "hello", "node": 9, "cluster": "x"})
        assert [(b["id"], b["err"]) for b in bodies] == [(1, "BadRequest")]

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


def test_a_connection_that_does_not_read_its_answers_is_not_read_until_it_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Answers waiting past MAX_UNSENT_BYTES pause the reading of that connection's
    requests (the memory a client that only sends can make the node hold); once it
    reads, reading resumes and every request is answered."""
    monkeypatch.setattr(connection_module, "MAX_UNSENT_BYTES", 32 * 1024)
    count = 5000

    async def main() -> None:
        served: list[Connection] = []
        server, _ = await serve_one(secret_node(tmp_path), served)
        listening = server.sockets[0]
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # accepted inherit it
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, listening.getsockname())
            reader, writer = await asyncio.open_connection(sock=sock)
            writer.write(encode_frame({"id": 1, "op": "get", "shard": 0, "key": b"k"}) * count)
            async with asyncio.timeout(5):
                while not served or served[0]._draining is None:
                    await asyncio.sleep(0.01)
            connection = served[0]
            assert not connection._transport().is_reading()
            decoder, bodies = FrameDecoder(), []
            async with asyncio.timeout(10):
                while len(bodies) < count:
                    bodies.extend(decoder.feed(await reader.read(65536)))
                while connection._draining is not None:
                    await asyncio.sleep(0.01)
            assert [b["err"] for b in bodies] == ["Unauthorized"] * count
            assert connection._transport().is_reading()
            writer.close()
        finally:
            server.close()
            sock.close()

    asyncio.run(main())
