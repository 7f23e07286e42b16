"""Streams whose bytes reach their consumer inside the protocol's own callback.

asyncio's `StreamReader` buffers what a socket delivers and wakes the task awaiting
`read`, which runs one loop iteration later. ringlock's connections parse frames and act
on them without awaiting, so that iteration only adds latency, and it is paid on every
hop of a request: client to leader, leader to follower, follower to leader, leader to
client. A drive turn also had to gather one iteration longer to catch what had just
arrived (server/node.py, GATHER_YIELDS). A `DirectReader` hands each chunk to its
consumer as `data_received` delivers it. Measured side by side in docs/PERFORMANCE.md
(session 11): L2 +4-5% with the gather shortened, W1 no worse.

A `DirectReader` is read only through `consume`: bytes that arrive before it is called
wait in arrival order and are handed over first. Streams that are read with `read` (a
peer link's refusals, tests) keep asyncio's `StreamReader` (`direct=False`).
"""

from __future__ import annotations

import asyncio
import ssl as _ssl
from collections.abc import Awaitable, Callable
from typing import Any

from ringlock.invariant import invariant

MAX_EARLY_BYTES = 1 << 20
"""Bytes a `DirectReader` keeps before `consume` is called (usually those of one or two
loop iterations); past it, the socket is not read until `consume` starts."""

Consumer = Callable[[bytes], None]
"""Takes a chunk as it arrives. Raising ends the stream: `consume` raises the error."""


class DirectReader(asyncio.StreamReader):
    def __init__(self) -> None:
        super().__init__()
        self._consumer: Consumer | None = None
        self._early: list[bytes] = []
        """Chunks that came before `consume`: those of a loop iteration or two (the
        serving task starts in the iteration after the connection is made)."""
        self._early_bytes = 0
        """Their size: past MAX_EARLY_BYTES, the socket is paused until `consume`."""

    def feed_data(self, data: Any) -> None:  # the protocol's data_received calls this
        if self.exception() is not None:  # the stream has ended
            return
        if self._consumer is None:
            self._early.append(data)
            before, self._early_bytes = self._early_bytes, self._early_bytes + len(data)
            if before <= MAX_EARLY_BYTES < self._early_bytes:  # crossed it: pause once
                self._socket().pause_reading()
            return
        try:
            self._consumer(data)
        except Exception as error:  # the consumer's verdict: this stream ends here
            self.set_exception(error)

    def _socket(self) -> Any:
        """The transport the protocol gave (`StreamReader.set_transport`): it is set
        when the connection is made, before any byte is fed."""
        return self._transport  # type: ignore[attr-defined]

    async def consume(self, consumer: Consumer) -> None:
        """Hand every chunk to `consumer`, from those that came first; return at the end
        of the stream, raise what broke it (a socket error, or the consumer's own)."""
        invariant(self._consumer is None, "a DirectReader has one consumer")
        early, self._early = self._early, []
        self._consumer = consumer
        if self._early_bytes > MAX_EARLY_BYTES:  # before the early bytes: a pause their
            self._socket().resume_reading()  # consumer makes (backpressure) must stand
        for data in early:
            self.feed_data(data)
        # Nothing reaches the base class's buffer: this wakes only at EOF or an error.
        rest = await self.read()
        invariant(not rest, "a DirectReader buffered bytes")


async def start_server(connected: Callable[[DirectReader, asyncio.StreamWriter],
                                           Awaitable[None]],
                       host: str, port: int, *, backlog: int) -> asyncio.Server:
    """`asyncio.start_server`, each connection read through a `DirectReader`."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: asyncio.StreamReaderProtocol(DirectReader(), connected),  # type: ignore[arg-type]
        host, port, backlog=backlog)


async def open_connection(host: str, port: int, *, ssl: _ssl.SSLContext | None,
                          direct: bool) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """`asyncio.open_connection`, read through a `DirectReader` if `direct`."""
    loop = asyncio.get_running_loop()
    reader = DirectReader() if direct else asyncio.StreamReader()
    protocol = asyncio.StreamReaderProtocol(reader)
    transport, _ = await loop.create_connection(
        lambda: protocol, host, port, ssl=ssl, server_hostname=host if ssl else None)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

