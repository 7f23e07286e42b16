"""The TLS front door in one process, on each event loop: the first byte of an accepted
socket decides between a handshake and a plain-text refusal, and nothing may read that
byte first. uvloop starts reading a connection as it accepts it, so a listener that
made a stream before looking lost the ClientHello of a client that speaks at once."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from ringlock import eventloop
from ringlock.certs import CertFiles, make_certs
from ringlock.codec.frames import FrameDecoder, encode_frame
from ringlock.transport import tls
from ringlock.transport.listener import SocketListener

LOOPS = ["uvloop", "asyncio"]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_certs(tmp_path_factory.mktemp("tls") / "certs", nodes=1)


async def echo_listener(certs: CertFiles, refusals: list[str]) -> SocketListener:
    cert, key = certs.nodes[1]
    context = tls.server_context(str(cert), str(key), str(certs.ca))

    async def handle(conn: socket.socket) -> None:
        stream = await tls.accept_tls(conn, context, refusals.append)
        if stream is None:
            return
        reader, writer = stream
        try:
            await reader.consume(writer.write)
        finally:
            writer.close()

    return await SocketListener.start(handle, "127.0.0.1", 0, backlog=16)


@asynccontextmanager
async def echoing(certs: CertFiles) -> AsyncIterator[tuple[str, int, list[str]]]:
    """An echo listener for the block (host, port and the refusals it logged), which
    must end within 10 s; closed after it."""
    refusals: list[str] = []
    listener = await echo_listener(certs, refusals)
    host, port = listener.address
    try:
        async with asyncio.timeout(10):
            yield host, port, refusals
    finally:
        listener.close()


@pytest.mark.parametrize("loop", LOOPS)
def test_clients_that_speak_at_once_get_their_handshake(loop: str, certs: CertFiles) -> None:
    async def main() -> None:
        context = tls.client_context(str(certs.ca))
        async with echoing(certs) as (host, port, refusals):
            for n in range(20):  # each sends its ClientHello as it connects
                reader, writer = await tls.open_stream(f"{host}:{port}", context, 5)
                writer.write(b"ping %d" % n)
                assert await reader.readexactly(len(b"ping %d" % n)) == b"ping %d" % n
                writer.close()
        assert refusals == []

    eventloop.run(main(), loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_plain_text_client_is_told_the_port_needs_tls(loop: str, certs: CertFiles) -> None:
    async def main() -> None:
        async with echoing(certs) as (host, port, refusals):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(encode_frame({"id": 1, "op": "get", "key": b"k"}))
            answer = await reader.read()  # the frame, then the close
            writer.close()
        [body] = list(FrameDecoder(max_frame_bytes=1 << 20).feed(answer))
        assert body["err"] == "TlsError" and "requires TLS" in body["msg"]
        assert refusals == ["a plain-text client at this TLS port; telling it so"]

    eventloop.run(main(), loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_silent_client_is_closed_at_the_handshake_deadline(
        loop: str, certs: CertFiles, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tls, "TLS_HANDSHAKE_TIMEOUT_S", 0.2)

    async def main() -> None:
        async with echoing(certs) as (host, port, refusals):
            reader, writer = await asyncio.open_connection(host, port)
            assert await reader.read() == b""  # closed by the node, not by us
            writer.close()
        assert len(refusals) == 1 and "silent" in refusals[0]

    eventloop.run(main(), loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_closed_listener_accepts_no_more(loop: str, certs: CertFiles) -> None:
    async def main() -> None:
        listener = await echo_listener(certs, [])
        host, port = listener.address
        listener.close()
        await listener.wait_closed()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(host, port)

    eventloop.run(main(), loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_handshake_cancelled_by_a_stopping_node_closes_its_socket(
        loop: str, certs: CertFiles) -> None:
    """A node that stops cancels what is still running; a handshake under way must not
    leave its socket open (the client would wait for the handshake's deadline)."""
    cert, key = certs.nodes[1]
    context = tls.server_context(str(cert), str(key), str(certs.ca))

    async def main() -> None:
        listening = socket.create_server(("127.0.0.1", 0))
        listening.setblocking(False)
        try:
            reader, writer = await asyncio.open_connection(*listening.getsockname()[:2])
            conn, _ = await asyncio.get_running_loop().sock_accept(listening)
            handshake = asyncio.ensure_future(tls.accept_tls(conn, context, [].append))
            for _ in range(5):
                await asyncio.sleep(0)
            assert not handshake.done()  # waiting for the client's first byte
            handshake.cancel()
            with pytest.raises(asyncio.CancelledError):
                await handshake
            assert conn.fileno() == -1
            assert await asyncio.wait_for(reader.read(), 5) == b""  # the client sees it
            writer.close()
        finally:
            listening.close()

    eventloop.run(main(), loop)
