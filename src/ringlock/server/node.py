"""The node process: hosts shard replicas and drives their Raft cores from one event loop.

One turn of the drive loop, for every shard that has work (the documented Ready order):

  1. take each shard's Ready; a leader's APPENDs leave first, in one frame per peer
     (thesis §10.2.1: the followers' fsyncs then run beside this node's work, not
     after it); hand the entries, hard state and snapshot to the node's one
     write-ahead log;
  2. a leader applies committed entries and answers them, and reads: a committed entry
     is durable on a quorum, so its answer may leave before this node's fsync (etcd's
     server too), and it leaves at once;
  3. one fsync, inline (a worker thread measured slower, docs/PERFORMANCE.md), covers
     every shard's writes of this turn (group commit); no follower acknowledges before
     it;
  4. send the remaining messages; a follower then applies (its leader waits for its
     acknowledgement, nobody for its apply); advance the cores. One frame per peer
     carries every shard's messages.

Linearizable reads use ReadIndex (docs/PROTOCOL.md): the leader confirms with a quorum
that it still leads, then serves from its state machine once applied up to the commit
index it had. No clock is trusted for safety. `stale` reads are served by any replica
from what it has applied.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import gc
import logging
import os
import random
import resource
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ringlock.address import parse_address
from ringlock.codec.frames import FrameError, encode_frame
from ringlock.errors import (
    BadRequest,
    ConfigError,
    NotFound,
    NotLeader,
    ProposalDropped,
    RequestError,
    Unavailable,
    WrongShard,
)
from ringlock.eventloop import loop_name
from ringlock.invariant import invariant
from ringlock.raft import BUILD as RAFT_BUILD
from ringlock.raft.messages import MessageType, Ready, Role, Snapshot
from ringlock.server import requests as rq
from ringlock.server.config import NodeConfig
from ringlock.server.connection import Connection
from ringlock.server.faults import FaultLayer, digest_replicas, faults_allowed
from ringlock.server.lockops import LockOps
from ringlock.server.membership import Membership
from ringlock.server.replica import Reply, ShardReplica
from ringlock.server.watches import WatchHub
from ringlock.sharding.meta import META_GROUP, REMOVED
from ringlock.statemachine.kv import encode
from ringlock.storage import NodeStorage, StorageError
from ringlock.transport import streams, tls
from ringlock.transport.listener import SocketListener
from ringlock.transport.peer import PeerLink
from ringlock.transport.rpc import RpcConnection
from ringlock.transport.wire import decode_message, encode_message

if TYPE_CHECKING:
    from ringlock.server.httpapi import HttpApi

log = logging.getLogger("ringlock.server")

GATHER_YIELDS = 1
"""Loop iterations a drive turn waits after a local request woke it (see Node._gather;
a turn woken by Raft messages alone does not wait). Measured on W1, 8 rounds side by
side: 0 -> 2 took writes/s from 6,245 to 6,835 (median) and the syncs per write from
0.2 to 0.1; an iteration with nothing to read costs microseconds.
Since bytes are stepped in the protocol callback (transport/streams.py), one iteration
catches what two did: side by side, 1 gave L2 +5% and W1 +2% over the reading-task
code with 2, and 0 no better than 1 (docs/PERFORMANCE.md, session 11)."""
GATHER_MORE_YIELDS = 2
"""Further iterations, each only while the previous one brought work for new shards."""
GC_THRESHOLDS = (200_000, 20, 20)
"""Python's default (700, 10, 10) runs a collection every few hundred allocations."""
FILES_BESIDE_CONNECTIONS = 256
"""Open files a node needs besides its connections: WAL segments, snapshot files, its
log, its outgoing peer links and relays."""
LISTEN_BACKLOG = 1024
"""Connections the kernel queues before the node accepts them: room for every client of
a large deployment reconnecting at once after a failover (the kernel caps it at
net.core.somaxconn)."""
SHUTDOWN_TRANSFER_S = 3.0
"""How long a stopping node waits for its shards' leadership to move elsewhere."""
FORWARDABLE_OPS = frozenset({"get", "put", "delete", "cas", "scan", "lease_grant",
                             "lease_revoke", "lease_keepalive"})
META_OPS = frozenset({"join", "node_state", "report"})
"""Requests for the meta leader: any node relays them there."""
MAX_FORWARD_HOPS = 2
"""A node without a replica relays to a replica node, which may relay to the leader."""
FORWARD_TIMEOUT_S = 5.0
MAX_RELAY_ATTEMPTS = 5
RELAY_BACKOFF_S = 0.05
"""A relay waits 50, 100, 200... ms for an election to name a leader it can follow."""
DRIVE_FAILED_EXIT_CODE = 70
"""EX_SOFTWARE: the node hit a bug or a storage failure and stopped itself."""


class Node:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config.validate()
        self.id = config.node_id
        self.replicas: dict[int, ShardReplica[Any]] = {}
        """Every Raft group replica here by group id: shards, and the meta group's."""
        self.links: dict[int, PeerLink] = {}
        self.connections: set[Connection] = set()
        self._open_connections = 0
        """Accepted sockets not yet closed, TLS handshakes included (max_connections)."""
        self._refusal_logged_at = -60.0
        self.answers_waiting: set[Connection] = set()
        """Connections with answers gathered but not yet written."""
        self._dirty: set[int] = set()
        self._asked = False
        """A local request (a proposal, a read, a tick) marked a shard since the last turn:
        the turn gathers (`_gather`). Raft messages alone do not: see `_drive_loop`."""
        self._wake = asyncio.Event()
        self._server: asyncio.Server | SocketListener | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._ticker: asyncio.TimerHandle | None = None
        self._stopping = False
        self.stopped = asyncio.Event()
        self.started_at = time.monotonic()
        self.counters = {"raft_in": 0, "raft_dropped": 0, "syncs": 0, "requests": 0,
                         "snapshots_sent": 0, "snapshots_installed": 0, "forwarded": 0,
                         "meta_relayed": 0, "leader_transfers": 0, "connections_refused": 0}
        self._ticks = 0
        self.snapshot_bytes_sent: dict[int, int] = {}
        """group -> bytes of snapshots this node sent its peers (what moving it cost)."""
        self.locks = LockOps(self)
        self.current_origin: Connection | None = None
        """The connection whose request `dispatch` is handling (lock waits belong to it)."""
        self.membership = Membership(self)
        # Torture hooks (server/faults.py): off unless RINGLOCK_FAULTS=1 on loopback (or in
        # a test's network namespace).
        self.faults = FaultLayer(self.id, faults_allowed(self.config.listen))
        self._ops: dict[str, Callable[[dict[str, Any], Reply], None]] = {
            "get": self._op_get, "put": self._op_put, "delete": self._op_delete,
            "cas": self._op_cas, "scan": self._op_scan, "status": self._op_status,
            "map": self.membership.op_map, "lease_grant": self._op_lease_grant,
            "lease_revoke": self._op_lease_revoke, "lease_keepalive": self._op_lease_keepalive,
            "join": self.membership.op_join, "node_state": self.membership.op_node_state,
            "report": self.membership.op_report,
            "shard_change": self.membership.op_shard_change,
            **self.locks.ops(),
            "digest": self._op_digest, **self.faults.ops(),  # torture hooks
        }
        self._started = False
        self.storage: NodeStorage | None = None
        self._forward_connections: dict[str, RpcConnection] = {}
        self._relays: set[asyncio.Task[None]] = set()
        self.watches = WatchHub(self)
        """Watch streams (server/watches.py): fed after each replica applies entries."""
        self.http: HttpApi | None = None
        """The HTTP API (server/httpapi.py), when `config.http_listen` names an address."""
        self.server_ssl = self.client_ssl = None
        if config.tls:  # ConfigError here, before anything starts, if a file is bad
            self.server_ssl = tls.server_context(config.tls_cert, config.tls_key, config.tls_ca)
            self.client_ssl = tls.client_context(config.tls_ca, config.tls_cert, config.tls_key)

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        config = self.config
        Path(config.data_dir).mkdir(parents=True, exist_ok=True)
        self._lock_data_dir()
        files = raise_open_file_limit(config.max_connections + FILES_BESIDE_CONNECTIONS)
        if files < config.max_connections + FILES_BESIDE_CONNECTIONS:
            log.warning("node %d: the open-file limit is %d, below max_connections (%d) + %d: "
                        "connections past it fail to be accepted; raise `ulimit -n`",
                        config.node_id, files, config.max_connections,
                        FILES_BESIDE_CONNECTIONS)
        self.storage = NodeStorage(config.data_dir, fsync=config.fsync)
        if await self.membership.prepare():
            # Founding wrote each group's first snapshot: read it back as a restart would.
            self.storage.close()
            self.storage = NodeStorage(config.data_dir, fsync=config.fsync)
        if self.membership.map.shards and self.membership.map.shards != config.shards:
            # A joining or restarted node takes the cluster's shard count, fixed at founding.
            self.config = config = dataclasses.replace(config, shards=self.membership.map.shards)
        for group in sorted(self.storage.groups()):
            self.replicas[group] = self.membership.make_replica(group, self.storage.load(group))
        host, port = parse_address(config.listen)
        if self.server_ssl is None:
            self._server = await streams.start_server(self._accept, host, port,
                                                      backlog=LISTEN_BACKLOG)
        else:
            self._server = await SocketListener.start(self._accept_tls, host, port,
                                                      backlog=LISTEN_BACKLOG)
        self._started = True
        self.on_map_changed()
        # Everything loaded so far lives as long as the node: keep the cyclic collector off
        # it, and let it run less often (the hot path allocates many short-lived objects
        # and creates no cycles).
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        loop = asyncio.get_running_loop()
        drive = loop.create_task(self._drive_loop())
        drive.add_done_callback(self._drive_ended)
        self._tasks.append(drive)
        self._ticker = loop.call_later(config.tick_ms / 1000, self._tick)
        if config.http_listen:
            # Imported here: aiohttp costs a node without an HTTP API nothing.
            from ringlock.server.httpapi import HttpApi

            self.http = HttpApi(self)
            await self.http.start()
        log.info("node %d listening on %s with %d shard replicas (data %s, fsync %s, "
                 "Raft core %s, event loop %s)", self.id, config.listen, len(self.replicas),
                 config.data_dir, config.fsync, RAFT_BUILD,
                 loop_name(asyncio.get_running_loop()))

    def _drive_ended(self, task: asyncio.Task[None]) -> None:
        """The drive loop ends only when the node stops. If it died of an error, every
        shard here is frozen: crash at once, loudly, rather than linger as a zombie that
        answers connections and drives nothing. A crash loses nothing acknowledged."""
        if task.cancelled() or self._stopping:
            return
        error = task.exception()
        log.critical("node %d: the drive loop failed, exiting: %r", self.id, error,
                     exc_info=error)
        logging.shutdown()
        os._exit(DRIVE_FAILED_EXIT_CODE)

    def _lock_data_dir(self) -> None:
        """Two processes on one data directory would interleave their logs: refuse."""
        path = Path(self.config.data_dir) / "LOCK"
        self._lock_fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            raise ConfigError(f"data directory {self.config.data_dir} is in use by another "
                              "ringlock process") from error

    async def stop(self, *, transfer: bool = True) -> None:
        """Hand off leadership (unless told not to), then close everything."""
        if self._stopping:
            return
        self._stopping = True
        if transfer:
            await self._transfer_leadership_away()
        if self._ticker is not None:
            self._ticker.cancel()
        if self._server is not None:
            self._server.close()
        for replica in self.replicas.values():
            replica.fail_all(Unavailable(f"node {self.id} is shutting down"))
        if self.http is not None:  # its requests were just answered: a short wait at most
            await self.http.stop()
        for connection in list(self.connections):
            connection.writer.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.membership.close()
        for link in self.links.values():
            await link.close()
        for forward in self._forward_connections.values():
            await forward.close()
        if self.storage is not None:
            self.storage.sync()
            self.storage.close()
        log.info("node %d stopped", self.id)
        self.stopped.set()

    async def _transfer_leadership_away(self) -> None:
        deadline = time.monotonic() + SHUTDOWN_TRANSFER_S
        while time.monotonic() < deadline:
            leading = [r for r in self.replicas.values() if r.raft.role == Role.LEADER]
            if not leading or not any(link.connected for link in self.links.values()):
                return
            for replica in leading:
                progress = replica.raft.progress
                others = [n for n in progress if n != self.id
                          and n in replica.raft.configuration.voters
                          and n in self.links and self.links[n].connected]
                if not others:
                    continue
                self.hand_over(replica, max(others, key=lambda n: progress[n].match_index))
            await asyncio.sleep(0.05)
        log.warning("node %d: leadership transfer did not finish in %.1f s",
                     self.id, SHUTDOWN_TRANSFER_S)

    async def _accept(self, reader: streams.DirectReader,
                      writer: asyncio.StreamWriter) -> None:
        if self._open_connections >= self.config.max_connections:
            refusal = Unavailable(f"node {self.id} has {self._open_connections} connections "
                                  f"open, its max_connections; try another node")
            writer.write(encode_frame(rq.error_body(0, refusal)))
            writer.close()
            self._count_refusal()
            return
        self._open_connections += 1
        try:
            await self._serve_connection(reader, writer)
        finally:
            self._open_connections -= 1

    async def _accept_tls(self, conn: socket.socket) -> None:
        """TLS is taken on here, not by the server, so that a failed handshake is logged
        and a plain-text client is told why (transport/tls.py)."""
        if self._open_connections >= self.config.max_connections:
            conn.close()  # before a handshake is spent on it: the client sees it fail
            self._count_refusal()
            return
        try:
            host, port = conn.getpeername()[:2]
        except OSError:  # gone already
            conn.close()
            return
        self._open_connections += 1
        try:
            assert self.server_ssl is not None
            stream = await tls.accept_tls(conn, self.server_ssl, lambda why: log.warning(
                "connection %s:%s: %s; closing it", host, port, why))
            if stream is not None and self._stopping:  # the handshake outlived the node
                stream[1].close()
            elif stream is not None:
                await self._serve_connection(*stream)
        finally:
            self._open_connections -= 1

    def _count_refusal(self) -> None:
        """One connection over `max_connections` was refused: counted; logged once a
        minute."""
        self.counters["connections_refused"] += 1
        now = time.monotonic()
        if now - self._refusal_logged_at >= 60.0:
            self._refusal_logged_at = now
            log.warning("node %d: %d connections open (max_connections): refusing new ones "
                        "(%d refused so far)", self.id, self._open_connections,
                        self.counters["connections_refused"])

    async def _serve_connection(self, reader: streams.DirectReader,
                                writer: asyncio.StreamWriter) -> None:
        connection = Connection(self, reader, writer)
        self.connections.add(connection)
        try:
            await connection.serve()
        except asyncio.CancelledError:
            # The loop is ending (a TLS stream closes only once the other side answers
            # its close): nobody awaits this task, and asyncio would log the cancel.
            if not self._stopping:
                raise
        finally:
            self.connection_closed(connection)

    # ---------------------------------------------------------------------- inputs

    def _mark(self, shard: int) -> None:
        self._dirty.add(shard)
        self._asked = True
        self._wake.set()

    mark = _mark

    # ------------------------------------------------------------------ membership

    def on_map_changed(self) -> None:
        """The map moved on: talk to the members it names, host the replicas it gives."""
        if not self._started:
            return
        peers = self.membership.map.peers()
        config = self.config
        for peer, address in sorted(peers.items()):
            if peer != self.id and peer not in self.links:
                link = PeerLink(self.id, peer, address, config.cluster,
                                config.max_peer_frame_bytes, secret=config.secret,
                                ssl=self.client_ssl)
                link.start()
                self.links[peer] = link
        for peer in [p for p in self.links if p not in peers]:
            link = self.links.pop(peer)
            asyncio.get_running_loop().create_task(link.close())
        self.membership.reconcile()
        if self.membership.map.state(self.id) == REMOVED and not self._stopping:
            log.warning("node %d was removed from the cluster: stopping", self.id)
            asyncio.get_running_loop().create_task(self.stop(transfer=False))

    def is_peer(self, node: int) -> bool:
        return node != self.id and (node in self.membership.map.peers()
                                    or node in self.config.peers)

    def add_replica(self, group: int, replica: ShardReplica[Any]) -> None:
        invariant(group not in self.replicas, f"group {group} already has a replica here")
        self.replicas[group] = replica
        self._mark(group)

    def drop_replica(self, group: int) -> None:
        """This node left the group: forget the replica and everything stored for it."""
        replica = self.replicas.pop(group)
        gone = WrongShard(f"node {self.id} no longer holds group {group}")
        replica.fail_all(gone)
        replica.sm.close()
        self.locks.on_replica_dropped(group, gone)
        self.watches.on_dropped(group)
        self._dirty.discard(group)
        assert self.storage is not None
        self.storage.drop(group)
        # Durable at once: a replica of the group may come back here (the shard moved
        # away and back), and storage refuses its snapshot until the drop is synced.
        # No drive turn is half-way here (a turn appends and syncs without yielding).
        self.storage.sync()

    def connect_to(self, address: str) -> RpcConnection:
        """A connection to another node, with this node's secret and TLS."""
        return RpcConnection(address, secret=self.config.secret or None, ssl=self.client_ssl)

    async def call_node(self, address: str, body: dict[str, Any], timeout: float) -> Any:
        connection = self._forward_connections.get(address)
        if connection is None or connection.broken:
            connection = self._forward_connections[address] = self.connect_to(address)
        return await connection.call(body, timeout)

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        self._ticker = loop.call_later(self.config.tick_ms / 1000, self._tick)
        self._ticks += 1
        now = time.monotonic()
        for shard, replica in self.replicas.items():
            replica.raft.tick()
            if replica.raft.role == Role.LEADER and shard != META_GROUP:
                self._expire_leases(replica, now)
            if replica.raft.has_ready():
                self._mark(shard)
        try:  # after the Raft ticks: a membership bug must not stop the shards' clocks
            self.membership.tick(self._ticks)
        except Exception:
            log.exception("node %d: membership tick failed", self.id)

    def hand_over(self, replica: ShardReplica[Any], to: int) -> bool:
        """Start moving `replica`'s leadership to `to`; False if the core refused."""
        try:
            replica.raft.transfer_leadership(to)
        except ProposalDropped:
            return False
        self.counters["leader_transfers"] += 1
        self._mark(replica.shard)
        return True

    def on_raft_messages(self, peer: int, raw: list[Any]) -> None:
        if self.faults.active and self.faults.blocks(peer, len(raw)):  # torture partition
            return
        stepped = 0
        dirty = self._dirty
        for item in raw:
            try:
                message = decode_message(item)
            except FrameError as error:
                self.counters["raft_dropped"] += 1
                log.warning("peer %d sent a bad raft message: %s", peer, error)
                continue
            replica = self.replicas.get(message.group)
            if replica is None or message.to != self.id or message.frm != peer:
                self.counters["raft_dropped"] += 1
                continue
            replica.raft.step(message)
            dirty.add(message.group)
            stepped += 1
        if stepped:  # once a frame, not once a message
            self.counters["raft_in"] += stepped
            self._wake.set()

    # ---------------------------------------------------------------------- driving

    async def _drive_loop(self) -> None:
        while True:
            await self._wake.wait()
            # Gathering batches requests that arrive together into one fsync. A turn
            # woken by Raft messages alone runs at once: a follower's fsync and its
            # acknowledgement, a leader's commit and its answers, are on the path of
            # every write; another message that comes meanwhile costs a turn, no more
            # (docs/PERFORMANCE.md, session 12).
            if self._asked:
                await self._gather()
            self._asked = False
            self._wake.clear()
            self._turn()
            if self._dirty:
                self._wake.set()
            # One turn of the event loop between drive turns: the frames that arrived
            # meanwhile are read and stepped, and join the next turn's batch.
            await asyncio.sleep(0)

    def _turn(self) -> None:
        """One drive turn over the shards marked dirty (the order in this module's
        docstring). Nothing in it awaits: no message is stepped between a Ready's
        take and its advance."""
        storage = self.storage
        assert storage is not None
        dirty, self._dirty = self._dirty, set()
        readies = []
        for shard in dirty:
            replica = self.replicas.get(shard)
            if replica is None:
                continue
            rd = replica.raft.take_ready()
            if rd is None:
                continue
            if rd.appends_may_precede_persist and rd.messages:
                later = []
                for message in rd.messages:  # appends leave now, the rest after the fsync
                    if message.type == MessageType.APPEND:
                        self._send_one(message)
                    else:
                        later.append(message)
                rd.messages = later
            readies.append((replica, rd))
        # The appends leave before this node encodes its own records: W1 x1.08 side by
        # side (docs/PERFORMANCE.md, session 12). Nothing else queues a Raft message
        # before the fsync, so this is the fsync's one flush.
        self._flush_links()
        batch = []
        for replica, rd in readies:
            shard = replica.shard
            if rd.snapshot is not None:
                storage.save_snapshot(shard, rd.snapshot)
                self.counters["snapshots_installed"] += 1
            hard_state = replica.hard_state_to_persist(rd.hard_state)
            if rd.entries or hard_state is not None:
                storage.append(shard, hard_state, rd.entries)
            leads = replica.raft.role == Role.LEADER
            if leads:
                self._apply(replica, rd)
            batch.append((replica, rd, leads))
        # What may leave before the fsync does besides the appends: answers to entries
        # already committed (durable on a quorum) and to reads. They leave now in any
        # case, not after the rest of the turn.
        if self.answers_waiting:
            for connection in list(self.answers_waiting):
                connection.flush()
        if storage.pending():
            storage.sync()  # inline: a thread hand-off measured slower (PERFORMANCE.md)
            self.counters["syncs"] += 1
        for _, rd, _ in batch:
            self._send(rd.messages)
        # A follower's acknowledgements leave before it applies: its leader waits for
        # them to commit. What a follower's apply answers (a deposed leader's last
        # proposals, its lock waits, watches) can wait for the fsync and the sends.
        # The turn's one flush after its sends: nothing below queues a Raft message.
        self._flush_links()
        for replica, rd, leads in batch:
            if not leads:
                self._apply(replica, rd)
            replica.advance(rd)
            snapshot = replica.maybe_compact(self.config.compact_every)
            if snapshot is not None:
                storage.save_snapshot(replica.shard, snapshot)
                storage.compact(replica.shard, snapshot.meta.index)
            if replica.needs_another_turn():
                self._dirty.add(replica.shard)
        self.membership.after_turn()

    def _apply(self, replica: ShardReplica[Any], rd: Ready) -> None:
        """Apply `rd`'s committed entries and tell the watches: at once on a leader,
        after the turn's sends on a follower (see `_turn`)."""
        replica.apply(rd)
        self.watches.on_applied(replica)  # watch streams: server/watches.py

    async def _gather(self) -> None:
        """Let what the sockets already hold reach the Raft cores before a turn, so that
        one turn, one fsync and one send per peer cover it. Bytes a select found are
        stepped in that iteration's protocol callbacks (transport/streams.py); further
        iterations only while they bring new shards. See GATHER_YIELDS."""
        for _ in range(GATHER_YIELDS):
            await asyncio.sleep(0)
        for _ in range(GATHER_MORE_YIELDS):
            before = len(self._dirty)
            await asyncio.sleep(0)
            if len(self._dirty) == before:
                return

    def _send(self, messages: list[Any]) -> None:
        for message in messages:
            self._send_one(message)

    def _send_one(self, message: Any) -> None:
        link = self.links.get(message.to)
        if link is None or (self.faults.active and self.faults.blocks_send(message.to)):
            return  # (the second: a torture partition, server/faults.py)
        if message.snapshot is not None and not message.snapshot.data:
            try:
                message.snapshot = self._snapshot_from_file(message.group, message.snapshot)
            except StorageError as error:
                # A newer snapshot replaced that file while the message waited (the shard
                # moved on, or lost its leadership): Raft sends a fresh one.
                log.warning("shard %d: snapshot not sent: %s", message.group, error)
                return
            self.counters["snapshots_sent"] += 1
            group = message.group
            self.snapshot_bytes_sent[group] = (self.snapshot_bytes_sent.get(group, 0)
                                               + len(message.snapshot.data))
        frame = encode_message(message)
        if self.faults.active:  # a torture slow link (server/faults.py)
            hold = self.faults.hold(message.to, time.monotonic())
            if hold is None:
                return
            if hold > 0:
                asyncio.get_running_loop().call_later(hold, self._send_late, link, frame)
                return
        link.queue(frame)

    @staticmethod
    def _send_late(link: PeerLink, frame: list[Any]) -> None:
        link.queue(frame)
        link.flush()

    def _snapshot_from_file(self, shard: int, stub: Snapshot) -> Snapshot:
        """Replicas keep only a snapshot's metadata in memory; its data is in its file."""
        assert self.storage is not None
        full = self.storage.read_snapshot(shard, stub.meta.index)
        invariant(full.meta == stub.meta, f"shard {shard}: snapshot file does not match")
        return full

    def _flush_links(self) -> None:
        for link in self.links.values():
            link.flush()

    # --------------------------------------------------------------------- requests

    async def ask(self, body: dict[str, Any]) -> Any:
        """`dispatch` as an awaitable, for the node's own callers (membership, the HTTP
        API): the result, or the RequestError raised. An answer that comes after the
        caller gave up (a timeout cancelled the wait) is dropped."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def reply(result: Any, error: RequestError | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        self.dispatch(body, reply)
        return await future

    def dispatch(self, body: dict[str, Any], reply: Reply,
                 origin: Connection | None = None) -> None:
        self.counters["requests"] += 1
        self.current_origin = origin
        op = body.get("op")
        if op in META_OPS:
            body["shard"] = META_GROUP
        handler = self._ops.get(op) if isinstance(op, str) else None
        if handler is None:
            reply(None, BadRequest(f"unknown command {op!r}; known: {sorted(self._ops)}"))
            return
        try:
            if not self._forward(body, reply):
                handler(body, reply)
        except RequestError as error:
            reply(None, error)
        finally:
            self.current_origin = None

    def _forward(self, body: dict[str, Any], reply: Reply) -> bool:
        """Any node takes any request: one for a shard this node does not lead goes on to
        the leader (or, from a node without a replica, to a replica node), and the answer
        comes back the same way. A client that asks for redirects (the ringlock client,
        which learns the leaders) gets NotLeader instead; `hops` bounds the relay."""
        op = body.get("op")
        shard = body.get("shard", -1)
        if op not in META_OPS and (  # a meta op's group was set by dispatch
                op not in FORWARDABLE_OPS or body.get("redirect") or type(shard) is not int
                or not 0 <= shard < self.config.shards):
            return False
        hops = body.get("hops", 0)
        if type(hops) is not int or not 0 <= hops < MAX_FORWARD_HOPS:
            return False
        replica = self.replicas.get(shard)
        target: str | None
        if replica is None:
            holders = [a for n in self.membership.map.voters(shard)
                       if (a := self.membership.map.address(n))]
            if not holders:
                return False
            target = random.choice(holders)
        elif replica.raft.role == Role.LEADER or body.get("consistency") == "stale":
            return False
        else:
            leader = replica.raft.leader
            target = self.membership.map.address(leader) if leader and leader != self.id else None
            if target is None:
                return False  # no leader known: answered locally (Unavailable/NotLeader)
        forwarded = {**body, "hops": hops + 1}
        # Client requests relayed, apart from the nodes' own traffic to the meta leader
        # (a report sent while the meta leadership moves is relayed too).
        self.counters["forwarded" if op not in META_OPS else "meta_relayed"] += 1
        task = asyncio.get_running_loop().create_task(self._relay(target, forwarded, reply))
        self._relays.add(task)
        task.add_done_callback(self._relays.discard)
        return True

    async def _relay(self, target: str, body: dict[str, Any], reply: Reply) -> None:
        """Relay, and follow the leader while it moves (a leadership transfer, a replica
        move): a NotLeader answer means the request was not applied, so it is safe to
        send again, even for a client without a session. Anything else goes back."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FORWARD_TIMEOUT_S
        for attempt in range(MAX_RELAY_ATTEMPTS):
            try:
                result = await self.call_node(target, body,
                                              max(0.01, deadline - loop.time()))
            except NotLeader as error:
                if attempt + 1 == MAX_RELAY_ATTEMPTS or loop.time() >= deadline:
                    reply(None, error)
                    return
                if error.leader and error.leader != target:
                    target = error.leader
                else:
                    await asyncio.sleep(RELAY_BACKOFF_S * 2 ** attempt)
            except RequestError as error:
                reply(None, error)
                return
            except (TimeoutError, OSError) as error:
                reply(None, Unavailable(f"node {self.id} could not reach {target}: {error!r}"))
                return
            else:
                reply(result, None)
                return

    def connection_closed(self, connection: Connection) -> None:
        self.connections.discard(connection)
        self.locks.on_disconnect(connection)

    def _replica(self, shard: int) -> ShardReplica[Any]:
        replica = self.replicas.get(shard)
        if replica is None:
            cmap = self.membership.map
            holders = ", ".join(f"{n}={cmap.address(n)}" for n in cmap.holders(shard))
            raise WrongShard(f"node {self.id} holds no replica of shard {shard} (map version "
                             f"{cmap.version}); replicas: {holders or 'unknown'}",
                             version=cmap.version)
        return replica

    replica = _replica

    def _propose(self, shard: int, command: bytes, reply: Reply) -> None:
        replica = self._replica(shard)
        replica.propose(command, reply)
        self._mark(shard)

    propose = _propose

    def _read(self, shard: int, body: dict[str, Any], serve: Callable[[ShardReplica[Any]], Any],
              reply: Reply) -> None:
        replica = self._replica(shard)
        if rq.checked_consistency(body) == "stale":
            reply(serve(replica), None)
            return
        replica.read(lambda: reply(serve(replica), None), reply)
        self._mark(shard)

    def _op_get(self, body: dict[str, Any], reply: Reply) -> None:
        shard, key = rq.checked_key(body, self.config.shards, self.config.max_key_bytes)
        self._read(shard, body, lambda r: r.sm.get(key), reply)

    def _op_scan(self, body: dict[str, Any], reply: Reply) -> None:
        shard = rq.checked_shard(body, self.config.shards)
        prefix = rq.field(body, "prefix", bytes, b"")
        after = rq.field(body, "after", bytes, b"")
        limit = rq.field(body, "limit", int, 1000)
        if not 1 <= limit <= rq.MAX_SCAN_LIMIT:
            raise BadRequest(f"limit must be in 1..{rq.MAX_SCAN_LIMIT}, got {limit}")
        self._read(shard, body,
                   lambda r: [rq.encode_kv(kv) for kv in r.sm.scan(prefix, limit, after)], reply)

    def _op_put(self, body: dict[str, Any], reply: Reply) -> None:
        shard, key = rq.checked_key(body, self.config.shards, self.config.max_key_bytes)
        value = rq.checked_value(body, self.config.max_value_bytes)
        client, seq = rq.checked_session(body)
        lease = rq.checked_lease(body, 0)
        prev = rq.field(body, "prev", bool, False)
        self._propose(shard, encode("put", client, seq, key, value, lease, prev,
                                    *rq.checked_fence(body)), reply)

    def _op_delete(self, body: dict[str, Any], reply: Reply) -> None:
        shard, key = rq.checked_key(body, self.config.shards, self.config.max_key_bytes)
        client, seq = rq.checked_session(body)
        prev = rq.field(body, "prev", bool, False)
        self._propose(shard, encode("delete", client, seq, key, prev, *rq.checked_fence(body)),
                      reply)

    def _op_cas(self, body: dict[str, Any], reply: Reply) -> None:
        shard, key = rq.checked_key(body, self.config.shards, self.config.max_key_bytes)
        client, seq = rq.checked_session(body)
        target = rq.field(body, "target", str)
        if target not in ("value", "version", "mod_revision"):
            raise BadRequest(f"cas target must be value, version or mod_revision, not {target!r}")
        expected = body.get("expected")
        if target == "value" and expected is not None and not isinstance(expected, bytes):
            raise BadRequest("cas on value expects bytes or None")
        if target != "value" and (type(expected) is not int or expected < 0):
            raise BadRequest(f"cas on {target} expects a non-negative int")
        then = rq.field(body, "then", str)
        if then not in ("put", "delete"):
            raise BadRequest(f"cas then must be put or delete, not {then!r}")
        value = rq.checked_value(body, self.config.max_value_bytes) if then == "put" else b""
        self._propose(shard, encode("cas", client, seq, key, target, expected, then, value,
                                    *rq.checked_fence(body)), reply)

    def _op_lease_grant(self, body: dict[str, Any], reply: Reply) -> None:
        shard = rq.checked_shard(body, self.config.shards)
        ttl_ms = rq.field(body, "ttl_ms", int)
        if not rq.MIN_LEASE_TTL_MS <= ttl_ms <= rq.MAX_LEASE_TTL_MS:
            raise BadRequest(
                f"ttl_ms must be in {rq.MIN_LEASE_TTL_MS}..{rq.MAX_LEASE_TTL_MS}, got {ttl_ms}")
        client, seq = rq.checked_session(body)
        lease = rq.checked_lease(body, 0) or random.randrange(1, 2**62)
        replica = self._replica(shard)

        def granted(result: Any, error: RequestError | None) -> None:
            if error is None:
                replica.lease_deadlines[lease] = time.monotonic() + ttl_ms / 1000
            reply(result, error)

        self._propose(shard, encode("lease_grant", client, seq, lease, ttl_ms), granted)

    def _op_lease_revoke(self, body: dict[str, Any], reply: Reply) -> None:
        shard = rq.checked_shard(body, self.config.shards)
        lease = rq.checked_lease(body)
        client, seq = rq.checked_session(body)
        self._propose(shard, encode("lease_revoke", client, seq, lease), reply)

    def _op_lease_keepalive(self, body: dict[str, Any], reply: Reply) -> None:
        """Refresh a lease on the leader, without a log entry (as etcd does): a lease
        lives while its leader hears keepalives; a new leader restarts every clock."""
        shard = rq.checked_shard(body, self.config.shards)
        lease = rq.checked_lease(body)
        replica = self._replica(shard)

        def refresh() -> None:
            ttl_ms = replica.live_lease_ttl_ms(lease)
            if ttl_ms is None:
                reply(None, NotFound(f"lease {lease} not found (expired or revoked)"))
                return
            replica.lease_deadlines[lease] = time.monotonic() + ttl_ms / 1000
            reply(ttl_ms, None)

        replica.read(refresh, reply)
        self._mark(shard)

    def _expire_leases(self, replica: ShardReplica[Any], now: float) -> None:
        """Expire, on this leader's clock, the leases not kept alive. A new leadership
        (even this node's own, again) starts every clock afresh from now: deadlines
        set under an earlier term might be older than keepalives another leader heard."""
        deadlines = replica.lease_deadlines
        if replica.lease_clock_term != replica.raft.term:
            deadlines.clear()
            replica.lease_expiring.clear()
            replica.lease_clock_term = replica.raft.term
        if replica.lease_expiring:
            replica.lease_expiring.intersection_update(replica.sm.leases)
        for lease, (ttl_ms, _) in replica.sm.leases.items():
            if lease not in deadlines:  # granted under an earlier leader: clock starts now
                deadlines[lease] = now + ttl_ms / 1000
        for lease in [lease for lease, due in deadlines.items() if due <= now]:
            del deadlines[lease]
            if lease in replica.sm.leases:
                log.info("shard %d: lease %d expired", replica.shard, lease)
                replica.lease_expiring.add(lease)
                replica.propose(encode("lease_revoke", 0, 0, lease), _ignore)
                self._mark(replica.shard)

    def _op_status(self, body: dict[str, Any], reply: Reply) -> None:
        shards = []
        for shard, replica in sorted(self.replicas.items()):
            raft = replica.raft
            shards.append([shard, int(raft.role), raft.leader, raft.term,
                           raft.log.commit_index, replica.sm.applied_index])
        storage = self.storage
        reply({
            "node": self.id, "address": self.config.listen, "pid": os.getpid(),
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "raft_core": RAFT_BUILD,
            "event_loop": loop_name(asyncio.get_running_loop()),
            "shards": shards,
            "peers": {str(p): link.connected for p, link in self.links.items()},
            "counters": dict(self.counters),
            "wal": dataclasses.asdict(storage.stats) if storage is not None else None,
            "map_version": self.membership.map.version,
            "lock_waits_open": self.locks.open_count,
            "lock_grants_pushed": self.locks.pushed,
            "connections_open": self._open_connections,
            **self.membership.status(),
        }, None)

    def _op_digest(self, body: dict[str, Any], reply: Reply) -> None:
        """Every replica's applied index and state hash (server/faults.py, torture)."""
        reply({"node": self.id, "groups": digest_replicas(self.replicas)}, None)


def raise_open_file_limit(wanted: int) -> int:
    """The soft open-file limit raised towards `wanted` (never above the hard limit, never
    lowered); what it is now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return wanted
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target


def _ignore(result: Any, error: RequestError | None) -> None:
    """Answers to the node's own proposals (lease expiry): the log is the record."""
