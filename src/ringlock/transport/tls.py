"""TLS for the listener, the peer links and the clients: contexts built in one place.

A node with TLS has a certificate and key signed by the cluster's private CA (made by
`ringlock certs`). Peers verify each other against that CA both ways (mutual TLS: a peer
must present a certificate); clients verify the node against it and may present one.

A plain-text client at a TLS port would otherwise see the connection dropped with no
word, and retry until its deadline. So the listener looks at the first byte before the
handshake: a TLS record starts with 0x16, a ringlock frame with its length's high byte
(0 below 16 MiB). A plain frame gets one plain-text `TlsError` frame back, and the
connection is closed: the client fails at once, with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable
from typing import Any

from ringlock.address import parse_address
from ringlock.codec.frames import encode_frame
from ringlock.errors import ConfigError
from ringlock.transport import streams

TLS_HANDSHAKE_TIMEOUT_S = 5.0
"""A connection that has not finished its TLS handshake by then is closed."""
TLS_RECORD_HANDSHAKE = 0x16
MAX_PLAIN_DISCARD_BYTES = 64 * 1024
"""What a plain-text client at a TLS port sent, read and dropped before it is told."""
PLAIN_AT_TLS_PORT = ("this node requires TLS: the client connected in plain text "
                     "(set RINGLOCK_TLS_CA or pass tls_ca=)")


def server_context(cert: str, key: str, ca: str) -> ssl.SSLContext:
    """The listener's context: our certificate; a certificate the connecting side
    presents must be signed by the CA (peers are made to present one)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(context, cert, key, ca)
    context.verify_mode = ssl.CERT_OPTIONAL
    return context


def client_context(ca: str, cert: str = "", key: str = "") -> ssl.SSLContext:
    """A connecting side's context: the node must present a certificate the CA signed
    for the host it was dialled by; our own certificate goes along when given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(context, cert, key, ca)
    return context


def _load(context: ssl.SSLContext, cert: str, key: str, ca: str) -> None:
    try:
        context.load_verify_locations(cafile=ca)
        if cert:
            context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(f"cannot load TLS files (cert {cert!r}, key {key!r}, "
                          f"ca {ca!r}): {error}") from error


async def open_stream(address: str, context: ssl.SSLContext | None, timeout: float, *,
                      direct: bool = False,
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to HOST:PORT within `timeout`: with TLS when `context` is given, the
    node's certificate checked for the host it was dialled by. `direct`: read through a
    `DirectReader` (transport/streams.py)."""
    host, port = parse_address(address)
    return await asyncio.wait_for(
        streams.open_connection(host, port, ssl=context, direct=direct), timeout)


def is_fatal(error: BaseException) -> bool:
    """A TLS failure that another try cannot fix (a certificate, a plain-text peer), as
    opposed to a connection cut during the handshake."""
    return isinstance(error, ssl.SSLError) and not isinstance(
        error, ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLSyscallError)


async def first_byte(conn: socket.socket, timeout: float) -> int | None:
    """The first byte the other side sent on an accepted socket, peeked (left for the
    TLS layer to read), or None if it sent nothing in time or closed.

    The socket is not yet any transport's: once a stream owns it, the loop may read the
    ClientHello into the plain stream's buffer before any code of ours runs (uvloop
    starts reading as it accepts), and a TLS layer started after that never sees it."""
    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not readable.done():
            readable.set_result(None)

    try:
        loop.add_reader(conn.fileno(), ready)
        try:
            await asyncio.wait_for(readable, timeout)
        finally:
            loop.remove_reader(conn.fileno())
        data = conn.recv(1, socket.MSG_PEEK)
    except (OSError, TimeoutError):
        return None
    return data[0] if data else None


async def accept_tls(conn: socket.socket, context: ssl.SSLContext,
                     refused: Callable[[str], None],
                     ) -> tuple[streams.DirectReader, asyncio.StreamWriter] | None:
    """An accepted socket as a TLS stream (read through a `DirectReader`), or None after
    `refused(why)` was called (to log it) and a plain-text client was told. The socket
    is the stream's, or closed."""
    try:
        return await _upgrade(conn, context, refused)
    except BaseException:  # cancelled (the node is stopping): the socket is not left open
        conn.close()
        raise


async def _upgrade(conn: socket.socket, context: ssl.SSLContext,
                   refused: Callable[[str], None],
                   ) -> tuple[streams.DirectReader, asyncio.StreamWriter] | None:
    loop = asyncio.get_running_loop()
    conn.setblocking(False)
    first = await first_byte(conn, TLS_HANDSHAKE_TIMEOUT_S)
    if first is None:
        refused(f"closed, or silent for TLS_HANDSHAKE_TIMEOUT_S={TLS_HANDSHAKE_TIMEOUT_S:g} s, "
                "before its TLS handshake")
        conn.close()
        return None
    if first != TLS_RECORD_HANDSHAKE:
        refused("a plain-text client at this TLS port; telling it so")
        await _tell_and_close(conn, encode_frame(
            {"id": 0, "err": "TlsError", "msg": PLAIN_AT_TLS_PORT}))
        return None
    reader = streams.DirectReader()
    protocol = asyncio.StreamReaderProtocol(reader)
    try:
        transport, _ = await loop.connect_accepted_socket(
            lambda: protocol, conn, ssl=context,
            ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S)
    except (OSError, TimeoutError) as error:
        refused(f"TLS handshake failed: {error}")
        conn.close()
        return None
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


async def _tell_and_close(conn: socket.socket, frame: bytes) -> None:
    """Send one frame in plain text and close. What the client sent is read and dropped
    first: a socket closed with unread data resets the connection, and a reset can
    destroy the answer before the client reads it."""
    loop = asyncio.get_running_loop()
    try:
        with contextlib.suppress(BlockingIOError):
            conn.recv(MAX_PLAIN_DISCARD_BYTES)
        await asyncio.wait_for(loop.sock_sendall(conn, frame), TLS_HANDSHAKE_TIMEOUT_S)
        conn.shutdown(socket.SHUT_WR)
    except (OSError, TimeoutError):
        pass
    finally:
        conn.close()


def peer_certificate(writer: asyncio.StreamWriter) -> Any:
    """The certificate the other side presented and the CA verified, or None."""
    return writer.get_extra_info("peercert")
