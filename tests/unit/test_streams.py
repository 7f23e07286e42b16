"""transport/streams.py: a DirectReader hands each chunk to its consumer inside the
protocol's callback, in order, from the bytes that came before `consume` on; a consumer
that raises ends the stream with its error; the end of the stream ends `consume`."""

from __future__ import annotations

import asyncio

import pytest

from ringlock import eventloop
from ringlock.transport import streams
from ringlock.transport.streams import DirectReader


def test_bytes_before_consume_come_first_in_order_and_eof_ends_it() -> None:
    async def main() -> None:
        reader = DirectReader()
        reader.feed_data(b"a")
        reader.feed_data(b"b")
        seen: list[bytes] = []
        consuming = asyncio.ensure_future(reader.consume(seen.append))
        await asyncio.sleep(0)
        assert seen == [b"a", b"b"]
        reader.feed_data(b"c")
        assert seen == [b"a", b"b", b"c"]  # at once, in the feeding call
        assert not consuming.done()
        reader.feed_eof()
        await asyncio.wait_for(consuming, 2)

    asyncio.run(main())


def test_a_consumer_that_raises_ends_the_stream_with_its_error() -> None:
    async def main() -> None:
        reader = DirectReader()
        seen: list[bytes] = []

        def consumer(data: bytes) -> None:
            if data == b"bad":
                raise ValueError("a malformed frame")
            seen.append(data)

        consuming = asyncio.ensure_future(reader.consume(consumer))
        await asyncio.sleep(0)
        reader.feed_data(b"ok")
        reader.feed_data(b"bad")
        reader.feed_data(b"after")  # dropped: the stream has ended
        with pytest.raises(ValueError, match="malformed"):
            await asyncio.wait_for(consuming, 2)
        assert seen == [b"ok"]

    asyncio.run(main())


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_socket_s_bytes_are_consumed_in_the_protocol_callback_not_a_task(loop: str) -> None:
    """The point of the module: no task runs between the socket's read and the consumer
    (inside a task, `current_task()` names it)."""

    async def main() -> None:
        tasks: list[asyncio.Task[object] | None] = []
        received = bytearray()
        done = asyncio.get_running_loop().create_future()

        def consumer(data: bytes) -> None:
            tasks.append(asyncio.current_task())
            received.extend(data)
            if len(received) >= 6 and not done.done():
                done.set_result(None)

        async def serve(reader: DirectReader, writer: asyncio.StreamWriter) -> None:
            await reader.consume(consumer)
            writer.close()

        server = await streams.start_server(serve, "127.0.0.1", 0, backlog=4)
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await streams.open_connection("127.0.0.1", port, ssl=None,
                                                           direct=False)
            writer.write(b"ping")
            await asyncio.sleep(0.05)
            writer.write(b"!!")
            await asyncio.wait_for(done, 5)
            assert bytes(received) == b"ping!!"
            assert tasks and all(task is None for task in tasks)
            writer.close()
            assert await asyncio.wait_for(reader.read(), 5) == b""  # served to its end
        finally:
            server.close()

    eventloop.run(main(), loop)


class PausableTransport:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")


def test_bytes_before_consume_past_the_limit_pause_the_socket_until_consume() -> None:
    async def main() -> None:
        reader = DirectReader()
        transport = PausableTransport()
        reader.set_transport(transport)  # type: ignore[arg-type]
        chunk = b"x" * (streams.MAX_EARLY_BYTES // 2)
        reader.feed_data(chunk)
        reader.feed_data(chunk)
        assert transport.calls == []  # at the limit, not past it
        reader.feed_data(b"y")
        reader.feed_data(b"z")  # (a read already under way when it paused)
        assert transport.calls == ["pause"]
        seen: list[bytes] = []
        consuming = asyncio.ensure_future(reader.consume(seen.append))
        await asyncio.sleep(0)
        assert seen == [chunk, chunk, b"y", b"z"]
        assert transport.calls == ["pause", "resume"]
        reader.feed_eof()
        await asyncio.wait_for(consuming, 2)

    asyncio.run(main())


def test_a_pause_the_consumer_makes_on_early_bytes_stands() -> None:
    """A connection whose answers back up pauses reading from its consumer
    (server/connection.py); resuming after the early bytes would undo that."""
    async def main() -> None:
        reader = DirectReader()
        transport = PausableTransport()
        reader.set_transport(transport)  # type: ignore[arg-type]
        reader.feed_data(b"x" * (streams.MAX_EARLY_BYTES + 1))
        consuming = asyncio.ensure_future(reader.consume(lambda data: transport.pause_reading()))
        await asyncio.sleep(0)
        assert transport.calls == ["pause", "resume", "pause"]
        reader.feed_eof()
        await asyncio.wait_for(consuming, 2)

    asyncio.run(main())
