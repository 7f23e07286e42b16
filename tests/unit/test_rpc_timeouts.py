"""A call's timeout: shared 10 ms timer slices for short ones, a timer of its own for long
ones, and nothing kept once calls end (transport/rpc.py). The node here is a loopback
server that reads and never answers, or answers every request at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from ringlock.codec.frames import FrameDecoder, encode_frame
from ringlock.transport import rpc
from ringlock.transport.rpc import RpcConnection


@asynccontextmanager
async def node(answer: bool) -> AsyncIterator[str]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder()
        while data := await reader.read(65536):
            for body in decoder.feed(data):
                if answer:
                    writer.write(encode_frame({"id": body["id"], "ok": body.get("op")}))
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    try:
        yield f"{host}:{port}"
    finally:
        server.close()


@asynccontextmanager
async def connected(answer: bool) -> AsyncIterator[RpcConnection]:
    """A connection to such a node, closed afterwards."""
    async with node(answer) as address:
        connection = RpcConnection(address)
        try:
            yield connection
        finally:
            await connection.close()


def test_an_unanswered_call_times_out_on_time_within_one_slice() -> None:
    async def scenario() -> float:
        async with connected(answer=False) as connection:
            started = time.monotonic()
            with pytest.raises(TimeoutError, match=r"no answer within 0\.050 s"):
                await connection.call({"op": "get"}, 0.05)
            return time.monotonic() - started

    took = asyncio.run(scenario())
    assert 0.05 <= took < 0.05 + rpc.TIMEOUT_GRANULARITY_S + 0.5  # the loop's own lag


def test_a_long_timeout_times_out_too_and_leaves_no_entry() -> None:
    async def scenario() -> None:
        async with connected(answer=False) as connection:
            long = rpc.MAX_SHARED_TIMEOUT_S + 1
            call = asyncio.ensure_future(connection.call({"op": "get"}, long))
            await asyncio.sleep(0.05)
            assert not call.done()
            assert connection._deadlines == {}  # its own timer, not a shared slice
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            assert connection._waiting == {}

    asyncio.run(scenario())


def test_answered_calls_leave_nothing_once_their_slices_come_due() -> None:
    async def scenario() -> None:
        async with connected(answer=True) as connection:
            answers = await asyncio.gather(*(connection.call({"op": "put"}, 0.05)
                                             for _ in range(200)))
            assert answers == ["put"] * 200
            assert connection._waiting == {}
            await asyncio.sleep(0.05 + 2 * rpc.TIMEOUT_GRANULARITY_S)
            assert connection._deadlines == {}

    asyncio.run(scenario())


def test_a_broken_connection_fails_its_calls_and_drops_their_slices() -> None:
    async def scenario() -> None:
        async with connected(answer=False) as connection:
            calls = [asyncio.ensure_future(connection.call({"op": "get"}, 5.0))
                     for _ in range(3)]
            await asyncio.sleep(0.05)
            assert connection._deadlines
            await connection.close()
            results = await asyncio.gather(*calls, return_exceptions=True)
            assert all(type(r).__name__ == "Unavailable" for r in results), results
            assert connection._deadlines == {}

    asyncio.run(scenario())
