"""AsyncLock._call_or_moved: the lock call raced against a change of the shard's leader.
A change gives None at once and leaves the acquiring task uncancelled, even when the call
swallows its own cancel; an answer is returned; an outside cancel still reaches the
caller; a change already known makes no call."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ringlock.client.locks import AsyncLock


class FakeClient:
    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.route: asyncio.Future[None] = loop.create_future()
        self.answer: asyncio.Future[Any] = loop.create_future()
        self.calls = 0

    def route_changed(self, shard: int) -> asyncio.Future[None]:
        return self.route

    async def shard_call(self, shard: int, body: dict[str, Any], timeout: float, *,
                         attempt_timeout: float) -> Any:
        self.calls += 1
        return await self.answer


class SwallowingClient(FakeClient):
    """Its call first waits for a connection with wait_for, which in 3.11 returns the
    connection instead of raising when it opened in the same loop turn as the cancel."""

    def __init__(self) -> None:
        super().__init__()
        self.connected: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def shard_call(self, shard: int, body: dict[str, Any], timeout: float, *,
                         attempt_timeout: float) -> Any:
        self.calls += 1
        await asyncio.wait_for(self.connected, timeout)
        return await self.answer


class Holder:
    def __init__(self, client: FakeClient) -> None:
        self.client = client


async def call(client: FakeClient) -> asyncio.Future[Any] | None:
    return await AsyncLock._call_or_moved(Holder(client), 1, {}, 5.0)  # type: ignore[arg-type]


def test_a_leader_change_during_the_call_gives_none_and_leaves_the_task_uncancelled() -> None:
    async def main() -> None:
        client = FakeClient()
        task = asyncio.ensure_future(call(client))
        await asyncio.sleep(0)
        client.route.set_result(None)
        assert await task is None
        assert task.cancelling() == 0

        async def inside() -> tuple[Any, int]:  # the same, seen from the acquiring task
            client2 = FakeClient()
            asyncio.get_running_loop().call_soon(client2.route.set_result, None)
            result = await call(client2)
            await asyncio.sleep(0)  # no cancel left pending in this task
            current = asyncio.current_task()
            assert current is not None
            return result, current.cancelling()

        assert await inside() == (None, 0)

    asyncio.run(main())


def test_an_answer_is_returned_and_a_later_leader_change_cancels_nothing() -> None:
    async def main() -> None:
        client = FakeClient()
        client.answer.set_result(("granted", 7))
        answer = await call(client)
        assert answer is not None and answer.result() == ("granted", 7)
        client.route.set_result(None)  # its callback was removed, or finds the call over
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # would raise CancelledError had the change cancelled us

        failing = FakeClient()
        failing.answer.set_exception(TimeoutError("slow"))
        answer = await call(failing)
        assert answer is not None
        with pytest.raises(TimeoutError):
            answer.result()

    asyncio.run(main())


def test_a_cancel_from_outside_is_not_swallowed_even_with_a_leader_change() -> None:
    async def main() -> None:
        client = FakeClient()
        task = asyncio.ensure_future(call(client))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        both = FakeClient()
        task = asyncio.ensure_future(call(both))
        await asyncio.sleep(0)
        both.route.set_result(None)
        task.cancel()  # the caller gives up too: that cancel must reach it
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_a_route_already_changed_makes_no_call() -> None:
    async def main() -> None:
        client = FakeClient()
        client.route.set_result(None)
        assert await call(client) is None
        assert client.calls == 0

    asyncio.run(main())


def test_a_leader_change_wakes_the_wait_even_if_the_call_swallows_its_cancel() -> None:
    async def main() -> None:
        client = SwallowingClient()
        task = asyncio.ensure_future(call(client))
        for _ in range(3):
            await asyncio.sleep(0)
        client.connected.set_result(None)  # the connection opens in the same turn ...
        client.route.set_result(None)  # ... as the leader is given up
        assert await asyncio.wait_for(task, 2.0) is None  # not left waiting at the old one
        assert task.cancelling() == 0

    asyncio.run(main())
