"""Read-write locks and semaphores in the shard state machine: modes on the one FIFO
queue, fairness (writers are not starved), one token per grant, fences per mode,
lease revokes handing on to several, limits, de-duplication and snapshots."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringlock.statemachine import ShardStateMachine, StateMachineError
from ringlock.statemachine import locks as locks_module
from ringlock.statemachine.kv import (
    Acquired,
    FencedOut,
    Grant,
    Grants,
    LeaseNotFound,
    LeaseRevoked,
    LockLimitExceeded,
    NotHolder,
)
from ringlock.statemachine.locks import (
    LOCK_RECORD_FORMAT,
    MAX_SEMAPHORE_LIMIT,
    Holder,
    LockInfo,
    Waiter,
    grants_of,
)
from tests.unit.shard_helpers import Shard, shard_with_leases


def _holders(shard: Shard, name: bytes) -> list[int]:
    info = [i for i in shard.machine.locks_info() if i.name == name]
    return [h.waiter for h in info[0].holders] if info else []


def _queue(shard: Shard, name: bytes) -> list[tuple[int, str]]:
    info = [i for i in shard.machine.locks_info() if i.name == name]
    return [(w.waiter, w.mode) for w in info[0].queue] if info else []


# ---------------------------------------------------------------- read-write locks


def test_readers_share_a_lock_each_with_its_own_token() -> None:
    shard = shard_with_leases(1, 2, 3)
    first = shard("lock_acquire", b"L", 1, 10, True, "s")
    second = shard("lock_acquire", b"L", 2, 20, True, "s")
    third = shard("lock_acquire", b"L", 3, 30, False, "s")  # a try: granted, not busy
    assert [r.status for r in (first, second, third)] == ["granted"] * 3
    assert first.value < second.value < third.value == shard.machine.revision
    assert shard.machine.locks_info() == [LockInfo(
        b"L", [Holder(10, 1, first.value), Holder(20, 2, second.value),
               Holder(30, 3, third.value)], [], "s", 1)]
    assert shard.machine.locks.status(b"L", 20) == ("granted", second.value)
    assert shard("lock_acquire", b"L", 2, 20, True, "s") == ("granted", second.value)
    assert shard("lock_release", b"L", 20) is None  # the others still hold
    assert isinstance(shard("lock_release", b"L", 20), NotHolder)
    assert _holders(shard, b"L") == [10, 30]
    shard("lock_release", b"L", 10)
    shard("lock_release", b"L", 30)
    assert shard.machine.locks_info() == []
    shard.machine.locks.check_all()


def test_a_writer_waits_for_every_reader() -> None:
    shard = shard_with_leases(1, 2, 3)
    shard("lock_acquire", b"L", 1, 10, True, "s")
    shard("lock_acquire", b"L", 2, 20, True, "s")
    assert shard("lock_acquire", b"L", 3, 30, False, "x") == ("busy", 0)
    assert shard("lock_acquire", b"L", 3, 30) == ("queued", 1)  # mode "x" by default
    assert shard("lock_release", b"L", 10) is None  # reader 20 still holds
    assert shard.machine.locks.status(b"L", 30) == ("queued", 1)
    grant = shard("lock_release", b"L", 20)
    assert grant == Grant(b"L", 30, 3, shard.machine.revision)
    assert shard.machine.locks_info() == [LockInfo(b"L", [Holder(30, 3, grant.token)], [])]


def test_a_reader_arriving_behind_a_waiting_writer_waits_so_writers_do_not_starve() -> None:
    shard = shard_with_leases(1, 2, 3, 4)
    shard("lock_acquire", b"L", 1, 10, True, "s")
    shard("lock_acquire", b"L", 2, 20, True, "x")
    assert shard("lock_acquire", b"L", 3, 30, False, "s") == ("busy", 0)  # a try: busy
    assert shard("lock_acquire", b"L", 3, 30, True, "s") == ("queued", 2)
    assert shard("lock_acquire", b"L", 4, 40, True, "s") == ("queued", 3)
    assert _holders(shard, b"L") == [10]
    writer = shard("lock_release", b"L", 10)
    assert (writer.waiter, _holders(shard, b"L")) == (20, [20])
    readers = shard("lock_release", b"L", 20)
    assert isinstance(readers, Grants) and [g.waiter for g in readers] == [30, 40]
    shard.machine.locks.check_all()


def test_a_writers_release_grants_the_run_of_readers_at_the_head_at_once() -> None:
    shard = shard_with_leases(1, 2)
    shard("lock_acquire", b"L", 1, 1, True, "x")
    for waiter, mode in ((2, "s"), (3, "s"), (4, "s"), (5, "x"), (6, "s")):
        shard("lock_acquire", b"L", 2, waiter, True, mode)
    revision = shard.machine.revision
    handed = shard("lock_release", b"L", 1, client=7, seq=1)
    assert handed == Grants([Grant(b"L", w, 2, revision + i) for i, w in enumerate((2, 3, 4), 1)])
    assert grants_of(handed) == list(handed) and handed.grants == tuple(handed)
    assert _holders(shard, b"L") == [2, 3, 4]
    assert _queue(shard, b"L") == [(5, "x"), (6, "s")]  # stops at the first writer
    assert shard.machine.locks.status(b"L", 6) == ("queued", 2)
    again = shard.restored()("lock_release", b"L", 1, client=7, seq=1)  # a retry
    assert again == handed and isinstance(again, Grants)
    for reader in (2, 3):
        assert shard("lock_release", b"L", reader) is None
    assert shard("lock_release", b"L", 4).waiter == 5
    assert shard("lock_release", b"L", 5).waiter == 6
    shard.machine.locks.check_all()


def test_a_writer_leaving_the_queue_lets_the_readers_behind_it_in() -> None:
    shard = shard_with_leases(1, 2, 3)
    shard("lock_acquire", b"L", 1, 10, True, "s")
    shard("lock_acquire", b"L", 2, 20, True, "x")
    shard("lock_acquire", b"L", 3, 30, True, "s")
    shard("lock_acquire", b"L", 3, 31, True, "s")
    assert shard("lock_cancel", b"L", 20, True) == Grants(
        [Grant(b"L", 30, 3, shard.machine.revision - 1),
         Grant(b"L", 31, 3, shard.machine.revision)])
    assert _holders(shard, b"L") == [10, 30, 31] and _queue(shard, b"L") == []
    shard("lock_acquire", b"L", 2, 20, True, "x")
    shard("lock_acquire", b"L", 1, 11, True, "s")
    result = shard("lease_revoke", 2)  # the waiting writer's lease ends: 11 goes in
    assert [(g.waiter, g.token) for g in result.grants] == [(11, shard.machine.revision)]
    assert shard.machine.locks.departures == 2
    shard.machine.locks.check_all()


def test_a_waiter_asking_again_in_another_mode_is_refused() -> None:
    shard = shard_with_leases(1, 2)
    shard("lock_acquire", b"L", 1, 10, True, "s")
    shard("lock_acquire", b"L", 2, 20, True, "x")
    revision = shard.machine.revision
    for args in ((1, 10, True, "x"), (2, 20, True, "s")):
        refused = shard("lock_acquire", b"L", *args)
        assert isinstance(refused, StateMachineError) and "in mode" in str(refused)
    assert shard.machine.revision == revision and _queue(shard, b"L") == [(20, "x")]


# ------------------------------------------------------------------- semaphores


def test_a_semaphore_admits_its_limit_then_queues_and_a_release_admits_the_next() -> None:
    shard = shard_with_leases(1, 2)
    results = [shard("lock_acquire", b"S", 1 + w % 2, w, True, "n", 3) for w in range(5)]
    assert [r.status for r in results] == ["granted"] * 3 + ["queued"] * 2
    assert [r.value for r in results[3:]] == [1, 2]
    assert shard("lock_acquire", b"S", 1, 9, False, "n", 3) == ("busy", 0)
    info = shard.machine.locks_info()[0]
    assert (info.mode, info.limit, [h.waiter for h in info.holders]) == ("n", 3, [0, 1, 2])
    assert info.queue == [Waiter(3, 2, "n"), Waiter(4, 1, "n")]
    grant = shard("lock_release", b"S", 1)
    assert grant == Grant(b"S", 3, 2, shard.machine.revision)
    assert _holders(shard, b"S") == [0, 2, 3] and _queue(shard, b"S") == [(4, "n")]
    assert shard("lock_cancel", b"S", 4) is None  # a waiter leaving a full semaphore
    for waiter in (0, 2, 3):
        shard("lock_release", b"S", waiter)
    assert shard.machine.locks_info() == []
    # Freed, the semaphore is forgotten: another limit, or a plain lock, may follow.
    assert shard("lock_acquire", b"S", 1, 7, True, "n", 2)[0] == "granted"
    shard("lock_release", b"S", 7)
    assert shard("lock_acquire", b"S", 1, 7)[0] == "granted"


def test_a_semaphores_freed_slots_go_to_its_head_waiters_up_to_the_limit() -> None:
    shard = shard_with_leases(1, 2, 3)
    for waiter in (1, 2, 3):
        shard("lock_acquire", b"S", 1, waiter, True, "n", 3)
    for waiter in (4, 5, 6, 7):
        shard("lock_acquire", b"S", 2 + waiter % 2, waiter, True, "n", 3)
    result = shard("lease_revoke", 1)  # all three slots free at once
    assert [g.waiter for g in result.grants] == [4, 5, 6]
    assert [g.token for g in result.grants] == list(range(shard.machine.revision - 2,
                                                         shard.machine.revision + 1))
    assert _holders(shard, b"S") == [4, 5, 6] and _queue(shard, b"S") == [(7, "n")]
    shard.machine.locks.check_all()


def test_mismatched_limits_and_modes_are_refused_with_clear_errors() -> None:
    shard = shard_with_leases(1)
    shard("lock_acquire", b"S", 1, 1, True, "n", 2)
    shard("lock_acquire", b"L", 1, 1, True, "s")
    revision = shard.machine.revision
    cases: list[tuple[tuple[Any, ...], str]] = [
        ((b"S", 1, 2, True, "n", 3), "limit 2"),
        ((b"S", 1, 2, True, "x"), "semaphore"),
        ((b"S", 1, 2, True, "s"), "semaphore"),
        ((b"L", 1, 2, True, "n", 1), "modes 'x' and 's'"),
        ((b"F", 1, 2, True, "s", 2), "for mode 'n'"),
        ((b"F", 1, 2, True, "x", 2), "for mode 'n'"),
        ((b"F", 1, 2, True, "w"), "mode"),
        ((b"F", 1, 2, True, b"x"), "mode"),
        ((b"F", 1, 2, True, "n", 0), "positive"),
        ((b"F", 1, 2, True, "n", True), "positive"),
        ((b"F", 1, 2, True, "n", 2, "extra"), "three optional"),
    ]
    for args, words in cases:
        refused = shard("lock_acquire", *args)
        assert type(refused) is StateMachineError and words in str(refused), (args, refused)
    too_many = shard("lock_acquire", b"F", 1, 2, True, "n", MAX_SEMAPHORE_LIMIT + 1)
    assert isinstance(too_many, LockLimitExceeded) and "MAX_SEMAPHORE_LIMIT" in str(too_many)
    assert shard("lock_acquire", b"F", 1, 2, True, "n", MAX_SEMAPHORE_LIMIT)[0] == "granted"
    assert shard.machine.revision == revision + 1
    assert [i.name for i in shard.machine.locks_info()] == [b"F", b"L", b"S"]


def test_the_semaphore_limit_is_a_named_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(locks_module, "MAX_SEMAPHORE_LIMIT", 2)
    monkeypatch.setattr(locks_module, "MAX_WAITERS_PER_LOCK", 1)
    shard = shard_with_leases(1)
    assert isinstance(shard("lock_acquire", b"S", 1, 1, True, "n", 3), LockLimitExceeded)
    for waiter in (1, 2, 3):
        shard("lock_acquire", b"S", 1, waiter, True, "n", 2)
    full = shard("lock_acquire", b"S", 1, 4, True, "n", 2)
    assert isinstance(full, LockLimitExceeded) and "MAX_WAITERS_PER_LOCK" in str(full)


# ------------------------------------------------------------ leases and snapshots


def test_a_lease_revoke_hands_on_to_several_waiters_of_several_locks() -> None:
    shard = shard_with_leases(1, 2, 3)
    shard("lock_acquire", b"A", 1, 10, True, "x")
    shard("lock_acquire", b"A", 2, 20, True, "s")
    shard("lock_acquire", b"A", 3, 30, True, "s")
    shard("lock_acquire", b"A", 2, 21, True, "x")
    shard("lock_acquire", b"B", 1, 11, True, "s")
    shard("lock_acquire", b"B", 2, 22, True, "s")
    shard("lock_acquire", b"B", 3, 31, True, "x")
    shard("lock_acquire", b"B", 2, 23, True, "s")
    shard("lock_acquire", b"C", 1, 12, True, "n", 1)
    shard("lock_acquire", b"C", 3, 32, True, "n", 1)
    shard("lock_acquire", b"C", 1, 13, True, "n", 1)
    result = shard("lease_revoke", 1, client=5, seq=1)
    top = shard.machine.revision
    assert list(result.grants) == [  # by lock name, each in grant order
        Grant(b"A", 20, 2, top - 2), Grant(b"A", 30, 3, top - 1), Grant(b"C", 32, 3, top)]
    assert _holders(shard, b"A") == [20, 30] and _queue(shard, b"A") == [(21, "x")]
    assert _holders(shard, b"B") == [22] and _queue(shard, b"B") == [(31, "x"), (23, "s")]
    assert _holders(shard, b"C") == [32] and _queue(shard, b"C") == []
    assert 1 not in shard.machine.locks.by_lease
    retried = shard.restored()("lease_revoke", 1, client=5, seq=1)
    assert isinstance(retried, LeaseRevoked) and retried.grants == result.grants
    shard.machine.locks.check_all()


def test_a_snapshot_round_trips_modes_limits_holders_queues_and_fences() -> None:
    shard = shard_with_leases(1, 2, 3)
    shard("lock_acquire", b"R", 1, 10, True, "s")
    shard("lock_acquire", b"R", 2, 20, True, "s")
    shard("lock_acquire", b"R", 3, 30, True, "x")
    shard("lock_acquire", b"R", 1, 11, True, "s")
    shard("lock_acquire", b"S", 2, 21, True, "n", 2)
    shard("lock_acquire", b"S", 3, 31, True, "n", 2)
    shard("lock_acquire", b"S", 1, 12, True, "n", 2)
    shard("lock_acquire", b"X", 1, 13)
    assert shard("put", b"k", b"v", 0, False, [b"remote", 40]) is None
    assert shard("put", b"k", b"v", 0, False, [b"remote", 42, "s"]) is None
    snapshot = shard.machine.snapshot()
    assert msgpack.unpackb(snapshot)[6][0] == LOCK_RECORD_FORMAT
    copy = shard.restored()
    assert copy.machine.snapshot() == snapshot
    assert copy.machine.locks_info() == shard.machine.locks_info()
    assert copy.machine.locks.by_lease == shard.machine.locks.by_lease
    assert copy.machine.locks.fences == shard.machine.locks.fences
    assert copy.machine.locks.fences[b"remote"] == (42, 40)
    copy.machine.locks.check_all()
    for replica in (shard, copy):  # both go on alike
        replica("lease_revoke", 1)
        replica("lock_release", b"R", 20)
        replica("lock_release", b"S", 21)
        replica("lock_acquire", b"S", 2, 22, True, "n", 2)
    assert copy.machine.snapshot() == shard.machine.snapshot()
    assert _holders(copy, b"R") == [30] and _holders(copy, b"S") == [31, 22]


def test_a_lock_record_of_the_first_format_still_restores() -> None:
    shard = shard_with_leases(1, 2)
    shard("lock_acquire", b"L", 1, 10)
    shard("lock_acquire", b"L", 2, 20)
    shard("put", b"k", b"v", 0, False, [b"remote", 7])
    fields = msgpack.unpackb(shard.machine.snapshot(), strict_map_key=False)
    token = shard.machine.locks.status(b"L", 10).value  # type: ignore[union-attr]
    fields[6] = [token, [[b"L", [10, 1, token], [[20, 2]]]],  # as written before modes
                 [[b"L", token], [b"remote", 7]]]
    machine = ShardStateMachine.restore(msgpack.packb(fields))
    assert machine.locks_info() == shard.machine.locks_info()
    assert machine.locks.fences == {b"L": (token, token), b"remote": (7, 7)}
    machine.locks.check_all()
    old = Shard(machine)
    assert isinstance(old("put", b"k", b"v", 0, False, [b"remote", 6, "s"]), FencedOut)
    assert old("lock_release", b"L", 10).waiter == 20


# ------------------------------------------------------------------------ fencing


def test_shared_holders_do_not_fence_each_other_out_but_a_later_writer_does() -> None:
    shard = shard_with_leases(1, 2, 3)
    first = shard("lock_acquire", b"L", 1, 10, True, "s").value
    second = shard("lock_acquire", b"L", 2, 20, True, "s").value
    assert shard("put", b"k", b"2", 0, False, [b"L", second, "s"]) is None
    assert shard("put", b"k", b"1", 0, False, [b"L", first, "s"]) is None
    shard("lock_acquire", b"L", 3, 30, True, "x")
    writer = shard("lease_revoke", 1).grants  # 1 lapsed; 2 still holds: 30 waits
    assert writer == () and shard("put", b"k", b"1", 0, False, [b"L", first, "s"]) is None
    token = shard("lease_revoke", 2).grants[0].token  # both readers gone: 30 writes
    for stale in (first, second):
        assert isinstance(shard("put", b"k", b"x", 0, False, [b"L", stale, "s"]), FencedOut)
    assert shard("put", b"k", b"w", 0, False, [b"L", token, "x"]) is None
    assert shard.machine.get(b"k").value == b"w"  # type: ignore[union-attr]


def test_a_stale_writer_is_fenced_out_by_later_readers() -> None:
    shard = shard_with_leases(1, 2)
    old = shard("lock_acquire", b"L", 1, 10, True, "x").value
    shard("lock_acquire", b"L", 2, 20, True, "s")
    reader = shard("lease_revoke", 1).grants[0].token
    refused = shard("put", b"k", b"v", 0, False, [b"L", old])
    assert isinstance(refused, FencedOut) and str(reader) in str(refused)
    assert isinstance(shard("put", b"k", b"v", 0, False, [b"L", old, "x"]), FencedOut)
    assert shard("put", b"k", b"v", 0, False, [b"L", reader, "s"]) is None


def test_fences_for_a_lock_of_another_shard_follow_the_mode_they_carry() -> None:
    shard = Shard()  # "remote" lives on another shard: only fenced writes teach this one
    assert shard("put", b"k", b"1", 0, False, [b"remote", 5]) is None
    assert shard("put", b"k", b"2", 0, False, [b"remote", 9, "s"]) is None
    assert shard("put", b"k", b"3", 0, False, [b"remote", 6, "s"]) is None  # readers
    assert isinstance(shard("put", b"k", b"4", 0, False, [b"remote", 5]), FencedOut)
    assert isinstance(shard("put", b"k", b"4", 0, False, [b"remote", 4, "n"]), FencedOut)
    assert shard("put", b"k", b"5", 0, False, [b"remote", 12, "x"]) is None
    assert isinstance(shard("put", b"k", b"6", 0, False, [b"remote", 11, "s"]), FencedOut)
    for fence in ([b"remote", 12, "w"], [b"remote", 12, "x", 1], [b"remote", 12, None]):
        assert type(shard("put", b"k", b"7", 0, False, fence)) is StateMachineError, fence
    assert shard.machine.locks.fences == {b"remote": (12, 12)}


def test_semaphore_holders_do_not_fence_each_other_out() -> None:
    shard = shard_with_leases(1)
    tokens = [shard("lock_acquire", b"S", 1, w, True, "n", 3).value for w in (1, 2, 3)]
    for token in reversed(tokens):
        assert shard("put", b"k", b"v", 0, False, [b"S", token, "n"]) is None
    # Without its mode a fence is exclusive: the newest slot fences the older ones out.
    assert isinstance(shard("put", b"k", b"v", 0, False, [b"S", tokens[0]]), FencedOut)


# ------------------------------------------------------------------ against a model

NAMES = [b"a", b"b", b"s"]
"""a and b are read-write locks; s is a semaphore of limit 2 (sometimes asked with 3)."""
LEASES = [1, 2, 3]


def _lease_of(waiter: int) -> int:
    return LEASES[waiter % len(LEASES)]


class Lock:
    def __init__(self, mode: str, limit: int) -> None:
        self.mode = mode
        self.limit = limit
        self.holders: list[int] = []
        self.queue: list[tuple[int, str]] = []

    def fits(self, mode: str) -> bool:
        if not self.holders:
            return True
        if self.mode == "s" == mode:
            return True
        return self.mode == "n" == mode and len(self.holders) < self.limit


class Model:
    """Each lock: its holders' mode, limit, holders in grant order, queue; live leases."""

    def __init__(self) -> None:
        self.locks: dict[bytes, Lock] = {}
        self.live = set(LEASES)

    def acquire(self, name: bytes, waiter: int, mode: str, limit: int, queue: bool) -> Any:
        """The expected answer: ("granted",), ("queued", position), ("busy", 0), or an
        error class."""
        if _lease_of(waiter) not in self.live:
            return LeaseNotFound
        lock = self.locks.get(name)
        if lock is None:
            self.locks[name] = lock = Lock(mode, limit)
            lock.holders.append(waiter)
            return ("granted",)
        if (mode == "n") != (lock.mode == "n") or limit != lock.limit:
            return StateMachineError
        if waiter in lock.holders:
            return ("granted",) if mode == lock.mode else StateMachineError
        waits = [w for w, _ in lock.queue]
        if waiter in waits:
            place = waits.index(waiter)
            return ("queued", place + 1) if lock.queue[place][1] == mode else StateMachineError
        if not lock.queue and lock.fits(mode):
            lock.mode = mode
            lock.holders.append(waiter)
            return ("granted",)
        if not queue:
            return ("busy", 0)
        lock.queue.append((waiter, mode))
        return ("queued", len(lock.queue))

    def pump(self, name: bytes) -> list[tuple[bytes, int]]:
        lock = self.locks[name]
        granted = []
        while lock.queue and lock.fits(lock.queue[0][1]):
            waiter, mode = lock.queue.pop(0)
            if not lock.holders:
                lock.mode = mode
            lock.holders.append(waiter)
            granted.append((name, waiter))
        if not lock.holders:
            del self.locks[name]
        return granted


KINDS = ["acquire"] * 6 + ["try", "release", "release_holder", "release_holder", "cancel",
                        "cancel", "revoke", "grant", "restore"]
step = st.tuples(st.sampled_from(KINDS), st.sampled_from(NAMES), st.integers(0, 6),
                 st.sampled_from(LEASES), st.sampled_from(["x", "s", "s"]),
                 st.sampled_from([2, 2, 2, 2, 3]))


@settings(max_examples=200, deadline=None)
@given(st.lists(step, min_size=10, max_size=100))
def test_random_read_write_and_semaphore_traffic_matches_a_reference_model(
    steps: list[tuple[str, bytes, int, int, str, int]],
) -> None:
    shard = shard_with_leases(*LEASES)
    model = Model()
    tokens: dict[tuple[bytes, int], int] = {}  # (name, holder) -> its token
    last = 0

    def granted(name: bytes, waiter: int, token: int) -> None:
        nonlocal last
        assert token > last  # every grant's token is above every earlier grant's
        last = tokens[name, waiter] = token

    def handed_on(result: Any, expected: list[tuple[bytes, int]]) -> None:
        assert [(g.name, g.waiter) for g in grants_of(result)] == expected
        if len(expected) < 2:  # None or a Grant, as with plain locks; else Grants
            assert result is None if not expected else type(result) is Grant
        else:
            assert type(result) is Grants
        for grant in grants_of(result):
            granted(grant.name, grant.waiter, grant.token)

    for op, name, waiter, lease, rw_mode, sem_limit in steps:
        mode, limit = ("n", sem_limit) if name == b"s" else (rw_mode, 1)
        if op == "release_holder":  # a holder, if any: a release that succeeds
            holders = model.locks[name].holders if name in model.locks else [waiter]
            op, waiter = "release", holders[waiter % len(holders)]
        if op in ("acquire", "try"):
            result = shard("lock_acquire", name, _lease_of(waiter), waiter, op == "acquire",
                           mode, limit)
            expected = model.acquire(name, waiter, mode, limit, op == "acquire")
            if expected in (StateMachineError, LeaseNotFound):
                assert type(result) is expected, result
            elif expected == ("granted",):
                assert isinstance(result, Acquired) and result.status == "granted"
                if (name, waiter) in tokens:  # asked again while holding: its own token
                    assert result.value == tokens[name, waiter]
                else:
                    granted(name, waiter, result.value)
            else:
                assert result == expected
        elif op in ("release", "cancel"):
            result = shard(f"lock_{op}", name, waiter)
            lock = model.locks.get(name)
            if lock is not None and waiter in lock.holders:
                lock.holders.remove(waiter)
                del tokens[name, waiter]
                handed_on(result, model.pump(name))
            elif op == "release":
                assert isinstance(result, NotHolder)
            elif lock is not None and waiter in [w for w, _ in lock.queue]:
                lock.queue = [(w, m) for w, m in lock.queue if w != waiter]
                handed_on(result, model.pump(name))
            else:
                assert result is None
        elif op == "revoke":
            result = shard("lease_revoke", lease)
            if lease not in model.live:
                assert isinstance(result, StateMachineError)
                continue
            model.live.discard(lease)
            expected_grants = []
            for name in sorted(model.locks):
                lock = model.locks[name]
                gone = [w for w in lock.holders if _lease_of(w) == lease]
                left = [(w, m) for w, m in lock.queue if _lease_of(w) != lease]
                if gone or len(left) < len(lock.queue):
                    for w in gone:
                        del tokens[name, w]
                    lock.holders = [w for w in lock.holders if w not in gone]
                    lock.queue = left
                    expected_grants.extend(model.pump(name))
            assert isinstance(result, LeaseRevoked)
            assert [(g.name, g.waiter) for g in result.grants] == expected_grants
            for grant in result.grants:
                granted(grant.name, grant.waiter, grant.token)
        elif op == "grant":
            result = shard("lease_grant", lease, 10_000)
            assert (result == lease) == (lease not in model.live)
            model.live.add(lease)
        else:
            shard = shard.restored()
        shard.machine.locks.check_all()
        info = shard.machine.locks_info()
        assert {i.name: (i.mode, i.limit, [h.waiter for h in i.holders], i.queue)
                for i in info} == {
            name: (lock.mode, lock.limit, lock.holders,
                   [Waiter(w, _lease_of(w), m) for w, m in lock.queue])
            for name, lock in model.locks.items()}
        assert {(i.name, h.waiter): h.token for i in info for h in i.holders} == tokens
        for i in info:
            for h in i.holders:
                assert shard.machine.locks.status(i.name, h.waiter) == ("granted", h.token)
