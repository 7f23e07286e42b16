"""A node's part in membership and placement: founding or joining a cluster, the map it
routes by, the replicas the map gives it, its reports to the meta leader, and, on the
meta leader, the rebalancer that turns those reports into moves.

Who knows what (as in TiKV's placement driver, with the meta group in PD's place):

  * the meta group's log records members and each shard's committed configuration;
    every node caches the resulting `ClusterMap` (and keeps a copy in its data
    directory, to find the cluster again after a restart);
  * every node reports, once a second, the shards it leads (configuration, who is
    caught up) to the meta leader; the report's answer carries the map version and
    every shard's leader, so a node learns of a newer map within a second;
  * the meta leader runs `plan_actions` over those reports and carries the steps out:
    meta commands through its own log, membership changes by asking the shard's
    leader, which refuses a step decided on a configuration it has moved past.

A node creates an empty replica of a shard when the map lists it there (the shard's
leader then sends a snapshot), and drops its replica when a committed configuration
at least as new as the replica's own no longer lists it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ringlock.errors import BadRequest, ConfigError, ProposalDropped, RequestError, Unavailable
from ringlock.files import write_atomically
from ringlock.raft.config import RaftConfig
from ringlock.raft.core import Raft
from ringlock.raft.messages import Configuration, HardState, Role, Snapshot, SnapshotMeta
from ringlock.server import requests as rq
from ringlock.server.replica import Reply, ShardReplica
from ringlock.sharding.clustermap import ClusterMap, MapError
from ringlock.sharding.meta import (
    DRAINING,
    META_GROUP,
    REMOVED,
    UP,
    MetaStateMachine,
    encode_command,
)
from ringlock.sharding.placement import plan_leaders
from ringlock.sharding.rebalance import (
    CATCH_UP_SLACK,
    ProposeMeta,
    ShardChange,
    ShardView,
    plan_actions,
)
from ringlock.statemachine.history import HistoryBudget
from ringlock.statemachine.kv import ShardStateMachine
from ringlock.storage import GroupState

if TYPE_CHECKING:
    from ringlock.server.node import Node

log = logging.getLogger("ringlock.server")

IDENTITY_FILE = "ringlock.json"
MAP_FILE = "map.json"
REPORT_EVERY_TICKS = 10
"""Each node reports its shards to the meta leader once a second (default tick), and at
the next tick when a shard it leads changed configuration or a learner caught up."""
PLAN_EVERY_TICKS = 2
"""The meta leader plans five times a second: each step of a move waits for one plan."""
HEARD_WINDOW_S = 3.0
"""A node that reported within this long counts as heard (joining -> up, dead -> up)."""
VIEW_MAX_AGE_S = 3.0
"""A shard leader's report older than this is not acted on."""
MEMBERSHIP_CALL_TIMEOUT_S = 5.0
MOVES_KEPT = 256
MAX_LEADER_TRANSFERS = 4
LEADERS_SETTLE_S = 2.0
"""Leaders are evened out only once they have not changed for this long: right after a
failover or a restart, elections come first, and a transfer then would cost the clients
that just found the new leader another retry."""
"""Leaderships the rebalancer moves per round: gentle on clients, done in seconds."""


def atomic_write_json(path: Path, data: Any, *, durable: bool) -> None:
    """Write a small file whole or not at all. `durable=False` skips the fsync: right for
    a cache that an older copy serves as well (the map, written at every map change)."""
    write_atomically(path, json.dumps(data).encode(), durable=durable)


def view_of(raft: Raft) -> ShardView:
    """A group as its leader sees it, for the rebalancer. A learner that acknowledged
    nothing yet (match 0) has not even the snapshot, and one that has not reached the
    entry that added it may hold an old incarnation's log: neither is caught up."""
    log_ = raft.log
    floor = max(1, log_.commit_index - CATCH_UP_SLACK, raft.conf_index)
    return ShardView(raft.group, raft.id, tuple(sorted(raft.configuration.voters)),
                     tuple(sorted(raft.configuration.learners)), raft.conf_index,
                     raft.conf_index <= log_.commit_index,
                     frozenset(n for n, pr in raft.progress.items() if pr.match_index >= floor))


class Membership:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.map = ClusterMap()
        self.meta: ShardReplica[MetaStateMachine] | None = None
        self.leaders: dict[int, int] = {}
        """shard -> leader id, as the meta leader last told us (for clients' maps)."""
        self.watch_history = HistoryBudget()
        """The bound that every KV shard's change history on this node shares
        (statemachine/history.py says why per node)."""
        # Meta leader only:
        self._heard: dict[int, float] = {}
        self._views: dict[int, tuple[float, int, ShardView]] = {}
        """shard -> (when, term, view) of its latest leader's report."""
        self._leader_term = 0
        self._leader_since = 0.0
        self._pending_meta: set[bytes] = set()
        self._pending_changes: set[int] = set()
        self._move_started: dict[int, tuple[float, int]] = {}
        self._snapshot_bytes: dict[int, dict[int, int]] = {}
        """shard -> node -> snapshot bytes it reported sending for the shard."""
        self.last_plan: list[str] = []
        """What the rebalancer decided last (status shows it: why a cluster is not
        settling is the first question an operator asks)."""
        self._leaders_seen: dict[int, int] = {}
        self._leaders_since = 0.0
        self.moves_done: list[tuple[int, float, int]] = []
        """(shard, seconds, snapshot bytes) of the latest moves seen done as meta leader."""
        self._calls: set[asyncio.Task[Any]] = set()
        self._reporting: asyncio.Task[None] | None = None
        self._last_views: list[list[Any]] = []

    # ------------------------------------------------------------ start: found or join

    @property
    def data_dir(self) -> Path:
        return Path(self.node.config.data_dir)

    async def prepare(self) -> bool:
        """Before replicas load: found the cluster, join it, or check we belong to it.
        True when founding wrote the first state of this node's groups to storage."""
        config = self.node.config
        identity_path = self.data_dir / IDENTITY_FILE
        if identity_path.exists():
            identity = json.loads(identity_path.read_text())
            if identity.get("node") != config.node_id or identity.get("cluster") != config.cluster:
                raise ConfigError(
                    f"data directory {config.data_dir} belongs to node {identity.get('node')} "
                    f"of cluster {identity.get('cluster')!r}, not node {config.node_id} of "
                    f"{config.cluster!r}")
            self._load_map_file()
            return False
        if config.join:
            raw = await self._join(config.join)
        else:
            raw = self._found()
        self._set_map(ClusterMap.parse(raw))  # map.json first: with the identity file
        # alone, a restart would not know where the cluster is
        atomic_write_json(identity_path, {"node": config.node_id, "cluster": config.cluster,
                                          "shards": raw["shards"]}, durable=True)
        return not config.join

    def _found(self) -> dict[str, Any]:
        config = self.node.config
        storage = self.node.storage
        assert storage is not None
        meta = MetaStateMachine.founding(config.shards, config.replicas, config.peers)
        for group, group_config in sorted(meta.configs.items()):
            if config.node_id not in group_config.voters:
                continue
            if group == META_GROUP:
                data = meta.snapshot()
            else:
                machine = ShardStateMachine()
                machine.applied_index = 1
                data = machine.snapshot()
            conf = Configuration(frozenset(group_config.voters))
            storage.save_snapshot(group, Snapshot(SnapshotMeta(1, 1, conf), data))
            storage.append(group, HardState(1, 0, 1), [])
        storage.sync()
        log.info("node %d founded cluster %r: %d shards x %d replicas over %d nodes",
                 config.node_id, config.cluster, config.shards, meta.replicas,
                 len(config.peers))
        return meta.to_map()

    async def _join(self, address: str) -> dict[str, Any]:
        config = self.node.config
        body = {"op": "join", "node": config.node_id, "address": config.listen,
                "cluster": config.cluster}
        connection = self.node.connect_to(address)
        try:
            for attempt in range(10):
                if connection.broken:  # a broken connection only ever fails: open anew
                    await connection.close()
                    connection = self.node.connect_to(address)
                try:
                    result = await connection.call(body, MEMBERSHIP_CALL_TIMEOUT_S)
                    break
                except (Unavailable, TimeoutError, OSError) as error:
                    log.info("join via %s: %s; retrying", address, error)
                    await asyncio.sleep(0.2 * (attempt + 1))
            else:
                raise ConfigError(f"could not join the cluster through {address}")
        except RequestError as error:
            raise ConfigError(f"joining through {address} refused: "
                              f"{type(error).__name__}: {error}") from error
        finally:
            await connection.close()
        log.info("node %d joined cluster %r through %s", config.node_id, config.cluster,
                 address)
        return result["map"]  # type: ignore[no-any-return]

    def _load_map_file(self) -> None:
        try:
            raw = json.loads((self.data_dir / MAP_FILE).read_text())
            self.map = ClusterMap.parse(raw)
        except (OSError, ValueError, MapError) as error:
            log.warning("no usable %s (%s): the map comes from the meta group", MAP_FILE, error)

    # ------------------------------------------------------------------- replicas

    def make_replica(self, group: int, state: GroupState) -> ShardReplica[Any]:
        config = self.node.config
        raft_config = RaftConfig(
            node_id=config.node_id, group_id=group, election_tick=config.election_ticks,
            heartbeat_tick=config.heartbeat_ticks, seed=random.randrange(2**31),
        )
        common: dict[str, Any] = {"hard_state": state.hard_state, "snapshot": state.snapshot,
                                  "entries": state.entries, "address_of": self.map_address}
        if group == META_GROUP:
            replica: ShardReplica[Any] = ShardReplica(
                raft_config, [], restore=MetaStateMachine.restore, empty=MetaStateMachine,
                **common)
            self.meta = replica
        else:
            budget = self.watch_history
            replica = ShardReplica(
                raft_config, [],
                restore=functools.partial(ShardStateMachine.restore, history_budget=budget),
                empty=functools.partial(ShardStateMachine, budget), **common)
            replica.listener = self.node.locks
        return replica

    def map_address(self, node: int) -> str | None:
        return self.map.address(node)

    def after_turn(self) -> None:
        """The drive loop finished a turn: a newer map may have been applied locally."""
        meta = self.meta
        if meta is not None and meta.sm.version > self.map.version:
            self._set_map(ClusterMap.parse(meta.sm.to_map()))

    def _set_map(self, new: ClusterMap) -> None:
        if new.version <= self.map.version and self.map.version:
            return
        old, self.map = self.map, new
        try:
            # A cache: an older copy only makes a restart ask the meta group for more.
            atomic_write_json(self.data_dir / MAP_FILE, new.to_wire(), durable=False)
        except OSError as error:
            log.warning("could not save %s: %s", MAP_FILE, error)
        if old.version:
            log.info("node %d: map version %d -> %d", self.node.config.node_id, old.version,
                     new.version)
        self.node.on_map_changed()

    def reconcile(self) -> None:
        """Create the replicas the map gives this node; drop those it took away."""
        node, new = self.node, self.map
        me = node.config.node_id
        if not new.version:
            return
        for group in new.groups_of(me):
            if group not in node.replicas:
                log.info("node %d: new replica of group %d (map version %d)", me, group,
                         new.version)
                node.add_replica(group, self.make_replica(group, GroupState(None, None, [])))
        for group, replica in list(node.replicas.items()):
            if group not in new.groups or me in new.holders(group):
                continue
            if new.conf_index(group) < replica.raft.conf_index:
                continue  # the replica knows a newer configuration than the map
            log.info("node %d: dropping its replica of group %d (map version %d)", me, group,
                     new.version)
            node.drop_replica(group)
            if group == META_GROUP:
                self.meta = None

    # ------------------------------------------------------------------- ticking

    def tick(self, ticks: int) -> None:
        meta = self.meta
        if meta is not None and meta.raft.role == Role.LEADER:
            if meta.raft.term != self._leader_term:
                self._leader_term = meta.raft.term
                self._leader_since = time.monotonic()
                self._heard.clear()
                self._views.clear()
                log.info("node %d leads the meta group (term %d)", self.node.config.node_id,
                         meta.raft.term)
        else:
            self._leader_term = 0
        views = self._led_views()
        if self._reporting is None and (ticks % REPORT_EVERY_TICKS == 0
                                        or views != self._last_views):
            self._last_views = views
            self._reporting = asyncio.get_running_loop().create_task(self._report(views))
            self._reporting.add_done_callback(self._report_done)
        if self._leader_term and ticks % PLAN_EVERY_TICKS == 1:
            self._plan()

    def _report_done(self, task: asyncio.Task[None]) -> None:
        self._reporting = None

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._calls.add(task)
        task.add_done_callback(self._calls.discard)

    def _meta_target(self) -> str | None:
        """Where meta requests go: its leader if known, else any meta replica."""
        meta = self.meta
        if meta is not None and meta.raft.leader:
            return self.map.address(meta.raft.leader)
        voters = [a for n in self.map.meta_voters if (a := self.map.address(n))]
        if not voters:  # no usable map: try what the flags name
            config = self.node.config
            voters = [a for n, a in config.peers.items() if n != config.node_id]
            voters += [config.join] if config.join else []
        return random.choice(voters) if voters else None

    async def meta_call(self, body: dict[str, Any]) -> Any:
        """One request to the meta leader, wherever it is (relayed by meta replicas)."""
        meta = self.meta
        if meta is not None and meta.raft.role == Role.LEADER:
            return await asyncio.wait_for(self.node.ask(body), MEMBERSHIP_CALL_TIMEOUT_S)
        target = self._meta_target()
        if target is None:
            raise Unavailable("no meta replica known")
        return await self.node.call_node(target, body, MEMBERSHIP_CALL_TIMEOUT_S)

    def _led_views(self) -> list[list[Any]]:
        """The shards this node leads, as a report carries them."""
        views = []
        for group, replica in sorted(self.node.replicas.items()):
            if group == META_GROUP or replica.raft.role != Role.LEADER:
                continue
            view = view_of(replica.raft)
            views.append([group, replica.raft.term, list(view.voters), list(view.learners),
                          view.conf_index, view.committed, sorted(view.caught_up),
                          self.node.snapshot_bytes_sent.get(group, 0)])
        return views

    async def _report(self, views: list[list[Any]]) -> None:
        body = {"op": "report", "node": self.node.config.node_id, "views": views}
        try:
            answer = await self.meta_call(body)
        except (RequestError, TimeoutError, OSError) as error:
            log.debug("report to the meta leader failed: %s", error)
            return
        if not isinstance(answer, dict):
            return
        leaders = answer.get("leaders")
        if isinstance(leaders, dict):
            self.leaders = {int(s): int(n) for s, n in leaders.items()}
        version = answer.get("version")
        if type(version) is int and version > self.map.version:
            # Also with a meta replica here: one that lost its seat no longer learns
            # the meta log, and only a fetched map tells it to drop that replica.
            await self._fetch_map()

    async def _fetch_map(self) -> None:
        target = self._meta_target()
        if target is None:
            return
        try:
            answer = await self.node.call_node(target, {"op": "map"}, MEMBERSHIP_CALL_TIMEOUT_S)
            self._set_map(ClusterMap.parse(answer["map"]))
        except (RequestError, TimeoutError, OSError, MapError, KeyError, TypeError) as error:
            log.debug("map fetch from %s failed: %s", target, error)

    # ---------------------------------------------------------- meta leader: plan

    def _plan(self) -> None:
        meta = self.meta
        assert meta is not None
        raft = meta.raft
        if raft.log.term_at(raft.log.commit_index) != raft.term:
            return  # not yet sure of the meta state: wait for this term's first commit
        now = time.monotonic()
        machine = meta.sm
        heard = {n for n, at in self._heard.items() if now - at < HEARD_WINDOW_S}
        dead_after = self.node.config.dead_after_s
        silent = {n for n in machine.members
                  if n not in heard
                  and now - max(self._heard.get(n, 0.0), self._leader_since) > dead_after}
        views = {s: view for s, (at, _, view) in self._views.items()
                 if now - at < VIEW_MAX_AGE_S}
        views[META_GROUP] = view_of(meta.raft)
        self._time_moves(machine, now)
        actions = plan_actions(machine, views, heard=heard, silent=silent,
                               max_moves=self.node.config.max_moves)
        if not actions and not machine.targets:
            actions = self._leader_transfers(machine, views, heard)
        self.last_plan = [a.why if isinstance(a, ProposeMeta) else
                          f"shard {a.shard}: {a.change} {a.node}" for a in actions]
        for action in actions:
            if isinstance(action, ProposeMeta):
                self._propose_meta(action)
            else:
                self._send_change(action)

    def _time_moves(self, machine: MetaStateMachine, now: float) -> None:
        """Log how long each move took, from its target being set to its being done."""
        for shard in machine.targets:
            if shard not in self._move_started:
                self._move_started[shard] = (now, self._bytes_sent(shard))
        for shard in [s for s in self._move_started if s not in machine.targets]:
            started, sent_before = self._move_started.pop(shard)
            seconds, sent = now - started, self._bytes_sent(shard) - sent_before
            self.moves_done.append((shard, round(seconds, 3), sent))
            del self.moves_done[:-MOVES_KEPT]
            log.info("rebalancer: shard %d moved in %.1f s, %d snapshot bytes", shard,
                     seconds, sent)

    def _bytes_sent(self, shard: int) -> int:
        """Snapshot bytes every node that led `shard` says it sent for it."""
        return sum(self._snapshot_bytes.get(shard, {}).values())

    def _leader_transfers(self, machine: MetaStateMachine, views: dict[int, ShardView],
                          heard: set[int]) -> list[ProposeMeta | ShardChange]:
        """Even out shard leaders once no replica is moving."""
        views = {s: v for s, v in views.items() if s != META_GROUP}
        if len(views) < machine.shards:
            return []  # some shard's leader is unknown: wait for a settled view
        placement = {s: [n for n in v.voters if n in heard and
                         machine.members.get(n) is not None and
                         machine.members[n].state == UP] for s, v in views.items()}
        placement = {s: nodes for s, nodes in placement.items() if nodes}
        if not placement:
            return []
        current = {s: v.leader for s, v in views.items()}
        now = time.monotonic()
        if current != self._leaders_seen:
            self._leaders_seen, self._leaders_since = current, now
        if now - self._leaders_since < LEADERS_SETTLE_S:
            return []
        target = plan_leaders(placement, current)
        changes: list[ProposeMeta | ShardChange] = []
        for shard, to in sorted(target.items()):
            view = views[shard]
            if to == view.leader or to not in view.caught_up:
                continue
            changes.append(ShardChange(shard, view.leader, "transfer", to, view.conf_index))
            if len(changes) >= MAX_LEADER_TRANSFERS:
                break
        return changes

    def _propose_meta(self, action: ProposeMeta) -> None:
        meta = self.meta
        if meta is None or action.command in self._pending_meta:
            return
        self._pending_meta.add(action.command)
        log.info("rebalancer: %s", action.why)

        def done(result: Any, error: RequestError | None) -> None:
            self._pending_meta.discard(action.command)
            if error is not None:
                log.info("rebalancer: %s failed: %s", action.why, error)

        meta.propose(action.command, done)
        self.node.mark(META_GROUP)

    def _send_change(self, change: ShardChange) -> None:
        if change.shard in self._pending_changes:
            return
        self._pending_changes.add(change.shard)
        log.info("rebalancer: shard %d: %s node %d (asking node %d)", change.shard,
                 change.change, change.node, change.leader)
        body = {"op": "shard_change", "shard": change.shard, "change": change.change,
                "node": change.node, "conf_index": change.conf_index}

        async def send() -> None:
            try:
                if change.leader == self.node.config.node_id:
                    self.apply_change(body)
                else:
                    address = self.map.address(change.leader)
                    if address is not None:
                        await self.node.call_node(address, body, MEMBERSHIP_CALL_TIMEOUT_S)
            except (RequestError, TimeoutError, OSError) as error:
                log.info("rebalancer: shard %d %s %d: %s", change.shard, change.change,
                         change.node, error)
            finally:
                self._pending_changes.discard(change.shard)

        self._spawn(send())

    def status(self) -> dict[str, Any]:
        """What only the meta leader knows: when it last heard each node, recent moves."""
        if not self._leader_term:
            return {}
        now = time.monotonic()
        return {"meta_leader": True,
                "heard_s_ago": {str(n): round(now - at, 1) for n, at in self._heard.items()},
                "moves": self.moves_done[-MOVES_KEPT:],
                "last_plan": self.last_plan[:32]}

    # ------------------------------------------------------------------ requests

    def op_report(self, body: dict[str, Any], reply: Reply) -> None:
        node = rq.field(body, "node", int)
        views = rq.field(body, "views", list)
        if self.meta is None or self.meta.raft.role != Role.LEADER:
            reply(None, self.meta.not_leader() if self.meta else Unavailable("no meta here"))
            return
        now = time.monotonic()
        self._heard[node] = now
        for raw in views:
            try:
                shard, term, voters, learners, conf_index, committed, caught_up, sent = raw
                view = ShardView(int(shard), node, tuple(voters), tuple(learners),
                                 int(conf_index), bool(committed), frozenset(caught_up))
                self._snapshot_bytes.setdefault(view.shard, {})[node] = int(sent)
            except (TypeError, ValueError) as error:
                raise BadRequest(f"malformed shard view {raw!r:.80}: {error}") from error
            known = self._views.get(view.shard)
            if known is None or term >= known[1]:
                self._views[view.shard] = (now, int(term), view)
        leaders = {str(s): v.leader for s, (at, _, v) in self._views.items()
                   if now - at < VIEW_MAX_AGE_S}
        reply({"version": self.meta.sm.version, "leaders": leaders}, None)

    def op_join(self, body: dict[str, Any], reply: Reply) -> None:
        node = rq.field(body, "node", int)
        address = rq.field(body, "address", str)
        if body.get("cluster") != self.node.config.cluster:
            raise BadRequest(f"this node belongs to cluster {self.node.config.cluster!r}")
        self._meta_propose(encode_command("add_node", node, address), reply)

    def op_node_state(self, body: dict[str, Any], reply: Reply) -> None:
        node = rq.field(body, "node", int)
        state = rq.field(body, "state", str)
        if state not in (UP, DRAINING, REMOVED):
            raise BadRequest(f"a node can be set up, draining or removed, not {state!r}")
        self._meta_propose(encode_command("set_state", node, state), reply)

    def _meta_propose(self, command: bytes, reply: Reply) -> None:
        """Propose a membership command; answer with the map it made."""
        meta = self.meta
        if meta is None:
            raise Unavailable(f"node {self.node.config.node_id} holds no meta replica")

        def done(result: Any, error: RequestError | None) -> None:
            if error is not None:
                reply(None, error)
            else:
                reply({"map": meta.sm.to_map()}, None)

        meta.propose(command, done)
        self.node.mark(META_GROUP)

    def op_map(self, body: dict[str, Any], reply: Reply) -> None:
        leaders = dict(self.leaders)
        for group, replica in self.node.replicas.items():
            if group != META_GROUP and replica.raft.leader:
                leaders[group] = replica.raft.leader
        reply({"map": self.map.to_wire(), "leaders": {str(s): n for s, n in leaders.items()}},
              None)

    def op_shard_change(self, body: dict[str, Any], reply: Reply) -> None:
        reply(self.apply_change(body), None)

    def apply_change(self, body: dict[str, Any]) -> bool:
        shard = rq.field(body, "shard", int)
        change = rq.field(body, "change", str)
        target = rq.field(body, "node", int)
        conf_index = rq.field(body, "conf_index", int)
        replica = self.node.replicas.get(shard)
        if replica is None or replica.raft.role != Role.LEADER:
            raise Unavailable(f"node {self.node.config.node_id} does not lead group {shard}")
        raft = replica.raft
        if raft.conf_index != conf_index:
            raise Unavailable(f"group {shard} is at configuration {raft.conf_index}, "
                              f"not {conf_index}: step decided on a stale view")
        try:
            if change == "transfer":
                if not self.node.hand_over(replica, target):
                    raise Unavailable(f"group {shard}: leadership cannot move to {target}")
            elif change in ("add_learner", "promote", "remove"):
                raft.propose_conf_change(change, target)
            else:
                raise BadRequest(f"unknown change {change!r}")
        except ProposalDropped as error:
            raise Unavailable(f"group {shard}: {error}") from error
        log.info("group %d: %s node %d", shard, change, target)
        self.node.mark(shard)
        return True

    async def close(self) -> None:
        if self._reporting is not None:
            self._reporting.cancel()
        for task in list(self._calls):
            task.cancel()
        await asyncio.gather(*self._calls, return_exceptions=True)

