"""Lock state in the shard state machine: FIFO queues under leases, fencing tokens,
fenced writes, limits, de-duplication and snapshots (DESIGN.md, Guarantees: one holder,
tokens that only grow, stale fenced writes refused, a lapsed holder's lock handed on)."""

from __future__ import annotations

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
    LeaseRevoked,
    LockLimitExceeded,
    NotHolder,
)
from ringlock.statemachine.locks import Holder, LockInfo, Waiter
from tests.unit.shard_helpers import Shard, shard_with_leases


def test_a_free_lock_is_granted_and_later_waiters_queue_in_order() -> None:
    shard = shard_with_leases(1, 2, 3)
    granted = shard("lock_acquire", b"L", 1, 10)
    assert granted == ("granted", shard.machine.revision) and isinstance(granted, Acquired)
    assert shard("lock_acquire", b"L", 2, 20) == ("queued", 1)
    assert shard("lock_acquire", b"L", 3, 30) == ("queued", 2)
    assert shard.machine.locks_info() == [
        LockInfo(b"L", [Holder(10, 1, granted.value)], [Waiter(20, 2, "x"), Waiter(30, 3, "x")])]


def test_release_grants_the_next_waiter_in_fifo_order() -> None:
    shard = shard_with_leases(1, 2, 3)
    first = shard("lock_acquire", b"L", 1, 10).value
    shard("lock_acquire", b"L", 3, 30)
    shard("lock_acquire", b"L", 2, 20)
    second = shard("lock_release", b"L", 10)
    assert second == Grant(b"L", 30, 3, second.token) and second.token > first
    third = shard("lock_release", b"L", 30)
    assert third == Grant(b"L", 20, 2, third.token) and third.token > second.token
    assert shard("lock_release", b"L", 20) is None
    assert shard.machine.locks_info() == []


def test_acquire_again_by_the_same_waiter_reports_its_status() -> None:
    shard = shard_with_leases(1, 2, 3)
    token = shard("lock_acquire", b"L", 1, 10).value
    shard("lock_acquire", b"L", 2, 20)
    shard("lock_acquire", b"L", 3, 30)
    revision = shard.machine.revision
    assert shard("lock_acquire", b"L", 1, 10) == ("granted", token)
    assert shard("lock_acquire", b"L", 3, 30) == ("queued", 2)
    assert isinstance(shard("lock_acquire", b"L", 1, 30), StateMachineError)  # other lease
    assert shard.machine.revision == revision
    assert [w.waiter for w in shard.machine.locks_info()[0].queue] == [20, 30]


def test_acquire_without_a_live_lease_is_refused_and_changes_nothing() -> None:
    shard = shard_with_leases(1)
    result = shard("lock_acquire", b"L", 2, 10)
    assert isinstance(result, StateMachineError) and "lease 2 not found" in str(result)
    assert shard.machine.locks_info() == [] and shard.machine.revision == 0


def test_release_by_a_waiter_that_does_not_hold_is_refused() -> None:
    shard = shard_with_leases(1, 2)
    shard("lock_acquire", b"L", 1, 10)
    shard("lock_acquire", b"L", 2, 20)
    before = shard.machine.locks_info()
    assert isinstance(shard("lock_release", b"L", 20), NotHolder)  # queued, not holding
    assert isinstance(shard("lock_release", b"L", 99), NotHolder)
    assert isinstance(shard("lock_release", b"other", 10), NotHolder)
    assert shard.machine.locks_info() == before


def test_cancel_leaves_the_queue_and_a_holder_cancelling_releases() -> None:
    shard = shard_with_leases(1, 2, 3)
    shard("lock_acquire", b"L", 1, 10)
    shard("lock_acquire", b"L", 2, 20)
    shard("lock_acquire", b"L", 3, 30)
    assert shard("lock_cancel", b"L", 20) is None
    assert shard("lock_cancel", b"L", 20) is None  # no longer there: nothing
    assert shard("lock_cancel", b"nothing", 20) is None
    assert [w.waiter for w in shard.machine.locks_info()[0].queue] == [30]
    grant = shard("lock_cancel", b"L", 10)
    assert (grant.waiter, grant.lease) == (30, 3)
    assert shard("lock_cancel", b"L", 30) is None
    assert shard.machine.locks_info() == []
    shard.machine.locks.check_all()


def test_a_try_acquire_of_a_held_lock_answers_busy_and_does_not_queue() -> None:
    shard = shard_with_leases(1, 2)
    token = shard("lock_acquire", b"L", 1, 10, True).value
    assert shard("lock_acquire", b"L", 2, 20, False) == ("busy", 0)
    assert shard.machine.locks_info() == [LockInfo(b"L", [Holder(10, 1, token)], [])]
    assert shard("lock_acquire", b"L", 1, 10, False) == ("granted", token)  # its own
    assert shard("lock_acquire", b"L", 2, 20, True, True).__class__ is StateMachineError


def test_a_queued_only_cancel_leaves_the_queue_but_never_releases() -> None:
    shard = shard_with_leases(1, 2)
    token = shard("lock_acquire", b"L", 1, 10).value
    shard("lock_acquire", b"L", 2, 20)
    assert shard("lock_cancel", b"L", 10, True) is None
    assert shard.machine.locks.status(b"L", 10) == ("granted", token)
    assert shard("lock_cancel", b"L", 20, True) is None
    assert shard.machine.locks.status(b"L", 20) is None
    assert shard.machine.locks_info() == [LockInfo(b"L", [Holder(10, 1, token)], [])]


def test_departures_count_cancels_and_lease_ends_but_not_releases() -> None:
    shard = shard_with_leases(1, 2, 3)
    table = shard.machine.locks
    shard("lock_acquire", b"L", 1, 10)
    shard("lock_acquire", b"L", 2, 20)
    shard("lock_acquire", b"L", 3, 30)
    shard("lock_release", b"L", 10)
    assert table.departures == 0
    shard("lock_cancel", b"L", 30)
    assert table.departures == 1
    shard("lease_revoke", 2)
    assert table.departures == 2
    assert table.status(b"L", 20) is None


def test_revoking_a_lease_drops_its_holds_and_waits_and_hands_the_locks_on() -> None:
    shard = shard_with_leases(1, 2, 3)
    shard("put", b"k", b"v", 1, False)
    shard("lock_acquire", b"A", 1, 10)   # 1 holds A
    shard("lock_acquire", b"A", 1, 11)   # and waits for A
    shard("lock_acquire", b"A", 2, 20)
    shard("lock_acquire", b"B", 2, 21)   # 2 holds B
    shard("lock_acquire", b"B", 1, 12)   # 1 waits for B
    shard("lock_acquire", b"B", 3, 30)
    shard("lock_acquire", b"C", 1, 13)   # 1 holds C, nobody waits
    result = shard("lease_revoke", 1)
    assert isinstance(result, LeaseRevoked) and result == 1  # one key deleted, as before
    assert [(g.name, g.waiter, g.lease) for g in result.grants] == [(b"A", 20, 2)]
    assert result.grants[0].token == shard.machine.revision
    assert shard.machine.locks_info() == [
        LockInfo(b"A", [Holder(20, 2, result.grants[0].token)], []),
        LockInfo(b"B", [Holder(21, 2, shard.machine.locks_info()[1].holder.token)],
                 [Waiter(30, 3, "x")]),
    ]
    assert 1 not in shard.machine.locks.by_lease
    shard.machine.locks.check_all()


def test_tokens_grow_across_release_reacquire_and_snapshots() -> None:
    shard = shard_with_leases(1, 2)
    tokens = [shard("lock_acquire", b"L", 1, 10).value]
    shard("lock_release", b"L", 10)  # the lock is free and forgotten
    shard("put", b"unrelated", b"x", 0, False)
    tokens.append(shard("lock_acquire", b"L", 2, 20).value)
    shard = shard.restored()
    shard("lock_acquire", b"L", 1, 11)
    tokens.append(shard("lock_release", b"L", 20).token)
    shard("lock_release", b"L", 11)
    shard = shard.restored()
    tokens.append(shard("lock_acquire", b"L", 1, 12).value)
    assert tokens == sorted(set(tokens))


def test_a_fenced_put_is_refused_after_a_newer_grant_and_accepted_with_the_newest() -> None:
    shard = shard_with_leases(1, 2)
    old = shard("lock_acquire", b"L", 1, 10).value
    assert shard("put", b"k", b"first", 0, False, [b"L", old]) is None
    shard("lock_acquire", b"L", 2, 20)
    new = shard("lease_revoke", 1).grants[0].token  # 1's lease lapsed: 20 holds now
    revision = shard.machine.revision
    for op, args in (("put", (b"k", b"stale", 0, False)), ("delete", (b"k", False)),
                     ("cas", (b"k", "version", 1, "put", b"stale"))):
        refused = shard(op, *args, [b"L", old])
        assert isinstance(refused, FencedOut), (op, refused)
    assert shard.machine.get(b"k").value == b"first"  # type: ignore[union-attr]
    assert shard.machine.revision == revision
    assert shard("put", b"k", b"second", 0, False, [b"L", new]) is None
    assert shard("cas", b"k", "value", b"second", "put", b"third", [b"L", new]) is True
    assert shard.machine.get(b"k").value == b"third"  # type: ignore[union-attr]


def test_a_fence_for_a_lock_of_another_shard_is_learned_from_the_fences() -> None:
    shard = Shard()  # holds no lock: "remote" lives on another shard
    assert shard("put", b"k", b"1", 0, False, [b"remote", 5]) is None
    assert isinstance(shard("put", b"k", b"2", 0, False, [b"remote", 4]), FencedOut)
    assert shard("put", b"k", b"3", 0, False, [b"remote", 5]) is None  # the same holder
    assert shard("delete", b"k", False, [b"remote", 7]) is True
    shard = shard.restored()
    assert isinstance(shard("put", b"k", b"4", 0, False, [b"remote", 6]), FencedOut)
    assert shard("put", b"k", b"4", 0, False, [b"other", 1]) is None  # another lock's count
    assert shard("put", b"k", b"5", 0, False, None) is None  # an explicit no-fence


def test_a_fenced_write_that_errs_does_not_raise_the_highest_seen() -> None:
    shard = Shard()
    assert isinstance(shard("put", b"k", b"v", 99, False, [b"L", 9]), StateMachineError)
    assert shard("put", b"k", b"v", 0, False, [b"L", 3]) is None


def test_malformed_fences_are_refused() -> None:
    shard = Shard()
    for fence in ([b"L", 0], [b"L", -1], ["L", 1], [b"L"], [b"L", True], 5):
        result = shard("put", b"k", b"v", 0, False, fence)
        assert isinstance(result, StateMachineError), fence
    assert isinstance(shard("put", b"k", b"v", 0, False, None, "extra"), StateMachineError)
    assert len(shard.machine) == 0 and shard.machine.locks.fences == {}


def test_a_retried_acquire_gets_the_same_result_even_after_a_snapshot() -> None:
    shard = shard_with_leases(1, 2)
    first = shard("lock_acquire", b"L", 1, 10, client=7, seq=1)
    queued = shard("lock_acquire", b"L", 2, 20, client=8, seq=1)
    revision = shard.machine.revision
    assert shard("lock_acquire", b"L", 1, 10, client=7, seq=1) == first
    revoked = shard("lease_revoke", 1, client=9, seq=1)
    shard = shard.restored()
    assert shard.machine.revision == revision + 1
    again = shard("lock_acquire", b"L", 2, 20, client=8, seq=1)
    assert again == queued and isinstance(again, Acquired)
    retried_revoke = shard("lease_revoke", 1, client=9, seq=1)
    assert isinstance(retried_revoke, LeaseRevoked)
    assert retried_revoke.grants == revoked.grants and retried_revoke == revoked
    release = shard("lock_release", b"L", 99, client=8, seq=2)
    assert isinstance(shard("lock_release", b"L", 99, client=8, seq=2), NotHolder)
    assert type(shard.restored()("lock_release", b"L", 99, client=8, seq=2)) is type(release)


def test_limits_have_names_and_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(locks_module, "MAX_LOCK_NAME_BYTES", 4)
    monkeypatch.setattr(locks_module, "MAX_WAITERS_PER_LOCK", 2)
    monkeypatch.setattr(locks_module, "MAX_LOCKS_PER_SHARD", 2)
    shard = shard_with_leases(1)
    too_long = shard("lock_acquire", b"12345", 1, 1)
    assert isinstance(too_long, LockLimitExceeded) and "MAX_LOCK_NAME_BYTES" in str(too_long)
    assert isinstance(shard("put", b"k", b"v", 0, False, [b"12345", 1]), LockLimitExceeded)
    for waiter in (1, 2, 3):
        shard("lock_acquire", b"A", 1, waiter)
    full = shard("lock_acquire", b"A", 1, 4)
    assert isinstance(full, LockLimitExceeded) and "MAX_WAITERS_PER_LOCK" in str(full)
    shard("lock_acquire", b"B", 1, 1)
    many = shard("lock_acquire", b"C", 1, 1)
    assert isinstance(many, LockLimitExceeded) and "MAX_LOCKS_PER_SHARD" in str(many)
    assert [info.name for info in shard.machine.locks_info()] == [b"A", b"B"]
    shard("lock_release", b"B", 1)  # a freed lock no longer counts
    assert shard("lock_acquire", b"C", 1, 1)[0] == "granted"


def test_the_fence_table_forgets_the_least_recently_used_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(locks_module, "MAX_FENCED_LOCKS", 2)
    shard = shard_with_leases(1)
    shard("put", b"k", b"v", 0, False)
    held = shard("lock_acquire", b"held", 1, 1).value
    assert held == 2
    shard("put", b"k", b"v", 0, False, [b"x", 5])
    shard("put", b"k", b"v", 0, False, [b"y", 5])  # "held" is forgotten from the table
    shard("put", b"k", b"v", 0, False, [b"x", 5])  # x used again: y goes next
    shard = shard.restored()
    shard("put", b"k", b"v", 0, False, [b"z", 5])
    assert list(shard.machine.locks.fences) == [b"x", b"z"]
    # A lock held on this shard is still checked against its holder's token:
    assert isinstance(shard("put", b"k", b"v", 0, False, [b"held", held - 1]), FencedOut)
    assert shard("put", b"k", b"v", 0, False, [b"y", 1]) is None  # the documented limit


def test_a_snapshot_round_trips_every_lock_field() -> None:
    shard = shard_with_leases(1, 2, 3)
    shard("lock_acquire", b"A", 1, 10)
    shard("lock_acquire", b"A", 3, 30)
    shard("lock_acquire", b"A", 2, 20)
    shard("lock_acquire", b"B", 2, 21)
    shard("put", b"k", b"v", 0, False, [b"remote", 42])
    snapshot = shard.machine.snapshot()
    assert msgpack.unpackb(snapshot)[0] == 3
    copy = shard.restored()
    assert copy.machine.snapshot() == snapshot
    assert copy.machine.locks_info() == shard.machine.locks_info()
    assert copy.machine.locks.by_lease == shard.machine.locks.by_lease
    copy.machine.locks.check_all()
    for replica in (shard, copy):  # both go on alike
        replica("lease_revoke", 1)
        replica("lock_release", b"B", 21)
    assert copy.machine.snapshot() == shard.machine.snapshot()


def test_a_snapshot_of_the_second_format_still_restores() -> None:
    shard = shard_with_leases(1)
    shard("put", b"k", b"v", 1, False)
    fields = msgpack.unpackb(shard.machine.snapshot(), strict_map_key=False)
    legacy = msgpack.packb([2, *fields[1:6]])
    machine = ShardStateMachine.restore(legacy)
    assert machine.get(b"k") == shard.machine.get(b"k") and machine.leases == {1: (10_000, {b"k"})}
    assert machine.locks_info() == []
    assert Shard(machine)("lock_acquire", b"L", 1, 1) == ("granted", machine.revision)


# ------------------------------------------------------------------ against a model

NAMES = [b"a", b"b", b"c"]
LEASES = [1, 2, 3]


def _lease_of(waiter: int) -> int:
    return LEASES[waiter % len(LEASES)]


KINDS = ["acquire"] * 5 + ["release", "release_holder", "release_holder", "cancel",
                        "revoke", "grant", "restore"]
"""Acquires weigh most, so queues grow long enough to test FIFO order."""
step = st.tuples(st.sampled_from(KINDS), st.sampled_from(NAMES), st.integers(0, 5),
                 st.sampled_from(LEASES))


class Model:
    """Each lock as a list of waiters, the holder first; leases that are live."""

    def __init__(self) -> None:
        self.locks: dict[bytes, list[int]] = {}
        self.live = set(LEASES)

    def pass_on(self, name: bytes) -> tuple[bytes, int] | None:
        queue = self.locks[name]
        queue.pop(0)
        if not queue:
            del self.locks[name]
            return None
        return name, queue[0]


@settings(max_examples=150, deadline=None)
@given(st.lists(step, min_size=10, max_size=80))
def test_random_lock_traffic_keeps_the_invariants_and_fifo_order(
    steps: list[tuple[str, bytes, int, int]],
) -> None:
    shard = shard_with_leases(*LEASES)
    model = Model()
    last_token: dict[bytes, int] = {}

    def granted(name: bytes, waiter: int, token: int) -> None:
        assert token > last_token.get(name, 0)  # strictly larger than every earlier grant
        last_token[name] = token

    for op, name, waiter, lease in steps:
        if op == "release_holder":  # the holder, if any: a release that succeeds
            op, waiter = "release", model.locks.get(name, [waiter])[0]
        if op == "acquire":
            result = shard("lock_acquire", name, _lease_of(waiter), waiter)
            queue = model.locks.get(name)
            if _lease_of(waiter) not in model.live:
                assert isinstance(result, StateMachineError)
            elif queue is None:
                model.locks[name] = [waiter]
                assert result[0] == "granted"
                granted(name, waiter, result.value)
            elif waiter == queue[0]:
                assert result == ("granted", last_token[name])
            else:
                if waiter not in queue:
                    queue.append(waiter)
                assert result == ("queued", queue.index(waiter))
        elif op in ("release", "cancel"):
            result = shard(f"lock_{op}", name, waiter)
            queue = model.locks.get(name, [])
            if queue and queue[0] == waiter:
                expected = model.pass_on(name)
                if expected is None:
                    assert result is None
                else:
                    assert (result.name, result.waiter) == expected
                    granted(name, result.waiter, result.token)
            elif op == "release":
                assert isinstance(result, NotHolder)
            else:
                if waiter in queue:
                    queue.remove(waiter)
                assert result is None
        elif op == "revoke":
            result = shard("lease_revoke", lease)
            if lease not in model.live:
                assert isinstance(result, StateMachineError)
                continue
            model.live.discard(lease)
            expected_grants = []
            for name in sorted(model.locks):
                queue = model.locks[name]
                holder_lapsed = _lease_of(queue[0]) == lease
                queue[1:] = [w for w in queue[1:] if _lease_of(w) != lease]
                if holder_lapsed:
                    passed = model.pass_on(name)
                    if passed is not None:
                        expected_grants.append(passed)
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
        queues = {i.name: [i.holder.waiter, *(q.waiter for q in i.queue)] for i in info}
        assert queues == model.locks
        assert all(i.holder.token == last_token[i.name] for i in info)
        assert all(lease == _lease_of(w) for i in info for w, lease, _ in i.queue)
