"""Watch streams: a client's request answered by an ack, then by every matching change
of one shard, pushed on the same connection as the shard's replica here applies it.

Why here and not in the state machine: the state machine only remembers recent changes
(statemachine/history.py); who is listening, on which connection, and how far each has
got is this node's business, like the answers to its requests.

Why one shard per watch: revisions are per shard, so "every change after revision r"
only means something within one shard. A client watching a prefix that spans shards
opens one watch per shard and merges them (client/watch.py).

Why on the leader: any replica applies every entry and could serve, but the client
routes to leaders, and a leader that loses its leadership (a partition, a transfer,
check-quorum) ends its watches with NotLeader, which sends the client to the new leader
at once rather than leaving it on a replica that may be cut off and silent. Events are
pushed only for applied (so committed) entries: nothing pushed is ever taken back.

Wire format (docs/PROTOCOL.md):

    -> {"id": w, "op": "watch", "shard": s, "prefix": bytes, "exact"?: bool,
        "start_revision"?: int}                     start_revision 0 or absent: from now
    <- {"id": w, "ok": {"start": n, "revision": r, "floor": f}}
    <- {"id": w, "events": [[revision, kind, key, value, lease], ...], "rev": r2}  (many)
    <- {"id": w, "err": code, "msg": text[, "floor": f][, "leader": addr]}       ends it
    -> {"id": c, "op": "watch_cancel", "watch": w}
    <- {"id": w, "end": true} then {"id": c, "ok": true}

`rev` in an event frame: every matching change up to `rev` has now been sent, so a
client resumes from `rev + 1`. A watcher with nothing to report is sent an empty frame
every `WATCH_PROGRESS_REVISIONS` revisions, which keeps its resume point inside the
history even when its keys are quiet and the shard is busy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ringlock.errors import (
    BadRequest,
    Compacted,
    RequestError,
    TooLarge,
    WatchLagged,
    WrongShard,
)
from ringlock.raft.messages import Role
from ringlock.server import requests as rq
from ringlock.server.requests import error_body
from ringlock.sharding.keys import shard_of
from ringlock.statemachine.history import MAX_WATCH_HISTORY_BYTES, Change

if TYPE_CHECKING:
    from ringlock.server.connection import Connection
    from ringlock.server.node import Node
    from ringlock.server.replica import ShardReplica

log = logging.getLogger("ringlock.server")

WATCH_OPS = frozenset({"watch", "watch_cancel"})
"""Requests the connection hands here rather than to `Node.dispatch`: their answers are
streams, tied to the connection they came on."""
MAX_WATCHES_PER_CONNECTION = 1024
"""Watches open on one connection; one more gets TooLarge. A prefix watch costs one per
shard."""
MAX_WATCHES_PER_NODE = 65_536
"""Watches open on one node over all its connections; one more gets TooLarge."""
MAX_WATCH_BACKLOG_BYTES = MAX_WATCH_HISTORY_BYTES
"""Bytes written to a connection and not yet taken by its reader, above which a watch
with more to send on it is ended with WatchLagged (the client resumes it from history
once it has read what was sent). At least the history's byte limit (its keys and values,
counted with more overhead than their events take), so replaying a full history does not
by itself end the watch."""
MAX_WATCH_FRAME_BYTES = 1024 * 1024
"""Events are cut into frames of about this many bytes (a frame holds at least one event;
the largest key and value fit in `max_frame_bytes`)."""
WATCH_PROGRESS_REVISIONS = 1000
"""A watcher whose keys are quiet is told how far the shard has got after this many
revisions, so that its resume point stays inside the history."""
_EVENT_BYTES = 32
"""msgpack overhead of one event besides its key and value, to size frames."""


@dataclass(eq=False)
class Watcher:
    connection: Connection
    request_id: int
    shard: int
    prefix: bytes
    exact: bool
    next: int
    """The first revision not yet sent: every matching change before it was."""
    reported: int
    """The last `rev` the client was told."""

    def matches(self, key: bytes) -> bool:
        return key == self.prefix if self.exact else key.startswith(self.prefix)


class WatchHub:
    """Every watch open on this node, by connection and by shard."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._by_connection: dict[Connection, dict[int, Watcher]] = {}
        self._by_shard: dict[int, dict[Watcher, None]] = {}
        self.count = 0
        self.events_sent = 0

    # ------------------------------------------------------------------- requests

    def request(self, connection: Connection, request_id: int, body: dict[str, Any]) -> None:
        """A `watch` or `watch_cancel` from a client connection. A refused request gets
        its error and changes nothing."""
        self.node.counters["requests"] += 1
        try:
            if body.get("op") == "watch":
                self._open(connection, request_id, body)
            else:
                self._cancel(connection, request_id, body)
        except RequestError as error:
            self._send_error(connection, request_id, error)

    def _open(self, connection: Connection, request_id: int, body: dict[str, Any]) -> None:
        config = self.node.config
        shard = rq.checked_shard(body, config.shards)
        prefix = rq.field(body, "prefix", bytes)
        exact = rq.field(body, "exact", bool, False)
        start = rq.field(body, "start_revision", int, 0)
        if not 0 <= start < 2**63:
            raise BadRequest(f"start_revision must be in 0..2**63-1, got {start}")
        if len(prefix) > config.max_key_bytes:
            raise TooLarge(f"prefix of {len(prefix)} bytes exceeds "
                           f"max_key_bytes={config.max_key_bytes}")
        if exact and not prefix:
            raise BadRequest("an exact watch needs a key")
        if exact and shard_of(prefix, config.shards) != shard:
            raise WrongShard(f"key belongs to shard {shard_of(prefix, config.shards)}, "
                             f"not {shard}")
        mine = self._by_connection.get(connection, {})
        if request_id in mine:
            raise BadRequest(f"id {request_id} already names a watch on this connection")
        if len(mine) >= MAX_WATCHES_PER_CONNECTION:
            raise TooLarge(f"{len(mine)} watches open on this connection "
                           f"(MAX_WATCHES_PER_CONNECTION={MAX_WATCHES_PER_CONNECTION})")
        if self.count >= MAX_WATCHES_PER_NODE:
            raise TooLarge(f"{self.count} watches open on node {self.node.id} "
                           f"(MAX_WATCHES_PER_NODE={MAX_WATCHES_PER_NODE})")
        replica = self.node._replica(shard)  # WrongShard if none here
        if replica.raft.role != Role.LEADER:
            raise replica.not_leader()
        sm = replica.sm
        history = sm.history
        if start and start <= history.floor:
            raise Compacted(f"shard {shard} remembers changes after revision {history.floor}"
                            f" only; asked from {start}", floor=history.floor)
        watcher = Watcher(connection, request_id, shard, prefix, exact,
                          next=start or sm.revision + 1, reported=0)
        watcher.reported = watcher.next - 1
        self._by_connection.setdefault(connection, {})[request_id] = watcher
        self._by_shard.setdefault(shard, {})[watcher] = None
        self.count += 1
        connection._send({"id": request_id, "ok": {"start": watcher.next,
                                                   "revision": sm.revision,
                                                   "floor": history.floor}})
        self._push(watcher, replica)  # the history since `start`, if any

    def _cancel(self, connection: Connection, request_id: int, body: dict[str, Any]) -> None:
        watch_id = rq.field(body, "watch", int)
        watcher = self._by_connection.get(connection, {}).get(watch_id)
        if watcher is not None:
            self._forget(watcher)
            connection._send({"id": watch_id, "end": True})
        connection._send({"id": request_id, "ok": watcher is not None})

    # -------------------------------------------------------------------- hooks

    def on_applied(self, replica: ShardReplica[Any]) -> None:
        """The node applied entries of `replica`'s shard: push what its watchers have
        not seen; a replica that no longer leads then ends its watches with NotLeader."""
        watchers = self._by_shard.get(replica.shard)
        if not watchers:
            return
        for watcher in list(watchers):
            self._push(watcher, replica)
        if replica.raft.role != Role.LEADER:
            error = replica.not_leader()
            for watcher in list(self._by_shard.get(replica.shard, ())):
                self._end(watcher, error)

    def on_dropped(self, shard: int) -> None:
        """This node no longer holds the shard: its watchers go elsewhere."""
        for watcher in list(self._by_shard.get(shard, ())):
            self._end(watcher, WrongShard(f"node {self.node.id} no longer holds shard {shard}"))

    def drop_connection(self, connection: Connection) -> None:
        """The connection closed: nobody is left to tell."""
        for watcher in list(self._by_connection.get(connection, {}).values()):
            self._forget(watcher)

    # ------------------------------------------------------------------ pushing

    def _push(self, watcher: Watcher, replica: ShardReplica[Any]) -> None:
        sm = replica.sm
        history = sm.history
        if watcher.next <= history.floor:
            # The changes it has not seen are forgotten (a snapshot replaced the state,
            # or more changes came than the history keeps).
            self._end(watcher, Compacted(
                f"shard {watcher.shard}: changes from {watcher.next} are no longer "
                f"remembered (floor {history.floor})", floor=history.floor))
            return
        revision = sm.revision
        changes: list[Change] = []
        if history.last_revision >= watcher.next:
            changes = history.since(watcher.next, watcher.matches)
        watcher.next = max(watcher.next, revision + 1)
        if not changes and revision - watcher.reported < WATCH_PROGRESS_REVISIONS:
            return
        connection = watcher.connection
        if _backlog(connection) > MAX_WATCH_BACKLOG_BYTES:
            self._end(watcher, WatchLagged(
                f"the connection is {_backlog(connection)} bytes behind "
                f"(MAX_WATCH_BACKLOG_BYTES={MAX_WATCH_BACKLOG_BYTES}); resume the watch"))
            return
        frame: list[list[Any]] = []
        size = 0
        for change in changes:
            if frame and size + _event_bytes(change) > MAX_WATCH_FRAME_BYTES:
                connection._send({"id": watcher.request_id, "events": frame,
                                  "rev": frame[-1][0]})
                frame, size = [], 0
            frame.append(list(change))
            size += _event_bytes(change)
        connection._send({"id": watcher.request_id, "events": frame, "rev": revision})
        watcher.reported = revision
        self.events_sent += len(changes)

    def _end(self, watcher: Watcher, error: RequestError) -> None:
        self._forget(watcher)
        self._send_error(watcher.connection, watcher.request_id, error)

    def _forget(self, watcher: Watcher) -> None:
        mine = self._by_connection.get(watcher.connection)
        if mine is None or mine.get(watcher.request_id) is not watcher:
            return
        del mine[watcher.request_id]
        if not mine:
            del self._by_connection[watcher.connection]
        shard = self._by_shard[watcher.shard]
        del shard[watcher]
        if not shard:
            del self._by_shard[watcher.shard]
        self.count -= 1

    @staticmethod
    def _send_error(connection: Connection, request_id: int, error: RequestError) -> None:
        if isinstance(error, Compacted):
            body = error_body(request_id, error)
            body["floor"] = error.floor
            connection._send(body)
        else:
            connection.send_error(request_id, error)


def _event_bytes(change: Change) -> int:
    return len(change.key) + len(change.value or b"") + _EVENT_BYTES


def _backlog(connection: Connection) -> int:
    """Bytes sent on `connection` that its reader has not taken yet, and this turn's."""
    transport = connection.writer.transport
    buffered = transport.get_write_buffer_size() if transport is not None else 0
    return buffered + sum(map(len, connection._out))
