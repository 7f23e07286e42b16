"""Fuzzing the command decoders: `ShardStateMachine.apply` and `MetaStateMachine.apply`.

Every replica applies whatever the log holds, so a malformed command must never raise
(a raise stops the node's drive loop: the node exits) and must change nothing.

"Nothing changed", for a command answered with an error: the revision, the keys, the
leases, the locks and fences and the watch history are exactly as before. The one thing
an erring command may add is its own de-duplication record (client, seq) -> error: the
kv.py docstring says a retried write gets the recorded result, errors included, so the
retry of a refused write is refused again rather than applied. Every other client's
records are unchanged. Besides, whatever the command, the state stays well-typed: its
snapshot must encode and restore to the same bytes (a junk key or client id that slipped
in would break a later snapshot and with it the node).
"""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from ringlock.sharding.meta import META_GROUP, MetaStateMachine, encode_command
from ringlock.statemachine.kv import ShardStateMachine, encode
from tests.fuzzing import Counter, fuzz_settings, msgpack_values, record, scalars

# ------------------------------------------------------------------ the shard machine

LEASE = 7
LOCK = b"lk"


def _seeded() -> ShardStateMachine:
    """A machine with a bit of everything: keys (one under a lease), a lock with a
    holder and a queued waiter, a fence seen, dedup records."""
    machine = ShardStateMachine()
    commands = [
        encode("lease_grant", 1, 1, LEASE, 5000),
        encode("put", 1, 2, b"a", b"1", 0, False),
        encode("put", 1, 3, b"b", b"2", LEASE, False),
        encode("lock_acquire", 2, 1, LOCK, LEASE, 11),
        encode("lock_acquire", 2, 2, LOCK, LEASE, 12),
        encode("put", 2, 3, b"c", b"3", 0, False, [LOCK, 4]),
    ]
    for index, command in enumerate(commands, start=1):
        assert not isinstance(machine.apply(index, command), Exception)
    return machine


def _state(machine: ShardStateMachine) -> tuple[Any, ...]:
    """Everything but applied_index and dedup, from the snapshot (which must encode)."""
    fields = msgpack.unpackb(machine.snapshot(), strict_map_key=False)
    _, revision, _, flat, leases, _, locks = fields
    return revision, flat, leases, locks, list(machine.history._changes)


def _dedup(machine: ShardStateMachine) -> dict[Any, dict[Any, Any]]:
    return {client: dict(results) for client, results in machine.dedup.items()}


def _check_well_typed(machine: ShardStateMachine) -> None:
    snapshot = machine.snapshot()
    assert ShardStateMachine.restore(snapshot).snapshot() == snapshot
    assert all(type(k) is bytes and type(v) is bytes for k, v in machine.data.items())
    for lease, (ttl, keys) in machine.leases.items():
        assert type(lease) is int and type(ttl) is int, (lease, ttl)
        assert all(type(key) is bytes for key in keys)
    for client, results in machine.dedup.items():
        assert type(client) is int and all(type(seq) is int for seq in results), client


class ShardDriver:
    """Applies commands at increasing indexes and checks the rules after each."""

    def __init__(self) -> None:
        self.machine = _seeded()
        self.index = self.machine.applied_index
        self.errors = 0

    def apply(self, command: bytes) -> Any:
        machine = self.machine
        before, dedup_before = _state(machine), _dedup(machine)
        self.index += 1
        result = machine.apply(self.index, command)  # must not raise
        if isinstance(result, Exception):
            self.errors += 1
            assert _state(machine) == before, f"{command!r} erred ({result}) and changed state"
            dedup_after = _dedup(machine)
            for client, results in dedup_after.items():
                old = dedup_before.get(client, {})
                added = {seq: r for seq, r in results.items() if seq not in old}
                assert {seq: r for seq, r in results.items() if seq in old} == old
                assert len(added) <= 1, (command, added)
            assert set(dedup_before) <= set(dedup_after)
        _check_well_typed(machine)
        return result


def test_shard_apply_random_bytes() -> None:
    counter = Counter()

    @fuzz_settings(400)
    @given(st.binary(max_size=64))
    def run(data: bytes) -> None:
        counter.inputs += 1
        ShardDriver().apply(data)

    run()
    record("ShardStateMachine.apply random bytes", counter.inputs)
    assert counter.inputs >= 300


def test_shard_apply_random_msgpack_values() -> None:
    counter = Counter()

    @fuzz_settings(400)
    @given(msgpack_values)
    def run(value: Any) -> None:
        counter.inputs += 1
        ShardDriver().apply(msgpack.packb(value))

    run()
    record("ShardStateMachine.apply random msgpack values", counter.inputs)
    assert counter.inputs >= 300


OPS = ["put", "delete", "cas", "lease_grant", "lease_revoke", "lock_acquire",
       "lock_release", "lock_cancel", "session_end"]
keys = st.sampled_from([b"a", b"b", b"c", b"new"])


def valid_commands() -> st.SearchStrategy[list[Any]]:
    """Well-formed commands over the seeded state (they may still be refused)."""
    session = st.tuples(st.integers(0, 3), st.integers(0, 50))
    leases = st.sampled_from([0, LEASE, 8])
    fence = st.one_of(st.just([]), st.tuples(st.just(LOCK), st.integers(1, 20)).map(
        lambda f: [list(f)]))
    shapes = [
        st.tuples(st.just("put"), keys, st.binary(max_size=8), leases, st.booleans(), fence)
        .map(lambda t: [t[0], t[1], t[2], t[3], t[4], *t[5]]),
        st.tuples(st.just("delete"), keys, st.booleans(), fence)
        .map(lambda t: [t[0], t[1], t[2], *t[3]]),
        st.tuples(st.just("cas"), keys, st.sampled_from(["value", "version", "mod_revision"]),
                  st.one_of(st.none(), st.binary(max_size=2), st.integers(0, 9)),
                  st.sampled_from(["put", "delete"]), st.binary(max_size=4))
        .map(list),
        st.tuples(st.just("lease_grant"), st.integers(1, 10), st.integers(100, 10_000))
        .map(list),
        st.tuples(st.just("lease_revoke"), st.integers(1, 10)).map(list),
        st.tuples(st.just("lock_acquire"), st.sampled_from([LOCK, b"l2"]), leases,
                  st.integers(10, 14), st.booleans()).map(list),
        st.tuples(st.just("lock_release"), st.sampled_from([LOCK, b"l2"]),
                  st.integers(10, 14)).map(list),
        st.tuples(st.just("lock_cancel"), st.sampled_from([LOCK, b"l2"]),
                  st.integers(10, 14)).map(list),
        st.tuples(st.just("session_end"), st.integers(0, 3)).map(list),
    ]
    return st.tuples(session, st.one_of(shapes)).map(
        lambda t: [t[1][0], t[0][0], t[0][1], *t[1][1:]])


junk = st.one_of(
    st.sampled_from([2**64 - 1, 2**63, -1, -(2**63), 0, 1, True, False, None, 0.0, 1.0, 1.5,
                     float("nan"), "a", "ab", b"a", "put", b"put", "value", [], {}, [[[]]],
                     [1, 2], [1, "a"], [1, 2.5], [b"lk", 1], [b"lk", -1], {"a": 1}]),
    scalars,
    msgpack_values,
)
"""Wrong types, edge and huge ints, bytes for str and back, nested junk: weighted
towards the near misses a decoder is most likely to let through."""


@st.composite
def mutated(draw: st.DrawFn) -> list[Any]:
    """A valid command with one or more of: a field replaced by junk (wrong type, huge or
    negative int, bytes for str and back, nested junk), a field dropped, junk appended."""
    command = list(draw(valid_commands()))
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["replace", "replace", "swap", "drop", "append"]))
        if how == "replace" and command:  # mostly an argument: a junk op is refused early
            low = 3 if len(command) > 3 and draw(st.integers(0, 4)) else 0
            command[draw(st.integers(low, len(command) - 1))] = draw(junk)
        elif how == "swap" and command:
            position = draw(st.integers(0, len(command) - 1))
            value = command[position]
            if isinstance(value, bytes):
                command[position] = value.decode("latin-1")
            elif isinstance(value, str):
                command[position] = value.encode()
            elif isinstance(value, int):
                command[position] = draw(st.sampled_from([-value - 1, value + 2**63, str(value)]))
        elif how == "drop" and command:
            del command[draw(st.integers(0, len(command) - 1))]
        else:
            command.append(draw(junk))
    return command


def test_shard_apply_mutated_commands_interleaved_with_valid_ones() -> None:
    counter = Counter()
    errors = Counter()

    @fuzz_settings(300)
    @given(st.lists(st.tuples(st.booleans(), valid_commands(), mutated()), min_size=1,
                    max_size=8))
    def run(steps: list[tuple[bool, list[Any], list[Any]]]) -> None:
        driver = ShardDriver()
        for use_valid, valid, bad in steps:
            counter.inputs += 1
            try:
                command = msgpack.packb(valid if use_valid else bad)
            except (OverflowError, ValueError, TypeError):
                continue  # not encodable: it cannot be in a log either
            driver.apply(command)
        errors.inputs += driver.errors

    run()
    record("ShardStateMachine.apply valid+mutated commands", counter.inputs)
    print(f"  of which answered with an error: {errors.inputs}")
    assert counter.inputs >= 800


# ------------------------------------------------------------------- the meta machine

def _meta() -> MetaStateMachine:
    return MetaStateMachine.founding(4, 3, {1: "127.0.0.1:7101", 2: "127.0.0.1:7102",
                                            3: "127.0.0.1:7103"})


class MetaDriver:
    def __init__(self) -> None:
        self.machine = _meta()
        self.index = self.machine.applied_index

    def apply(self, command: bytes) -> Any:
        machine = self.machine
        before = machine.snapshot()
        self.index += 1
        result = machine.apply(self.index, command)  # must not raise
        after = machine.snapshot()  # must encode
        if isinstance(result, Exception):
            old, new = msgpack.unpackb(before), msgpack.unpackb(after)
            del old[2], new[2]  # applied_index
            assert old == new, f"{command!r} erred ({result}) and changed the meta state"
        restored = MetaStateMachine.restore(after)
        assert restored.snapshot() == after
        restored.to_map()
        for node, member in machine.members.items():
            assert type(node) is int and type(member.address) is str
            assert type(member.state) is str
        for group, config in machine.configs.items():
            assert type(group) is int and type(config.conf_index) is int, (group, config)
            assert all(type(n) is int for n in config.members), config
        for group, target in machine.targets.items():
            assert type(group) is int and all(type(n) is int for n in target)
        return result


def test_meta_apply_random_bytes_and_values() -> None:
    counter = Counter()

    @fuzz_settings(400)
    @given(st.one_of(st.binary(max_size=48), msgpack_values.map(msgpack.packb)))
    def run(data: bytes) -> None:
        counter.inputs += 1
        MetaDriver().apply(data)

    run()
    record("MetaStateMachine.apply random bytes/values", counter.inputs)
    assert counter.inputs >= 300


def valid_meta_commands() -> st.SearchStrategy[list[Any]]:
    nodes = st.integers(1, 5)
    return st.one_of(
        st.tuples(st.just("add_node"), nodes,
                  st.sampled_from(["127.0.0.1:7104", "127.0.0.1:7105", "127.0.0.1:7101"]))
        .map(list),
        st.tuples(st.just("set_state"), nodes,
                  st.sampled_from(["joining", "up", "draining", "dead", "removed"])).map(list),
        st.tuples(st.just("shard_config"), st.sampled_from([0, 1, 3, META_GROUP]),
                  st.lists(nodes, min_size=1, max_size=3, unique=True),
                  st.lists(st.integers(4, 5), max_size=1), st.integers(0, 9)).map(list),
        st.tuples(st.just("set_target"), st.integers(0, 3),
                  st.one_of(st.none(), st.lists(nodes, min_size=1, max_size=3, unique=True)))
        .map(list),
    )


@st.composite
def mutated_meta(draw: st.DrawFn) -> list[Any]:
    command = list(draw(valid_meta_commands()))
    for _ in range(draw(st.sampled_from([1, 1, 1, 2]))):
        how = draw(st.sampled_from(["replace", "replace", "replace", "replace", "drop",
                                    "append", "nest"]))
        if how == "replace" and command:  # mostly an argument: a junk op is refused early
            low = 1 if len(command) > 1 and draw(st.integers(0, 4)) else 0
            command[draw(st.integers(low, len(command) - 1))] = draw(junk)
        elif how == "nest" and len(command) > 2 and isinstance(command[2], list):
            command[2] = [*command[2], draw(junk)]
        elif how == "drop" and command:
            del command[draw(st.integers(0, len(command) - 1))]
        else:
            command.append(draw(junk))
    return command


def test_meta_apply_mutated_commands_interleaved_with_valid_ones() -> None:
    counter = Counter()

    @fuzz_settings(300)
    @given(st.lists(st.tuples(st.booleans(), valid_meta_commands(), mutated_meta()),
                    min_size=1, max_size=6))
    def run(steps: list[tuple[bool, list[Any], list[Any]]]) -> None:
        driver = MetaDriver()
        for use_valid, valid, bad in steps:
            counter.inputs += 1
            command = valid if use_valid else bad
            try:
                data = encode_command(*command) if command else msgpack.packb([])
            except (OverflowError, ValueError, TypeError):
                continue
            driver.apply(data)

    run()
    record("MetaStateMachine.apply valid+mutated commands", counter.inputs)
    assert counter.inputs >= 700


# ------------------------------------------------------------ regressions the fuzz found

def test_regression_meta_commands_with_junk_types_are_refused_and_change_nothing() -> None:
    for command in [("shard_config", 1.5, [1, 2], [], 5), ("shard_config", 1, "ab", [], 5),
                    ("shard_config", 1, [1, 2], [], 1.5), ("shard_config", 1, [1, 2.5], [], 5),
                    ("shard_config", True, [1, 2], [], 7), ("set_target", 1.0, [1]),
                    ("add_node", 4, "127.0.0.1:\u00b2"), ("add_node", 4, ["a"]),
                    ("set_state", [1], "up")]:
        result = MetaDriver().apply(encode_command(*command))
        assert isinstance(result, Exception), command


def test_regression_shard_commands_with_junk_types_are_refused_and_change_nothing() -> None:
    for command in [["put", 0, 0, b"k", "not bytes", 0, False],  # raised the revision
                    ["put", 0, 0, [1], b"v", 0, False],
                    ["put", 0, 0, 5, b"v", 0, False],            # an int key broke snapshots
                    ["lease_grant", 0, 0, -1, 1000],             # a put under it killed apply
                    ["put", 1, "seq", b"k", b"v", 0, False],     # a str seq broke snapshots
                    ["put", [1], 1, b"k", b"v", 0, False],       # unhashable client: raised
                    {"op": "put"}, "put", [None, 0, 0]]:
        assert isinstance(ShardDriver().apply(msgpack.packb(command)), Exception), command
