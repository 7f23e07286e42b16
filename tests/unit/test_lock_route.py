"""AsyncLock._call_or_moved: the lock call raced against a change of the shard's leader,
over a real RpcConnection to an in-process node stand-in. A change gives None at once,
frees the call's slot and cancels nothing; an answer is returned and an error raised;
an outside cancel still reaches the caller; a change already known sends nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from ringlock.client.locks import AsyncLock
from ringlock.codec.frames import FrameDecoder, encode_frame
from ringlock.transport.rpc import Abandoned, RpcConnection


class Stand:
    """A node stand-in: records each request; answers those whose op is "answer"."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder()
        while data := await reader.read(65536):
            for body in decoder.feed(data):
                self.requests.append(body)
                if body.get("op") == "answer":
                    writer.write(encode_frame({"id": body["id"], "ok": ["granted", 7]}))
        writer.close()


class FakeClient:
    def __init__(self, connection: RpcConnection) -> None:
        self.connection = connection
        self.route: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def route_changed(self, shard: int) -> asyncio.Future[None]:
        return self.route

    async def shard_call(self, shard: int, body: dict[str, Any], timeout: float, *,
                         attempt_timeout: float, abandon: asyncio.Future[None]) -> Any:
        return await self.connection.call(body, attempt_timeout, abandon=abandon)


class Holder:
    def __init__(self, client: FakeClient) -> None:
        self.client = client


@asynccontextmanager
async def standing() -> AsyncIterator[tuple[Stand, FakeClient]]:
    stand = Stand()
    server = await asyncio.start_server(stand.serve, "127.0.0.1", 0)
    connection = RpcConnection(f"127.0.0.1:{server.sockets[0].getsockname()[1]}")
    try:
        async with asyncio.timeout(10):
            await connection.connect()
            yield stand, FakeClient(connection)
    finally:
        await connection.close()
        server.close()


async def sent(stand: Stand, count: int) -> None:
    """Until the stand-in has read `count` requests (the test's timeout bounds it)."""
    while len(stand.requests) < count:
        await asyncio.sleep(0.001)


async def call(client: FakeClient, op: str = "wait") -> Any | None:
    return await AsyncLock._call_or_moved(Holder(client), 1, {"op": op},  # type: ignore[arg-type]
                                          60.0)


def test_a_leader_change_during_the_call_gives_none_frees_it_and_cancels_nothing() -> None:
    async def main() -> None:
        async with standing() as (stand, client):
            task = asyncio.ensure_future(call(client))
            await sent(stand, 1)
            client.route.set_result(None)
            assert await task is None
            assert task.cancelling() == 0
            assert client.connection._waiting == {}

            async def inside() -> tuple[Any, int]:  # the same, seen from the acquiring task
                again = FakeClient(client.connection)
                asyncio.get_running_loop().call_later(0.05, again.route.set_result, None)
                result = await call(again)
                await asyncio.sleep(0)  # no cancel left pending in this task
                current = asyncio.current_task()
                assert current is not None
                return result, current.cancelling()

            assert await inside() == (None, 0)

    asyncio.run(main())


def test_an_answer_is_returned_and_a_later_leader_change_cancels_nothing() -> None:
    async def main() -> None:
        async with standing() as (_, client):
            assert await call(client, "answer") == ["granted", 7]
            client.route.set_result(None)  # its callback was removed
            await asyncio.sleep(0)
            await asyncio.sleep(0)  # would raise here had the change cancelled us

    asyncio.run(main())


def test_a_failed_call_raises_its_error() -> None:
    async def main() -> None:
        async with standing() as (_, client):
            client.connection.broken = True  # refuses to send: Unavailable
            with pytest.raises(Exception, match="broken"):
                await call(client)

    asyncio.run(main())


def test_a_cancel_from_outside_is_not_swallowed_even_with_a_leader_change() -> None:
    async def main() -> None:
        async with standing() as (stand, client):
            task = asyncio.ensure_future(call(client))
            await sent(stand, 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

            both = FakeClient(client.connection)
            task = asyncio.ensure_future(call(both))
            await sent(stand, 2)
            both.route.set_result(None)
            task.cancel()  # the caller gives up too: that cancel must reach it
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())


def test_a_route_already_changed_sends_nothing() -> None:
    async def main() -> None:
        async with standing() as (stand, client):
            client.route.set_result(None)
            assert await call(client) is None
            with pytest.raises(Abandoned):  # nor does a call abandoned before it is sent
                await client.connection.call({"op": "wait"}, 1.0, abandon=client.route)
            assert await client.connection.call({"op": "answer"}, 5.0) == ["granted", 7]
            assert [r["op"] for r in stand.requests] == ["answer"]

    asyncio.run(main())
