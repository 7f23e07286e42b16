"""The TLS port's accept loop (transport/listener.py) when an accept fails.

Out of descriptors (EMFILE and its kin) the loop waits ACCEPT_RETRY_S and tries again,
as asyncio's own server does, rather than spin on an error that will not clear at
once; a failure that belongs to one connection (it was reset before it was taken) is
skipped at once. Either way the next connection is served. The wait is recorded, not
slept: the test patches `asyncio.sleep` (the module's, so every caller's) for its
duration, and sleeps only through the real one itself."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket

import pytest

from ringlock.transport import listener as listener_module
from ringlock.transport.listener import ACCEPT_RETRY_S, SocketListener


def serve_after_failures(monkeypatch: pytest.MonkeyPatch, failures: list[OSError]) -> list[float]:
    """Accept failing with `failures` in turn, then a client connecting: the waits the
    accept loop asked for before the client was served."""
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def recorded_sleep(delay: float) -> None:
        waits.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(listener_module.asyncio, "sleep", recorded_sleep)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        real_accept = loop.sock_accept

        async def failing_accept(sock: socket.socket) -> tuple[socket.socket, object]:
            if failures:
                raise failures.pop(0)
            return await real_accept(sock)

        loop.sock_accept = failing_accept  # type: ignore[method-assign]
        served = asyncio.Event()

        async def handler(conn: socket.socket) -> None:
            conn.close()
            served.set()

        accepting = await SocketListener.start(handler, "127.0.0.1", 0, backlog=4)
        _, writer = await asyncio.open_connection(*accepting.address)
        try:
            await asyncio.wait_for(served.wait(), 10)
        finally:
            writer.close()
            accepting.close()
            await accepting.wait_closed()
        assert not failures

    asyncio.run(main())
    return waits


def test_an_accept_out_of_descriptors_waits_then_serves_the_next_connection(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ringlock.transport"):
        waits = serve_after_failures(monkeypatch, [OSError(errno.EMFILE, "Too many open files")])
    assert waits == [ACCEPT_RETRY_S]
    assert "Too many open files; retrying in 1 s" in caplog.text


def test_an_accept_of_a_reset_connection_is_skipped_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    waits = serve_after_failures(monkeypatch, [OSError(errno.ECONNABORTED, "aborted")])
    assert waits == []
