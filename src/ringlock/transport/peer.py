"""The outbound stream to one peer: every shard's Raft messages, batched per loop turn.

Raft tolerates lost messages, so a link never blocks its sender: while it is down, or
when its queue is full, messages are dropped and counted, and the Raft cores retry on
their own schedule (heartbeats, probes). The link reconnects with capped backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any

from ringlock.address import parse_address
from ringlock.codec.frames import FrameDecoder, FrameError, encode_frame

log = logging.getLogger("ringlock.transport")

MAX_QUEUED_MESSAGES = 20_000
"""Messages waiting for one peer before new ones are dropped."""
MAX_MESSAGES_PER_FRAME = 2_000
RECONNECT_MIN_S = 0.05
RECONNECT_MAX_S = 1.0
CONNECT_TIMEOUT_S = 2.0


class PeerLink:
    def __init__(self, self_id: int, peer_id: int, address: str, cluster: str,
                 max_frame_bytes: int) -> None:
        self.self_id = self_id
        self.peer_id = peer_id
        self.address = address
        self.cluster = cluster
        self.max_frame_bytes = max_frame_bytes
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
        host, port = parse_address(self.address)
        delay = RECONNECT_MIN_S
        while not self._closed:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port), CONNECT_TIMEOUT_S
                )
            except (OSError, TimeoutError):
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, RECONNECT_MAX_S)
                continue
            writer.write(encode_frame({"id": 0, "op": "hello", "node": self.self_id,
                                       "cluster": self.cluster}))
            refused = False
            self._writer = writer
            log.info("peer %d: connected to %s", self.peer_id, self.address)
            try:
                # The peer answers on this stream only to refuse it.
                decoder = FrameDecoder()
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

    async def close(self) -> None:
        self._closed = True
        if self._writer is not None:
            self._writer.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
