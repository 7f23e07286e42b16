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
import os
import socket
import ssl
from collections.abc import Callable
from typing import Any

from ringlock.address import parse_address
from ringlock.codec.frames import encode_frame
from ringlock.errors import ConfigError

TLS_HANDSHAKE_TIMEOUT_S = 5.0
"""A connection that has not finished its TLS handshake by then is closed."""
TLS_RECORD_HANDSHAKE = 0x16
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


async def open_stream(address: str, context: ssl.SSLContext | None, timeout: float,
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to HOST:PORT within `timeout`: with TLS when `context` is given, the
    node's certificate checked for the host it was dialled by."""
    host, port = parse_address(address)
    return await asyncio.wait_for(asyncio.open_connection(
        host, port, ssl=context, server_hostname=host if context else None), timeout)


def is_fatal(error: BaseException) -> bool:
    """A TLS failure that another try cannot fix (a certificate, a plain-text peer), as
    opposed to a connection cut during the handshake."""
    return isinstance(error, ssl.SSLError) and not isinstance(
        error, ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLSyscallError)


async def first_byte(writer: asyncio.StreamWriter, timeout: float) -> int | None:
    """The first byte the other side sent, peeked (left for the TLS layer to read), or
    None if it sent nothing in time or closed. Called first thing on an accepted
    connection, before the stream has read anything: reading is paused at once, so no
    byte reaches the plain stream, and a duplicate descriptor waits for the data."""
    transport = writer.transport
    assert isinstance(transport, asyncio.ReadTransport)
    transport.pause_reading()
    sock = writer.get_extra_info("socket")
    if sock is None:
        return None
    loop = asyncio.get_running_loop()
    duplicate = socket.socket(fileno=os.dup(sock.fileno()))
    duplicate.setblocking(False)
    readable: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not readable.done():
            readable.set_result(None)

    try:
        loop.add_reader(duplicate.fileno(), ready)
        try:
            await asyncio.wait_for(readable, timeout)
        finally:
            loop.remove_reader(duplicate.fileno())
        data = duplicate.recv(1, socket.MSG_PEEK)
    except (OSError, TimeoutError):
        return None
    finally:
        duplicate.close()
    return data[0] if data else None


async def accept_tls(writer: asyncio.StreamWriter, context: ssl.SSLContext,
                     refused: Callable[[str], None]) -> bool:
    """Upgrade an accepted connection to TLS: True if done; else `refused(why)` is
    called (to log it) before a plain-text client is told, and the caller closes."""
    first = await first_byte(writer, TLS_HANDSHAKE_TIMEOUT_S)
    if first is None:
        refused(f"closed, or silent for TLS_HANDSHAKE_TIMEOUT_S={TLS_HANDSHAKE_TIMEOUT_S:g} s, "
                "before its TLS handshake")
        return False
    if first != TLS_RECORD_HANDSHAKE:
        refused("a plain-text client at this TLS port; telling it so")
        writer.write(encode_frame({"id": 0, "err": "TlsError", "msg": PLAIN_AT_TLS_PORT}))
        return False
    try:
        await writer.start_tls(context, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S)
    except (OSError, TimeoutError) as error:
        refused(f"TLS handshake failed: {error}")
        return False
    return True


def peer_certificate(writer: asyncio.StreamWriter) -> Any:
    """The certificate the other side presented and the CA verified, or None."""
    return writer.get_extra_info("peercert")
