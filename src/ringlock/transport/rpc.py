"""A client's connection to one node: many requests in flight, answers matched by id.

Requests are written as they come and flushed once per loop turn; a reader task hands
each answer to the future waiting on its id. When the connection breaks, every waiting
call fails with `Unavailable`, which the client retries elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Any

from ringlock.address import parse_address
from ringlock.codec.frames import MAX_FRAME_BYTES, FrameDecoder, FrameError, encode_frame
from ringlock.errors import ERROR_CODES, NotLeader, RequestError, Unavailable, WrongShard

CONNECT_TIMEOUT_S = 2.0


class RpcConnection:
    def __init__(self, address: str, *, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self.address = address
        self.max_frame_bytes = max_frame_bytes
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._connecting: asyncio.Future[None] | None = None
        self.broken = False
        self.frames_in = 0
        """Frames received: what tests count to show one release wakes one waiter."""

    async def connect(self) -> None:
        if self._writer is not None:
            return
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
            # Every caller may have been cancelled (a lock wait moving on): the failure
            # is still read here, so asyncio does not report it as never retrieved.
            self._connecting.add_done_callback(_retrieve)
        await asyncio.shield(self._connecting)

    async def _open(self) -> None:
        host, port = parse_address(self.address)
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port),
                                                    CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as error:
            self.broken = True
            raise Unavailable(f"cannot connect to {self.address}: {error}") from error
        self._writer = writer
        self._reader_task = asyncio.get_running_loop().create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        decoder = FrameDecoder(max_frame_bytes=self.max_frame_bytes)
        reason = "connection closed by the node"
        try:
            while True:
                data = await reader.read(256 * 1024)
                if not data:
                    break
                for body in decoder.feed(data):
                    self.frames_in += 1
                    self._deliver(body)
        except (OSError, FrameError) as error:
            reason = f"connection to {self.address} failed: {error}"
        finally:
            self._break(reason)

    def _deliver(self, body: Any) -> None:
        if not isinstance(body, dict):
            return
        future = self._waiting.pop(body.get("id", 0), None)
        if future is None:
            if body.get("id") == 0 and "err" in body:  # the node refused the stream
                self._break(f"{self.address} refused the connection: {body.get('msg')}")
            return
        if future.done():
            return
        if "err" in body:
            future.set_exception(error_from(body))
        else:
            future.set_result(body.get("ok"))

    def _break(self, reason: str) -> None:
        self.broken = True
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(Unavailable(reason))
        if self._writer is not None:
            self._writer.close()

    async def call(self, body: dict[str, Any], timeout: float) -> Any:
        """Send `body` (an `op` and its fields) and wait for its answer."""
        if self._writer is None:
            await asyncio.wait_for(self.connect(), timeout)
        if self.broken or self._writer is None:
            raise Unavailable(f"connection to {self.address} is broken")
        request_id = next(self._ids)
        body["id"] = request_id
        frame = encode_frame(body, max_frame_bytes=self.max_frame_bytes)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._waiting[request_id] = future
        self._out.append(frame)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        # A plain timer rather than asyncio.wait_for, which costs a task-like wrapper and
        # several callbacks per call: this is the client's hot path.
        timer = loop.call_later(timeout, _expire, future, timeout)
        try:
            return await future
        finally:
            timer.cancel()
            self._waiting.pop(request_id, None)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self._writer is not None and not self.broken:
            self._writer.write(b"".join(self._out))
        self._out = []

    async def close(self) -> None:
        self._break("connection closed by the client")
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def _expire(future: asyncio.Future[Any], timeout: float) -> None:
    if not future.done():
        future.set_exception(TimeoutError(f"no answer within {timeout:.3f} s"))


def error_from(body: dict[str, Any]) -> RequestError:
    cls = ERROR_CODES.get(str(body.get("err")), RequestError)
    message = str(body.get("msg", body.get("err")))
    version = body.get("version")
    version = version if type(version) is int else 0
    if cls is NotLeader:
        leader = body.get("leader")
        return NotLeader(message, leader if isinstance(leader, str) else None, version=version)
    if cls is WrongShard:
        return WrongShard(message, version=version)
    return cls(message)
