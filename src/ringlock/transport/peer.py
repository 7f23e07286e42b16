"""The outbound stream to one peer: every shard's Raft messages, batched per loop turn.

Raft tolerates lost messages, so a link never blocks its sender: while it is down, or
when its queue is full, messages are dropped and counted, and the Raft cores retry on
their own schedule (heartbeats, probes). The link reconnects with capped backoff.

With TLS, the link presents this node's certificate and checks the peer's against the
cluster's CA. With a secret, the link sends no Raft message before the peer has proved
it knows the secret and this node has answered its challenge (transport/auth.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl as _ssl
from typing import Any

from ringlock.codec.frames import FrameDecoder, FrameError, encode_frame
from ringlock.errors import RequestError
from ringlock.transport.auth import ConnectHandshake
from ringlock.transport.tls import open_stream

log = logging.getLogger("ringlock.transport")

MAX_QUEUED_MESSAGES = 20_000
"""Messages waiting for one peer before new ones are dropped."""
MAX_MESSAGES_PER_FRAME = 2_000
RECONNECT_MIN_S = 0.05
RECONNECT_MAX_S = 1.0
CONNECT_TIMEOUT_S = 2.0


class PeerLink:
    def __init__(self, self_id: int, peer_id: int, address: str, cluster: str,
                 max_frame_bytes: int, *, secret: str = "",
                 ssl: _ssl.SSLContext | None = None) -> None:
        self.self_id = self_id
        self.peer_id = peer_id
        self.address = address
        self.cluster = cluster
        self.max_frame_bytes = max_frame_bytes
        self._secret = secret
        self._ssl = ssl
        self._last_failure = ""
        """The last reason a connection failed, logged once rather than every retry."""
        self._queue: list[Any] = []
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.dropped = 0
        self.sent = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def connected(self) -> bool:
        return self._writer is not None

    def queue(self, message: Any) -> None:
        if self._writer is None or len(self._queue) >= MAX_QUEUED_MESSAGES:
            self.dropped += 1
            return
        self._queue.append(message)

    def flush(self) -> None:
        writer = self._writer
        if writer is None or not self._queue:
            return
        batch, self._queue = self._queue, []
        for start in range(0, len(batch), MAX_MESSAGES_PER_FRAME):
            chunk = batch[start : start + MAX_MESSAGES_PER_FRAME]
            try:
                writer.write(encode_frame({"raft": chunk}, max_frame_bytes=self.max_frame_bytes))
            except Exception as error:  # a frame too large: drop it, Raft retries
                self.dropped += len(chunk)
                log.warning("peer %d: dropped %d messages: %s", self.peer_id, len(chunk), error)
                continue
            self.sent += len(chunk)

    async def _run(self) -> None:
        delay = RECONNECT_MIN_S
        while not self._closed:
            opened = await self._open()
            if opened is None:
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, RECONNECT_MAX_S)
                continue
            reader, writer, decoder = opened
            refused = False
            self._writer = writer
            self._last_failure = ""
            log.info("peer %d: connected to %s", self.peer_id, self.address)
            try:
                # The peer answers on this stream only to refuse it.
                while not self._closed and (data := await reader.read(65536)):
                    for body in decoder.feed(data):
                        refused = True
                        log.warning("peer %d refused our stream: %s", self.peer_id, body)
            except (OSError, FrameError):
                pass
            self._writer = None
            self._queue.clear()
            writer.close()
            if not self._closed:
                log.info("peer %d: connection to %s lost", self.peer_id, self.address)
            if refused:  # e.g. we are new and its map does not name us yet: not too often
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, RECONNECT_MAX_S)
            else:
                delay = RECONNECT_MIN_S

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter,
                                   FrameDecoder] | None:
        """Connect, say hello, and prove the secret if there is one; None on failure."""
        try:
            reader, writer = await open_stream(self.address, self._ssl, CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as error:
            if isinstance(error, _ssl.SSLError):
                self._failed(f"TLS with {self.address} failed: {error}")
            return None
        hello: dict[str, Any] = {"id": 0, "op": "hello", "node": self.self_id,
                                 "cluster": self.cluster}
        decoder = FrameDecoder()
        if not self._secret:
            writer.write(encode_frame(hello))
            return reader, writer, decoder
        handshake = ConnectHandshake(self._secret, node=self.self_id, cluster=self.cluster)
        writer.write(encode_frame({**hello, **handshake.hello()}))
        try:
            body = await asyncio.wait_for(_first_frame(reader, decoder), CONNECT_TIMEOUT_S)
            if "ok" not in body:
                raise RequestError(f"refused: {body.get('err')}: {body.get('msg')}")
            writer.write(encode_frame({"id": 0, **handshake.answer(
                body["ok"], f"peer {self.peer_id} at {self.address}")}))
        except (OSError, TimeoutError, FrameError, RequestError) as error:
            self._failed(f"handshake with {self.address} failed: {error!r}")
            writer.close()
            return None
        return reader, writer, decoder

    def _failed(self, reason: str) -> None:
        if reason != self._last_failure:
            log.warning("peer %d: %s", self.peer_id, reason)
            self._last_failure = reason

    async def close(self) -> None:
        self._closed = True
        if self._writer is not None:
            self._writer.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


async def _first_frame(reader: asyncio.StreamReader, decoder: FrameDecoder) -> dict[str, Any]:
    """The first frame the peer sends (its handshake answer); others are not expected
    before our proof."""
    while True:
        data = await reader.read(65536)
        if not data:
            raise ConnectionError("closed during the handshake")
        bodies = decoder.feed(data)
        if bodies:
            body = bodies[0]
            return body if isinstance(body, dict) else {"err": "BadRequest", "msg": body}
