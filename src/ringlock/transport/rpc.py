"""A client's connection to one node: many requests in flight, answers matched by id.

Requests are written as they come and flushed once per loop turn; a reader task hands
each answer to the future waiting on its id. When the connection breaks, every waiting
call fails with `Unavailable`, which the client retries elsewhere.

With a `secret`, a new connection first proves it (transport/auth.py): one round trip,
then requests flow. A refused proof, or a node without TLS when we use it (or the
reverse), fails every waiting call with `Unauthorized` or `TlsError`, which the client
does not retry: the same settings would fail the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import ssl as _ssl
from collections.abc import Callable
from typing import Any

from ringlock.codec.frames import MAX_FRAME_BYTES, FrameDecoder, FrameError, encode_frame
from ringlock.errors import (
    ERROR_CODES,
    Compacted,
    NotLeader,
    RequestError,
    TlsError,
    Unauthorized,
    Unavailable,
    WrongShard,
)
from ringlock.transport.auth import ConnectHandshake
from ringlock.transport.streams import DirectReader
from ringlock.transport.tls import is_fatal, open_stream

CONNECT_TIMEOUT_S = 2.0
"""Connecting, with the TLS handshake and the secret's proof, within this."""
TIMEOUT_GRANULARITY_S = 0.01
"""A call's timeout fires up to this much late: calls whose deadlines fall in one such
slice share one timer, so the hot path pays a dict lookup and an append rather than a
timer pushed onto the loop's heap and cancelled again per call."""
MAX_SHARED_TIMEOUT_S = 10.0
"""Calls with a longer timeout (a lock acquire that waits forever) get a timer of their
own, cancelled when they end: a shared slice keeps its entries until it comes due, so
long ones would pile up with every call ever made rather than with those in flight."""
FATAL_ERRORS = (Unauthorized, TlsError)
"""A node's refusals that no retry can fix (the same settings fail the same way): they
fail the connection's calls as they are, not as Unavailable."""


class Abandoned(Exception):
    """A call's caller stopped waiting for it (`call`'s `abandon`). Not a RequestError:
    nothing retries it, it goes back to the caller that gave up."""


class RpcConnection:
    def __init__(self, address: str, *, max_frame_bytes: int = MAX_FRAME_BYTES,
                 secret: str | None = None, ssl: _ssl.SSLContext | None = None) -> None:
        self.address = address
        self.max_frame_bytes = max_frame_bytes
        self._secret = secret
        self._ssl = ssl
        self._stream: asyncio.StreamWriter | None = None
        """The open stream, from connect on; `_writer` is set once it may carry requests."""
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._deadlines: dict[int, list[tuple[int, float]]] = {}
        """Timer slice -> (request id, timeout) of the calls whose deadline falls in it."""
        self._streams: dict[int, RpcStream] = {}
        """Stream calls (`stream`): one request id, many frames."""
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._connecting: asyncio.Future[None] | None = None
        self.broken = False
        self._broken_error: RequestError | None = None
        """Why the node refused this connection, if it said (raised by later calls)."""
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
        try:
            reader, writer = await open_stream(self.address, self._ssl, CONNECT_TIMEOUT_S,
                                               direct=True)
        except (OSError, TimeoutError) as error:
            self.broken = True
            if is_fatal(error):
                raise TlsError(f"TLS with {self.address} failed: {error} (does the node "
                               "use TLS, with a certificate from this CA?)") from error
            raise Unavailable(f"cannot connect to {self.address}: {error}") from error
        self._stream = writer
        assert isinstance(reader, DirectReader)
        self._reader_task = asyncio.get_running_loop().create_task(self._read(reader))
        if self._secret:
            await self._authenticate(writer, self._secret)
        if self.broken:  # refused while connecting (a plain-text answer from a TLS port)
            raise self._broken_error or Unavailable(f"connection to {self.address} broke")
        self._writer = writer

    async def _authenticate(self, writer: asyncio.StreamWriter, secret: str) -> None:
        """Prove the secret; the proof goes out just before the first requests, so the
        handshake costs one round trip (the node closes the connection on a wrong one)."""
        handshake = ConnectHandshake(secret)
        request_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        writer.write(encode_frame({**handshake.hello(), "id": request_id}))
        try:
            challenge = await asyncio.wait_for(future, CONNECT_TIMEOUT_S)
            proof = handshake.answer(challenge, self.address)
        except RequestError as error:
            self._break(str(error), error)
            raise
        except TimeoutError as error:
            self._break(f"{self.address}: no answer to the handshake")
            raise Unavailable(f"{self.address}: no answer to the handshake") from error
        finally:
            self._waiting.pop(request_id, None)
        writer.write(encode_frame({**proof, "id": 0}))

    async def _read(self, reader: DirectReader) -> None:
        """Answers are delivered as the socket hands them over (transport/streams.py):
        the caller's task wakes in the next loop iteration, not the one after."""
        decoder = FrameDecoder(max_frame_bytes=self.max_frame_bytes)
        reason = "connection closed by the node"

        def received(data: bytes) -> None:
            for body in decoder.feed(data):  # a FrameError ends the stream
                self.frames_in += 1
                self._deliver(body)

        try:
            await reader.consume(received)
        except (OSError, FrameError) as error:
            reason = f"connection to {self.address} failed: {error}"
        finally:
            self._break(reason)

    def _deliver(self, body: Any) -> None:
        if not isinstance(body, dict):
            return
        stream = self._streams.get(body.get("id", 0))
        if stream is not None:
            stream._push(body)
            return
        future = self._waiting.pop(body.get("id", 0), None)
        if future is None:
            if body.get("id") == 0 and "err" in body:  # the node refused the stream
                error = error_from(body)
                self._break(f"{self.address} refused the connection: {body.get('msg')}",
                            error if isinstance(error, FATAL_ERRORS) else None)
            return
        if future.done():
            return
        if "err" in body:
            future.set_exception(error_from(body))
        else:
            future.set_result(body.get("ok"))

    def _break(self, reason: str, error: RequestError | None = None) -> None:
        """Fail everything waiting: with `error` when the node said why (Unauthorized,
        TlsError: not to be retried), else with Unavailable (retried elsewhere)."""
        if not self.broken and error is not None:
            self._broken_error = error
        self.broken = True
        self._deadlines.clear()  # every call waiting is failed just below
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(_copy(error) if error is not None
                                     else Unavailable(reason))
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream._end(_copy(error) if error is not None else Unavailable(reason))
        if self._stream is not None:
            self._stream.close()

    async def call(self, body: dict[str, Any], timeout: float, *,
                   abandon: asyncio.Future[None] | None = None) -> Any:
        """Send `body` (an `op` and its fields) and wait for its answer; `Abandoned` as
        soon as `abandon` is done, if given (the caller stopped believing in this node:
        a lock wait whose shard's leader moved)."""
        if abandon is not None and abandon.done():
            raise Abandoned(f"{self.address}: the call was abandoned before it was sent")
        if self._writer is None or self.broken:
            await self._ready(timeout)
        request_id = next(self._ids)
        body["id"] = request_id
        self._enqueue(body)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._waiting[request_id] = future
        # Not asyncio.wait_for (a task-like wrapper and several callbacks per call) nor,
        # for the usual short timeouts, a timer per call: this is the client's hot path.
        # See TIMEOUT_GRANULARITY_S and MAX_SHARED_TIMEOUT_S.
        own_timer = None
        if timeout > MAX_SHARED_TIMEOUT_S:
            own_timer = loop.call_later(timeout, self._expire_one, request_id, timeout)
        else:
            slot = -int(-(loop.time() + timeout) // TIMEOUT_GRANULARITY_S)  # rounded up
            due = self._deadlines.get(slot)
            if due is None:
                due = self._deadlines[slot] = []
                loop.call_at(slot * TIMEOUT_GRANULARITY_S, self._expire, slot)
            due.append((request_id, timeout))
        give_up = None  # made only for a call that may be abandoned: not on every call
        if abandon is not None:
            give_up = functools.partial(_give_up, future, self.address)
            abandon.add_done_callback(give_up)
        try:
            return await future
        finally:
            self._waiting.pop(request_id, None)
            if own_timer is not None:
                own_timer.cancel()
            if abandon is not None and give_up is not None:
                abandon.remove_done_callback(give_up)

    def _expire(self, slot: int) -> None:
        for request_id, timeout in self._deadlines.pop(slot, ()):
            self._expire_one(request_id, timeout)

    def _expire_one(self, request_id: int, timeout: float) -> None:
        future = self._waiting.get(request_id)
        if future is not None and not future.done():
            future.set_exception(TimeoutError(f"no answer within {timeout:.3f} s"))

    async def stream(self, body: dict[str, Any], timeout: float, *,
                     cancel: Callable[[int], dict[str, Any]] | None = None) -> RpcStream:
        """Send `body` and return its stream of frames. The first is the answer
        (`{"ok": ...}`, kept as the stream's `answer`), awaited here for `timeout`; more
        follow until the node ends the stream (an error or `{"end": true}`) or it is
        closed. A broken connection ends it with Unavailable. `cancel(id)` is the request
        that ends the stream on the node, sent if its answer does not come in time."""
        await self._ready(timeout)
        request_id = next(self._ids)
        body["id"] = request_id
        stream = RpcStream(self, request_id)
        self._streams[request_id] = stream
        self.send(body)
        try:
            stream.answer = (await stream.next(timeout)).get("ok")
        except BaseException:
            stream.close(None if cancel is None else cancel(request_id))
            raise
        return stream

    def send(self, body: dict[str, Any]) -> None:
        """Send `body` without waiting for an answer (one that comes is dropped)."""
        if self.broken or self._writer is None:
            return
        body.setdefault("id", next(self._ids))
        self._enqueue(body)

    async def _ready(self, timeout: float) -> None:
        """Connected and not broken, or Unavailable."""
        if self._writer is None:
            await asyncio.wait_for(self.connect(), timeout)
        if self.broken or self._writer is None:
            if self._broken_error is not None:
                raise _copy(self._broken_error)
            raise Unavailable(f"connection to {self.address} is broken")

    def _enqueue(self, body: dict[str, Any]) -> None:
        """Encode `body` (FrameTooLarge before anything is queued) and write it with the
        rest of this loop turn's frames."""
        self._out.append(encode_frame(body, max_frame_bytes=self.max_frame_bytes))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

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


def _give_up(future: asyncio.Future[Any], address: str, _: object) -> None:
    """A call's `abandon` is done: its wait ends with `Abandoned`."""
    if not future.done():
        future.set_exception(Abandoned(f"{address}: the call was abandoned"))


def _copy(error: RequestError) -> RequestError:
    """A fresh exception per waiter: one instance raised in many tasks would gather
    every task's traceback."""
    return type(error)(str(error))


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


class RpcStream:
    """The frames answering one stream call, in order. `next` returns a frame's body,
    raises the error an error frame carries (and the stream is over), raises
    `StreamEnded` after an end frame, and `Unavailable` if the connection broke."""

    def __init__(self, connection: RpcConnection, request_id: int) -> None:
        self.connection = connection
        self.id = request_id
        self._frames: asyncio.Queue[dict[str, Any] | RequestError] = asyncio.Queue()
        self.ended = False
        self.answer: Any = None

    def _push(self, body: dict[str, Any]) -> None:
        if "err" in body:
            error = error_from(body)
            if isinstance(error, Compacted) and type(body.get("floor")) is int:
                error.floor = body["floor"]
            self._end(error)
        elif body.get("end"):
            self._end(StreamEnded(f"stream {self.id} ended"))
        else:
            self._frames.put_nowait(body)

    def _end(self, error: RequestError) -> None:
        if not self.ended:
            self.ended = True
            self.forget()
            self._frames.put_nowait(error)

    async def next(self, timeout: float | None = None) -> dict[str, Any]:
        item = (await asyncio.wait_for(self._frames.get(), timeout) if timeout is not None
                else await self._frames.get())
        if isinstance(item, RequestError):
            self._frames.put_nowait(item)  # every later call raises it too
            raise item
        return item

    def forget(self) -> None:
        """Stop taking this stream's frames (those still coming are dropped)."""
        if self.connection._streams.get(self.id) is self:
            del self.connection._streams[self.id]

    def close(self, cancel: dict[str, Any] | None = None) -> None:
        """Stop listening, and send `cancel` (which must name this stream) if the node
        still thinks it is open."""
        self.forget()
        if not self.ended:
            self.ended = True
            self._frames.put_nowait(StreamEnded(f"stream {self.id} closed"))
            if cancel is not None:
                self.connection.send(cancel)


class StreamEnded(RequestError):
    """The node ended a stream (or the client closed it): no more frames."""

    code = "StreamEnded"


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
