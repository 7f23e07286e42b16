"""The shard state machine: revisions, compare-and-swap, scans, leases, exactly-once
writes, and snapshots that restore the same state."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringlock.statemachine import KeyValue, ShardStateMachine, StateMachineError
from ringlock.statemachine.kv import encode


def _machine(*commands: bytes) -> ShardStateMachine:
    machine = ShardStateMachine()
    for index, command in enumerate(commands, start=1):
        machine.apply(index, command)
    return machine


def test_put_sets_revisions_and_version() -> None:
    machine = _machine(encode("put", 0, 0, b"a", b"1", 0, False),
                       encode("put", 0, 0, b"b", b"x", 0, False),
                       encode("put", 0, 0, b"a", b"2", 0, False))
    assert machine.get(b"a") == KeyValue(b"a", b"2", 1, 3, 2)
    assert machine.revision == 3


def test_put_can_return_the_previous_value() -> None:
    machine = _machine(encode("put", 0, 0, b"a", b"1", 0, False))
    previous = machine.apply(2, encode("put", 0, 0, b"a", b"2", 0, True))
    assert previous == KeyValue(b"a", b"1", 1, 1, 1)


def test_cas_compares_value_version_and_mod_revision() -> None:
    machine = _machine(encode("put", 0, 0, b"a", b"1", 0, False))
    assert machine.apply(2, encode("cas", 0, 0, b"a", "value", b"0", "put", b"2")) is False
    assert machine.apply(3, encode("cas", 0, 0, b"a", "value", b"1", "put", b"2")) is True
    assert machine.apply(4, encode("cas", 0, 0, b"a", "version", 2, "put", b"3")) is True
    assert machine.apply(5, encode("cas", 0, 0, b"a", "mod_revision", 3, "delete", b"")) is True
    assert machine.get(b"a") is None
    assert machine.apply(6, encode("cas", 0, 0, b"a", "version", 0, "put", b"new")) is True


def test_scan_by_prefix_in_order_with_limit_and_after() -> None:
    machine = _machine(*[encode("put", 0, 0, k, b"v", 0, False)
                         for k in (b"u/3", b"u/1", b"x/1", b"u/2")])
    assert [kv.key for kv in machine.scan(b"u/", 2)] == [b"u/1", b"u/2"]
    assert [kv.key for kv in machine.scan(b"u/", 10, after=b"u/2")] == [b"u/3"]


def test_a_retried_write_applies_once() -> None:
    machine = ShardStateMachine()
    machine.apply(1, encode("put", 9, 1, b"counter", b"1", 0, False))
    machine.apply(2, encode("put", 9, 2, b"counter", b"2", 0, False))
    machine.apply(3, encode("put", 9, 1, b"counter", b"1", 0, False))  # late retry of seq 1
    assert machine.get(b"counter").value == b"2"
    assert machine.revision == 2


def test_revoking_a_lease_deletes_its_keys() -> None:
    machine = _machine(encode("lease_grant", 0, 0, 5, 10_000),
                       encode("put", 0, 0, b"lock/a", b"me", 5, False),
                       encode("put", 0, 0, b"plain", b"x", 0, False))
    assert machine.apply(4, encode("lease_revoke", 0, 0, 5)) == 1
    assert machine.get(b"lock/a") is None and machine.get(b"plain") is not None


def test_bad_commands_get_an_error_and_change_nothing() -> None:
    machine = _machine(encode("put", 0, 0, b"a", b"1", 0, False))
    before = machine.snapshot()
    assert isinstance(machine.apply(2, b"\xc1garbage"), StateMachineError)
    assert isinstance(machine.apply(3, encode("nope", 0, 0)), StateMachineError)
    assert isinstance(machine.apply(4, encode("put", 0, 0, b"b", b"1", 99, False)),
                      StateMachineError)
    assert isinstance(machine.apply(5, encode("put", 0, 0, b"b")), StateMachineError)
    restored = ShardStateMachine.restore(before)
    assert restored.data == machine.data and restored.revision == machine.revision


keys = st.sampled_from([b"a", b"b", b"c"])
commands = st.one_of(
    st.tuples(st.just("put"), keys, st.binary(max_size=3), st.just(0), st.booleans()),
    st.tuples(st.just("delete"), keys, st.booleans()),
    st.tuples(st.just("cas"), keys, st.sampled_from(["version", "mod_revision"]),
              st.integers(0, 3), st.sampled_from(["put", "delete"]), st.binary(max_size=3)),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 5), commands), max_size=30))
def test_snapshot_restores_the_same_state_and_replays_alike(
    steps: list[tuple[int, int, tuple[object, ...]]],
) -> None:
    encoded = [encode(c[0], client, seq, *c[1:]) for client, seq, c in steps]  # type: ignore[arg-type]
    half = len(encoded) // 2
    original = _machine(*encoded[:half])
    copy = ShardStateMachine.restore(original.snapshot())
    for index, command in enumerate(encoded[half:], start=half + 1):
        assert original.apply(index, command) == copy.apply(index, command)
    assert original.snapshot() == copy.snapshot()


def test_the_client_that_wrote_least_recently_is_forgotten_first_even_across_a_snapshot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ringlock.statemachine import kv as kv_module

    monkeypatch.setattr(kv_module, "MAX_DEDUP_CLIENTS", 3)
    machine = ShardStateMachine()
    index = 0

    def write(sm: ShardStateMachine, client: int, seq: int) -> None:
        nonlocal index
        index += 1
        sm.apply(index, encode("put", client, seq, b"k", b"v", 0, False))

    for client in (1, 2, 3):
        write(machine, client, 1)
    write(machine, 1, 2)  # client 1 is now the most recent writer
    machine = ShardStateMachine.restore(machine.snapshot())
    write(machine, 4, 1)  # a fourth client: the least recent (2) is forgotten
    assert list(machine.dedup) == [3, 1, 4]
    revision = machine.revision
    write(machine, 1, 2)  # still remembered: a retry changes nothing
    assert machine.revision == revision
    write(machine, 2, 1)  # forgotten: the retry applies again (the documented limit)
    assert machine.revision == revision + 1


def test_a_snapshot_of_the_first_format_still_restores() -> None:
    import msgpack

    from ringlock.statemachine.kv import ShardStateMachine

    legacy = msgpack.packb([7, 9, [[b"k", b"v", 3, 7, 2, 0]], [], []])
    machine = ShardStateMachine.restore(legacy)
    kv = machine.get(b"k")
    assert kv is not None and (kv.value, kv.create_revision, kv.mod_revision, kv.version) == (
        b"v", 3, 7, 2)
    assert ShardStateMachine.restore(machine.snapshot()).snapshot() == machine.snapshot()
