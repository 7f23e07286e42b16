"""The lease-and-lock workload of the simulator, and the checks it feeds.

Theory of operation
-------------------
A few lock clients run beside the key-value clients, against the same Raft group,
with the real shard state machine (`ringlock.statemachine`) applying their
commands. Each one loops: grant a lease, keep it alive, acquire one of a few lock
names, hold it briefly, write a fenced key with the grant's token, release.

Leases are modelled as the server keeps them (`SimNode` holds the server side):

  * The leader keeps every lease's deadline in its memory, on its own clock (the
    simulated time), never in the log. A keepalive is a ReadIndex read: the leader
    refreshes the deadline only once its leadership is confirmed and the lease is
    applied, so a deposed leader cannot stretch a lease its successor is timing.
  * A node that becomes leader starts every lease's clock afresh from then: a lease
    never expires early on failover (a successor cannot know the keepalives its
    predecessor heard). A node that stops leading forgets its clocks.
  * An expired lease becomes a proposed `lease_revoke`; the locks it held pass to
    the next waiters.
  * Grants to waiters are pushed: the leader that applies an entry whose result
    hands a lock on (`grants_of`) tells the waiter; nobody polls. A push can be
    lost (the leader crashes, or applied the entry as a follower); a waiter that
    hears nothing for a while re-attaches by asking again with the same waiter id.

The client side is conservative, as a real client must be: a lease is valid until
the time the client SENT its last successful keepalive (or the grant) plus the TTL.
Past that, a hold is over as far as the client knows, and is recorded with an
unknown release. The leader's deadline is the time it confirmed that keepalive
plus the TTL, later than the client's, so with clocks that run at one rate the
server never hands on a lock its holder still counts as held.

Recorded for the checks:

  * `holds`: one `LockHold` per grant the client learned of in time: acquired when
    the grant reached it, released when it sent the release, None when its lease
    may have expired first. `check_lock_history` checks them at the end of the seed.
  * `FenceOracle`: every applied entry, in log order, is checked once: an accepted
    fenced write never carries a token older than a grant of its lock already
    applied, and the accepted fenced writes to a key carry non-decreasing tokens.
    This is what makes a holder that stalled past its lease harmless: its late
    write must be refused (`FencedOut`) if the lock has moved on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgpack

from ringlock.checker.locks import LockHold
from ringlock.sim.params import US_PER_MS
from ringlock.sim.safety import SafetyViolation
from ringlock.statemachine.kv import Acquired, FencedOut, NotHolder, StateMachineError, encode
from ringlock.statemachine.locks import Grant, grants_of

if TYPE_CHECKING:
    from ringlock.sim.cluster import Simulation
    from ringlock.sim.node import ClientRequest

LOCK_KINDS = frozenset({"lease_grant", "keepalive", "lock_acquire", "fenced_put",
                        "lock_release"})
"""Request kinds of the lock workload; every one but `keepalive` is a log entry."""
CLIENT_BASE = 1_000
"""Lock client i is client CLIENT_BASE + i to the state machine's de-duplication."""
ID_STRIDE = 1_000_000
"""Lease and waiter ids are client * ID_STRIDE + a counter: unique, and they name
their client (a pushed grant finds its waiter without a table)."""
MAX_THINK_US = 20 * US_PER_MS
KEEPALIVE_RETRIES = 2
"""A keepalive told "not the leader" follows the hint this many times, no more."""

IDLE, GRANTING, LEASED, ACQUIRING, WAITING, HOLDING, WRITING, RELEASING = range(8)


@dataclass(slots=True)
class LockClient:
    id: int
    leader_guess: int
    phase: int = IDLE
    lease: int = 0
    valid_until: int = 0
    """The end of the lease as far as the client may assume: send time of its last
    successful keepalive (or grant) plus the TTL."""
    grant_sent: int = 0
    lock: bytes = b""
    waiter: int = 0
    token: int = 0
    acquired: int = 0
    recorded: bool = False
    """The current hold is in the history already (its end is decided)."""
    pending: ClientRequest | None = None
    """The request in flight on the main channel (keepalives go beside it)."""
    attempts: list[int] = field(default_factory=list)
    """Op ids of every attempt of the pending request: under load an answer can come
    after the client tried again, and it is as good as the later attempt's."""
    deadline: int = 0
    """When the pending request, or a wait for a pushed grant, is given up."""
    paused_until: int = 0
    step_gen: int = 0
    counter: int = 0

    def next_id(self) -> int:
        self.counter += 1
        return self.id * ID_STRIDE + self.counter


class FenceOracle:
    """Checks each applied entry once, in log order (Raft's safety is checked
    elsewhere, so the first node to apply an index speaks for every node)."""

    __slots__ = ("applied", "fenced_ok", "fenced_out", "granted", "grants", "last_write")

    def __init__(self) -> None:
        self.applied = 0
        self.granted: dict[bytes, int] = {}
        """lock name -> highest token of a grant applied so far."""
        self.last_write: dict[bytes, int] = {}
        """fenced key -> token of the last accepted fenced write."""
        self.grants = 0
        self.fenced_ok = 0
        self.fenced_out = 0

    def on_apply(self, index: int, data: bytes, result: Any) -> None:
        if index <= self.applied:
            return
        self.applied = index
        _, command = msgpack.unpackb(data)
        op, *args = msgpack.unpackb(command)
        if op == "lock_acquire" and isinstance(result, Acquired) and result.status == "granted":
            # A waiter asking again (re-attaching) is told of its grant again: same token.
            self._grant(args[2], result.value, again_ok=True)
        for grant in grants_of(result):
            self._grant(grant.name, grant.token, again_ok=False)
        if op == "put" and len(args) == 7 and args[6] is not None:
            name, token = args[6]
            key = args[2]
            if isinstance(result, FencedOut):
                self.fenced_out += 1
                return
            if isinstance(result, StateMachineError):
                return
            self.fenced_ok += 1
            highest = self.granted.get(name, 0)
            if token < highest:
                raise SafetyViolation(
                    "fencing", f"index {index}: a write to {key!r} fenced with token {token} "
                    f"of lock {name!r} was accepted after a grant with token {highest}")
            last = self.last_write.get(key, 0)
            if token < last:
                raise SafetyViolation(
                    "fencing", f"index {index}: a write to {key!r} with token {token} was "
                    f"accepted after one with token {last}")
            self.last_write[key] = token

    def _grant(self, name: bytes, token: int, *, again_ok: bool) -> None:
        highest = self.granted.get(name, 0)
        if again_ok and token == highest:
            return
        if token <= highest:
            raise SafetyViolation(
                "fencing", f"lock {name!r} granted with token {token}, not above the "
                f"earlier grant's {highest}")
        self.grants += 1
        self.granted[name] = token


SHARD_PREFIX: bytes = msgpack.packb(["shard", b""])[:7]
"""How every ["shard", command] entry starts: an array of two, then the str "shard"."""


def shard_command(request: ClientRequest) -> bytes:
    """The shard state machine command for a lock workload request."""
    client, seq, arg = request.client, request.op_id, request.arg
    if request.kind == "lease_grant":
        return encode("lease_grant", client, seq, arg[0], arg[1])
    if request.kind == "lock_acquire":
        name, lease, waiter = arg
        return encode("lock_acquire", client, seq, name, lease, waiter)
    if request.kind == "fenced_put":
        name, token, value = arg
        return encode("put", client, seq, request.key.encode(), value, 0, False,
                      [name, token])
    if request.kind == "lock_release":
        name, waiter = arg
        return encode("lock_release", client, seq, name, waiter)
    raise ValueError(f"not a lock workload command: {request.kind!r}")


class LockWorkload:
    """The lock clients of one simulation, their history and its checks."""

    def __init__(self, sim: Simulation, event: int) -> None:
        self._event = event
        """The simulation's event kind for lock client timers and pushed grants."""
        self.sim = sim
        p = sim.params
        self.ttl = p.lease_ttl_us
        self.keepalive_every = max(p.tick_us, p.lease_ttl_us // 4)
        self.names = [f"L{i}".encode() for i in range(p.lock_names)]
        self.clients = [LockClient(i, sim.rng.randint(1, p.nodes))
                        for i in range(1, p.lock_clients + 1)]
        self.holds: list[LockHold] = []
        self.oracle = FenceOracle()
        self.pauses = 0
        self.grants_after_heal = 0

    # --------------------------------------------------------------- the loop

    def start(self) -> None:
        rng = self.sim.rng
        for client in self.clients:
            self._later(client, rng.randrange(10 * US_PER_MS))
            self.sim._push(rng.randrange(self.keepalive_every), self._event, client.id, "tick")

    def finish(self) -> None:
        """The run ends: a hold still open has an unknown end."""
        for client in self.clients:
            if client.phase in (HOLDING, WRITING) and not client.recorded:
                self._record(client, None)

    def on_event(self, client_id: int, what: Any) -> None:
        client = self.clients[client_id - 1]
        if what == "tick":
            self.sim._push(self.sim.now + self.keepalive_every, self._event, client_id, "tick")
            self._tick(client)
        elif isinstance(what, Grant):
            self._on_push(client, what)
        elif what == client.step_gen:
            self._step(client)

    def push_grant(self, grant: Grant) -> None:
        """A leader applied an entry that handed a lock to `grant.waiter`: tell it."""
        client_id = grant.waiter // ID_STRIDE
        if not 1 <= client_id <= len(self.clients):
            return
        sim = self.sim
        if sim.drop_rate and sim.rng.random() < sim.drop_rate:
            return
        sim._push(sim.now + sim._link_delay(), self._event, client_id, grant)

    def _later(self, client: LockClient, delay: int) -> None:
        client.step_gen += 1
        self.sim._push(self.sim.now + delay, self._event, client.id, client.step_gen)

    # ---------------------------------------------------------------- the client

    def _tick(self, client: LockClient) -> None:
        now = self.sim.now
        if client.paused_until:
            if now < client.paused_until:
                return  # stalled: no keepalives, no steps
            client.paused_until = 0
            # It wakes up and writes with the token it had, unchecked: fencing's case.
            self._write(client, again=False)
            return
        leased = client.lease != 0 and client.phase != GRANTING
        if leased and now >= client.valid_until:
            self._lose(client)
            return
        if leased:
            self._keepalive(client, 0)
        if client.pending is not None and now >= client.deadline:
            self._unknown(client)
        elif client.phase == WAITING and now >= client.deadline:
            self._acquire(client, again=False)  # no push came: re-attach with the same waiter

    def _step(self, client: LockClient) -> None:
        """Take the next action of the loop (a timer fired, or a reply asked for it)."""
        if client.paused_until or client.pending is not None:
            return
        phase = client.phase
        if phase == IDLE:
            client.lease = client.next_id()
            client.grant_sent = self.sim.now  # the first attempt may be the one that applies
            client.phase = GRANTING
            self._send(client, "lease_grant", (client.lease, self.ttl // US_PER_MS),
                       again=False)
        elif phase == GRANTING:
            self._send(client, "lease_grant", (client.lease, self.ttl // US_PER_MS),
                       again=True)
        elif phase == LEASED:
            client.lock = self.sim.rng.choice(self.names)
            client.waiter = client.next_id()
            self._acquire(client, again=False)
        elif phase == ACQUIRING:
            self._acquire(client, again=True)
        elif phase == HOLDING:
            if self.sim.now >= client.valid_until:
                self._lose(client)
            else:
                self._write(client, again=False)
        elif phase == WRITING:
            self._write(client, again=True)
        elif phase == RELEASING:
            self._send(client, "lock_release", (client.lock, client.waiter), again=True)

    def _acquire(self, client: LockClient, *, again: bool) -> None:
        """Ask for the lock; asked again with the same waiter, it re-attaches: the answer
        is where that waiter stands (granted with its token, or queued)."""
        client.phase = ACQUIRING
        self._send(client, "lock_acquire", (client.lock, client.lease, client.waiter),
                   again=again)

    def _write(self, client: LockClient, *, again: bool) -> None:
        client.phase = WRITING
        value = msgpack.packb([client.id, client.token])
        self._send(client, "fenced_put", (client.lock, client.token, value),
                   key="fence/" + client.lock.decode(), again=again)

    def _end_of_hold(self, client: LockClient) -> int | None:
        """The end of a hold the client stops now: now, unless its lease may have
        expired already (then unknown)."""
        now = self.sim.now
        return now if now < client.valid_until else None

    def _release(self, client: LockClient) -> None:
        if not client.recorded:
            self._record(client, self._end_of_hold(client))
        client.phase = RELEASING
        self._send(client, "lock_release", (client.lock, client.waiter), again=False)

    def _send(self, client: LockClient, kind: str, arg: Any, key: str = "", *,
              again: bool) -> None:
        """Send a request; `again` marks another attempt at the pending one."""
        sim = self.sim
        sim.op_counter += 1
        request = _request(CLIENT_BASE + client.id, sim.op_counter, kind, key, arg)
        client.pending = request
        if not again:
            client.attempts = []
        client.attempts.append(request.op_id)
        client.deadline = sim.now + sim.params.op_timeout_us
        client.leader_guess = sim.send_client_request(request, client.leader_guess)

    def _keepalive(self, client: LockClient, retries: int) -> None:
        sim = self.sim
        sim.op_counter += 1
        request = _request(CLIENT_BASE + client.id, sim.op_counter, "keepalive", "",
                           (client.lease, sim.now, retries))
        client.leader_guess = sim.send_client_request(request, client.leader_guess)

    def _got(self, client: LockClient, token: int) -> None:
        """The grant reached the client."""
        sim = self.sim
        client.pending = None
        if sim.now >= client.valid_until:
            self._lose(client)  # too late to use: the lease may be gone
            return
        client.phase = HOLDING
        client.token = token
        client.acquired = sim.now
        client.recorded = False
        if not sim.faults_on:
            self.grants_after_heal += 1
        rng = sim.rng
        if sim.faults_on and rng.random() < sim.params.lock_pause_rate:
            self.pauses += 1
            client.paused_until = sim.now + rng.randint(self.ttl // 2, 2 * self.ttl)
            client.step_gen += 1  # the stall swallows any step already due
            return
        # Held for up to half a lease: long enough that failovers strike mid-hold.
        self._later(client, rng.randint(0, self.ttl // 2))

    def _lose(self, client: LockClient) -> None:
        """The lease is gone, or may be: every hold under it is over. Past the lease's
        validity, when it ended is unknown. Before it, the client learned of the end
        (its keepalive found the lease revoked, its write was fenced out) and stops now,
        so its hold ends now: a correct server cannot have handed the lock on before the
        validity ended, so a grant to another before now is a violation the checker sees."""
        if client.phase in (HOLDING, WRITING) and not client.recorded:
            self._record(client, self._end_of_hold(client))
        client.phase = IDLE
        client.lease = 0
        client.pending = None
        self._later(client, self.sim.rng.randint(0, MAX_THINK_US))

    def _record(self, client: LockClient, released: int | None) -> None:
        client.recorded = True
        self.holds.append(LockHold(client.lock.decode(), client.id, client.token,
                                   client.acquired, released))

    # ----------------------------------------------------------------- replies

    def _on_push(self, client: LockClient, grant: Grant) -> None:
        if client.phase in (ACQUIRING, WAITING) and grant.waiter == client.waiter:
            self._got(client, grant.token)

    def on_reply(self, request: ClientRequest, status: str, value: Any) -> None:
        client = self.clients[request.client - CLIENT_BASE - 1]
        if request.kind == "keepalive":
            self._on_keepalive(client, request, status, value)
            return
        if client.pending is None or request.op_id not in client.attempts:
            return  # the client moved on
        if status != "ok" and request.op_id != client.pending.op_id:
            return  # an earlier attempt failed: the later one is under way
        if status == "unknown":
            self._unknown(client)
            return
        if status != "ok":
            client.pending = None
            client.leader_guess = value if status == "not_leader" and value else (
                self.sim._random_member())
            self._later(client, self.sim.rng.randint(US_PER_MS, 10 * US_PER_MS))
            return
        client.pending = None
        kind = request.kind
        if kind == "lease_grant":
            if value == client.lease or (
                    isinstance(value, StateMachineError) and "exists" in str(value)):
                client.phase = LEASED  # an earlier attempt may have made it: count from it
                client.valid_until = client.grant_sent + self.ttl
                self._later(client, 0)
            else:
                self._lose(client)
        elif kind == "lock_acquire":
            if isinstance(value, Acquired) and value.status == "granted":
                self._got(client, value.value)
            elif isinstance(value, Acquired):
                client.phase = WAITING
                client.deadline = self.sim.now + self.ttl
            else:
                self._lose(client)  # the lease is gone
        elif kind == "fenced_put":
            if isinstance(value, FencedOut) and not client.recorded:
                self._record(client, self._end_of_hold(client))  # the lock moved on
            self._release(client)
        elif kind == "lock_release":
            if value is None or isinstance(value, (Grant, NotHolder)):
                client.phase = LEASED
                self._later(client, self.sim.rng.randint(0, MAX_THINK_US))
            else:
                self._lose(client)

    def _unknown(self, client: LockClient) -> None:
        """No answer: ask again, except a fenced write, which is simply over."""
        client.pending = None
        client.leader_guess = self.sim._random_member()
        if client.phase == WRITING:
            self._release(client)
        else:
            self._later(client, 0)

    def _on_keepalive(self, client: LockClient, request: ClientRequest, status: str,
                      value: Any) -> None:
        lease, sent, retries = request.arg
        if lease != client.lease:
            return
        if status == "ok":
            if value is None:
                self._lose(client)  # revoked: the server says so
            else:
                client.valid_until = max(client.valid_until, sent + self.ttl)
        elif status == "not_leader" and value and retries < KEEPALIVE_RETRIES:
            client.leader_guess = value
            self._keepalive(client, retries + 1)


def _request(client: int, op_id: int, kind: str, key: str, arg: Any) -> ClientRequest:
    from ringlock.sim.node import ClientRequest

    return ClientRequest(client, op_id, kind, key, arg)
