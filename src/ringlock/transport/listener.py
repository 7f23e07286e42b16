"""A listening socket that hands each accepted connection over as a bare socket.

`asyncio.start_server` wraps a connection in a stream before the handler runs, and the
loop may read from it at once. The TLS listener must look at the first byte before
anything reads it (transport/tls.py), so it accepts the sockets itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Awaitable, Callable

log = logging.getLogger("ringlock.transport")

ACCEPT_RETRY_S = 1.0
"""After an accept fails for want of resources (descriptors, buffers, memory), the wait
before the next try, as asyncio's own server does; the connections already open go on.
Other failures belong to one connection (it was reset before it was taken) and the
next accept follows at once."""
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class SocketListener:
    """Accepts on HOST:PORT and runs `handler(conn)` as a task for each connection until
    closed. The handler owns the socket it is given (closes it or passes it on)."""

    def __init__(self, sock: socket.socket, handler: Callable[[socket.socket], Awaitable[None]],
                 ) -> None:
        self._sock = sock
        host, port = sock.getsockname()[:2]
        self.address: tuple[str, int] = (str(host), int(port))
        """Where it listens (the port the kernel chose, for port 0); kept, as the socket
        cannot say once closed."""
        self._handler = handler
        self._handlers: set[asyncio.Task[None]] = set()
        self._accepting = asyncio.get_running_loop().create_task(self._accept_forever())
        self._accepting.add_done_callback(self._accepting_ended)

    @classmethod
    async def start(cls, handler: Callable[[socket.socket], Awaitable[None]], host: str,
                    port: int, *, backlog: int) -> SocketListener:
        """Listening on HOST:PORT (an IPv6 literal binds IPv6; a name binds the first
        address it resolves to)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=backlog)
        sock.setblocking(False)
        return cls(sock, handler)

    async def _accept_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self._sock)
            except OSError as error:
                if self._sock.fileno() == -1:
                    return  # closed
                if error.errno in _OUT_OF_RESOURCES:
                    log.warning("accept on %s failed: %s; retrying in %g s", self.address,
                                error, ACCEPT_RETRY_S)
                    await asyncio.sleep(ACCEPT_RETRY_S)
                continue
            try:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # reset already
                conn.close()
                continue
            task = loop.create_task(self._handle(conn))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    async def _handle(self, conn: socket.socket) -> None:
        try:
            await self._handler(conn)
        except Exception:  # as asyncio's server does: logged, and the next one served
            log.exception("connection handler failed")

    def _accepting_ended(self, task: asyncio.Task[None]) -> None:
        # The socket closes only once the accept is off the loop: closed under a pending
        # accept, its descriptor number could be reused while the loop still watches it.
        with contextlib.suppress(OSError):
            self._sock.close()
        if not task.cancelled() and task.exception() is not None:
            log.error("listener on %s:%d stopped accepting", *self.address,
                      exc_info=task.exception())

    def close(self) -> None:
        """Stop accepting. Connections already handed over are their handlers' to end,
        as with `asyncio.Server.close()` (a node answers its open requests first)."""
        self._accepting.cancel()

    async def wait_closed(self) -> None:
        """Until the listening socket is closed (after `close`)."""
        await asyncio.wait({self._accepting})
