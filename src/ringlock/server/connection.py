"""One accepted TCP connection: a client's pipelined requests, or a peer's Raft stream.

Requests are handled as the socket delivers them, in the protocol's callback
(transport/streams.py); answers are gathered and written once per loop turn, so a
pipelining client costs one `send` per turn, not one per request. A malformed frame
gets a typed error frame and the connection is closed: its byte stream can no longer be
trusted to be in step.

On a node with a cluster secret, a connection starts unauthenticated: it may only say
`hello` and `auth` (transport/auth.py); anything else gets `Unauthorized` and changes
nothing, and a wrong proof gets `Unauthorized` and the connection is closed. A peer's
Raft stream is read only once its proof is checked. Without a secret every connection
starts authenticated, and the request path is the same as before.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, cast

from ringlock.codec.frames import FrameDecoder, FrameError, FrameTooLarge, encode_frame
from ringlock.errors import (
    BadRequest,
    NotLeader,
    RequestError,
    TooLarge,
    Unauthorized,
    WrongShard,
)
from ringlock.server.requests import encode_result, error_body
from ringlock.server.watches import WATCH_OPS
from ringlock.transport.auth import MISSING_SECRET, AcceptHandshake
from ringlock.transport.streams import DirectReader
from ringlock.transport.tls import TLS_RECORD_HANDSHAKE, peer_certificate

if TYPE_CHECKING:
    from ringlock.server.node import Node

log = logging.getLogger("ringlock.server")
MAX_UNSENT_BYTES = 8 << 20
"""Answers written but not yet taken by the socket: past this, the connection's
requests are not read until they are."""
AUTH_TIMEOUT_S = 10.0
"""On a node with a secret, a connection that has not proved it by then is closed: an
unauthenticated party must not hold a descriptor and buffers for ever (a client's
handshake takes one round trip, its CONNECT_TIMEOUT_S is 2 s)."""


class Connection:
    def __init__(self, node: Node, reader: DirectReader,
                 writer: asyncio.StreamWriter) -> None:
        self.node = node
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder(max_frame_bytes=node.config.max_frame_bytes)
        self.peer: int | None = None
        secret = node.config.secret
        self.authenticated = not secret
        self.handshake = AcceptHandshake(secret, node.config.cluster) if secret else None
        self._claimed_peer: int | None = None
        """A peer's node id from its hello, made `peer` once its proof is checked."""
        self.inflight = 0
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._draining: asyncio.Task[None] | None = None
        """Set while reading is paused for the answers to go out (MAX_UNSENT_BYTES)."""
        self.closed = False
        peer = writer.get_extra_info("peername")
        self.name = f"{peer[0]}:{peer[1]}" if peer else "?"

    async def serve(self) -> None:
        deadline = None
        if not self.authenticated:
            deadline = asyncio.get_running_loop().call_later(AUTH_TIMEOUT_S,
                                                             self._auth_expired)
        try:
            await self.reader.consume(self._received)
        except (ConnectionError, OSError):
            pass
        finally:
            if deadline is not None:
                deadline.cancel()
            if self._draining is not None:
                self._draining.cancel()
            self.node.watches.drop_connection(self)
            self._close()

    def _received(self, data: bytes) -> None:
        """Bytes as the socket delivers them (transport/streams.py): each whole frame is
        handled at once, with no await between frames."""
        if self.closed:
            return
        try:
            bodies = self.decoder.feed(data)
        except FrameError as error:
            if data[:1] == bytes([TLS_RECORD_HANDSHAKE]) and not error.frames:
                error = FrameError("a TLS client at this plain-text port "
                                   "(the node has no TLS configured)")
            # The valid frames before the bad one (same read) are answered first.
            for body in error.frames:
                if not self.closed:
                    self._handle(body)
            self._refuse(TooLarge(str(error)) if isinstance(error, FrameTooLarge)
                         else BadRequest(str(error)))
            return
        for body in bodies:
            if self.closed:
                break
            self._handle(body)
        if (self._out and self._draining is None
                and self.writer.transport.get_write_buffer_size() > MAX_UNSENT_BYTES):
            # A client that sends faster than it reads its answers: read no more of it
            # until what it was sent has gone out.
            self.flush()
            self._transport().pause_reading()
            self._draining = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            await self.writer.drain()
        except (ConnectionError, OSError):
            return
        finally:
            self._draining = None
        if not self.closed and not self.writer.is_closing():
            self._transport().resume_reading()

    def _transport(self) -> asyncio.Transport:
        return cast(asyncio.Transport, self.writer.transport)  # a socket's: both ways

    def _auth_expired(self) -> None:
        if self.authenticated or self.closed:
            return
        error = Unauthorized(f"the cluster secret was not proved within "
                             f"AUTH_TIMEOUT_S={AUTH_TIMEOUT_S:g} s")
        self._close_with(0, str(error), error)

    def _refuse(self, error: RequestError) -> None:
        log.warning("connection %s: %s; closing it", self.name, error)
        self._out.append(encode_frame(error_body(0, error)))
        self._close()

    def _handle(self, body: Any) -> None:
        if self.peer is not None:
            raft = body.get("raft") if isinstance(body, dict) else None
            if not isinstance(raft, list):
                log.warning("peer %d sent a frame without raft messages", self.peer)
                return
            self.node.on_raft_messages(self.peer, raft)
            return
        if not isinstance(body, dict):
            self.send_error(0, BadRequest("a request must be a map"))
            return
        request_id = body.get("id")
        if type(request_id) is not int:
            self.send_error(0, BadRequest("a request needs an integer 'id'"))
            return
        op = body.get("op")
        if op == "hello":
            self._hello(request_id, body)
            return
        if not self.authenticated:
            if op == "auth":
                self._auth(request_id, body)
            else:
                self.send_error(request_id, Unauthorized(MISSING_SECRET))
            return
        if op in WATCH_OPS:  # streams, bounded on their own: server/watches.py
            self.node.watches.request(self, request_id, body)
            return
        if self.inflight >= self.node.config.max_inflight_per_connection:
            limit = self.node.config.max_inflight_per_connection
            self.send_error(request_id, TooLarge(
                f"{self.inflight} requests in flight on this connection "
                f"(max_inflight_per_connection={limit})"))
            return
        self.inflight += 1
        self.node.dispatch(body, self._replier(request_id), self)

    def _hello(self, request_id: int, body: dict[str, Any]) -> None:
        """A peer's stream starts here. Refused, the stream is closed: what follows is
        Raft traffic that must not be read as client requests; the peer reconnects
        (a new member is refused until this node's map names it)."""
        node = body.get("node")
        is_client = node is None and "nonce" in body  # a client proving the secret
        refusal: RequestError | None = None
        if is_client:
            pass
        elif body.get("cluster") != self.node.config.cluster:
            refusal = BadRequest(f"this node belongs to cluster {self.node.config.cluster!r}")
        elif type(node) is not int or not self.node.is_peer(node):
            refusal = BadRequest(f"node {node!r} is not a member in this node's map")
        elif self.node.config.tls and not peer_certificate(self.writer):
            refusal = Unauthorized("a peer must present a certificate signed by the CA")
        if refusal is None and self.handshake is not None:
            try:
                challenge = self.handshake.challenge(body)
            except RequestError as error:
                refusal = error
            else:
                self._claimed_peer = None if is_client else node
                self._send({"id": request_id, "ok": challenge})
                return
        if refusal is not None:
            self._close_with(request_id, f"hello refused: {refusal}", refusal)
            return
        if "nonce" in body:  # it has a secret, this node none: it will refuse us
            self._send({"id": request_id, "ok": {"auth": False}})
        if not is_client:
            assert type(node) is int  # checked above
            self._become_peer(node)

    def _auth(self, request_id: int, body: dict[str, Any]) -> None:
        """The proof answering this connection's challenge: right, the connection may do
        anything; wrong (or before hello, or twice), it is closed."""
        assert self.handshake is not None
        try:
            self.handshake.verify(body)
        except Unauthorized as error:
            self._close_with(request_id, f"authentication failed: {error}", error)
            return
        self.authenticated = True
        if self._claimed_peer is not None:
            self._become_peer(self._claimed_peer)  # a peer's link reads only refusals
        else:
            self._send({"id": request_id, "ok": True})

    def _become_peer(self, node: int) -> None:
        self.peer = node
        self.decoder.max_frame_bytes = self.node.config.max_peer_frame_bytes

    def _close_with(self, request_id: int, reason: str, error: RequestError) -> None:
        level = logging.WARNING if isinstance(error, Unauthorized) else logging.INFO
        log.log(level, "connection %s: %s; closing it", self.name, reason)
        self.send_error(request_id, error)
        self._close()

    def _close(self) -> None:
        """Write what is gathered, then close: ends serve's consume."""
        self.flush()
        self.closed = True
        self.writer.close()

    def _replier(self, request_id: int) -> Any:
        def reply(result: Any, error: RequestError | None) -> None:
            self.inflight -= 1
            if error is not None:
                self.send_error(request_id, error)
            else:
                self._send({"id": request_id, "ok": encode_result(result)})

        return reply

    def send_error(self, request_id: int, error: RequestError) -> None:
        body = error_body(request_id, error)
        if isinstance(error, (NotLeader, WrongShard)) and "version" not in body:
            # Routing errors carry this node's map version: a client with an older map
            # fetches it again (a shard moved; a node joined or left).
            body["version"] = self.node.membership.map.version
        self._send(body)

    def _send(self, body: dict[str, Any]) -> None:
        if self.closed:
            return
        try:
            frame = encode_frame(body, max_frame_bytes=self.node.config.max_frame_bytes)
        except FrameTooLarge as error:
            frame = encode_frame(error_body(body["id"], TooLarge(str(error))))
        self._out.append(frame)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.node.answers_waiting.add(self)
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write the gathered answers: at the end of this loop turn, or sooner when the
        node is about to block in an fsync (an answer must not wait for that)."""
        self._flush_scheduled = False
        self.node.answers_waiting.discard(self)
        if self._out and not self.writer.is_closing():
            self.writer.write(b"".join(self._out))
        self._out = []
