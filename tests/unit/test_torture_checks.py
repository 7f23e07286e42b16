"""The torture checks catch what they are for: planted violations fail them, and the
fault layer cannot be switched on outside its test setting."""

from __future__ import annotations

from ringlock.checker import LockHold, Op
from ringlock.server.faults import FaultLayer, faults_allowed
from ringlock.torture.checks import (
    FencedWrite,
    check_kv,
    check_locks,
    check_stored,
    compare_digests,
)
from ringlock.torture.faults import FAULT_KINDS, schedule
from ringlock.torture.lockworker import fenced_key


def test_a_lost_acknowledged_write_fails_no_ack_lost() -> None:
    stored = {"w/1": ("a", 5)}
    check = check_stored({"w/1": "a", "w/2": "b"}, {}, set(), stored)
    assert not check.ok and "1 acknowledged writes lost" in check.message
    assert check_stored({"w/1": "a"}, {"w/2": "b"}, set(), stored).ok  # unknown: may be gone


def test_a_stored_refused_write_or_a_stray_key_fails() -> None:
    assert not check_stored({}, {}, {"f/1"}, {"f/1": ("x", 3)}).ok
    assert not check_stored({"w/1": "a"}, {}, set(), {"w/1": ("a", 1), "w/9": ("z", 2)}).ok


def test_a_read_missing_an_acknowledged_put_is_not_linearizable() -> None:
    history = [Op(0, "k", "put", "v1", None, 0, 10),
               Op(1, "k", "put", "v2", None, 20, 30),
               Op(1_000_000, "k", "get", None, "v1", 40, 50)]  # the final read: v2 lost
    check = check_kv(history)
    assert not check.ok and check.name == "kv_linearizable"
    assert check_kv([*history[:2], Op(9, "k", "get", None, "v2", 40, 50)]).ok


def _write(token: int, call: int, outcome: str = "ok", write: int = 0) -> FencedWrite:
    return FencedWrite(0, "L", token, write, call, call + 1, outcome)


def test_a_stale_holders_accepted_fenced_write_fails_lock_safety() -> None:
    holds = [LockHold("L", 0, 5, 0, None), LockHold("L", 1, 9, 100, 200)]
    stored = {fenced_key("L", 5, 0): ("x", 1), fenced_key("L", 9, 0): ("x", 2)}
    # Holder 0 (token 5), paused past its TTL, wrote at 150: token 9 was granted at 100.
    bad = check_locks(holds, [_write(9, 120), _write(5, 150)], stored, fenced_key)
    assert not bad.ok and "accepted" in bad.message
    refused = check_locks(holds, [_write(9, 120), _write(5, 150, "fenced")],
                          {fenced_key("L", 9, 0): ("x", 2)}, fenced_key)
    assert refused.ok and refused.extra["fenced_writes_refused"] == 1


def test_fenced_writes_applied_out_of_token_order_fail_the_cluster_view() -> None:
    holds = [LockHold("L", 0, 5, 0, 50), LockHold("L", 1, 9, 100, 200)]
    writes = [_write(5, 10), _write(9, 120)]
    in_order = {fenced_key("L", 5, 0): ("x", 1), fenced_key("L", 9, 0): ("x", 2)}
    assert check_locks(holds, writes, in_order, fenced_key).ok
    swapped = {fenced_key("L", 5, 0): ("x", 3), fenced_key("L", 9, 0): ("x", 2)}
    assert not check_locks(holds, writes, swapped, fenced_key).ok


def test_overlapping_holds_fail_lock_safety() -> None:
    holds = [LockHold("L", 0, 5, 0, 50), LockHold("L", 1, 9, 40, 60)]
    check = check_locks(holds, [], {}, fenced_key)
    assert not check.ok and "two holders at once" in check.message


def test_replicas_with_different_digests_at_one_index_diverge() -> None:
    same = {1: {0: [7, "aa"]}, 2: {0: [7, "aa"]}, 3: {0: [7, "aa"]}}
    assert compare_digests(same) == ({0: 3}, [])
    different = {1: {0: [7, "aa"]}, 2: {0: [7, "ab"]}, 3: {0: [7, "aa"]}}
    agreed, diverged = compare_digests(different)
    assert not agreed and len(diverged) == 1 and "group 0 at index 7" in diverged[0]
    lagging = {1: {0: [7, "aa"]}, 2: {0: [6, "zz"]}}
    assert compare_digests(lagging) == ({}, [])  # not comparable yet: asked again


def test_the_fault_layer_needs_the_env_var_and_loopback() -> None:
    assert faults_allowed("127.0.0.1:7101", {"RINGLOCK_FAULTS": "1"})
    assert not faults_allowed("127.0.0.1:7101", {})
    assert not faults_allowed("127.0.0.1:7101", {"RINGLOCK_FAULTS": "yes"})
    assert not faults_allowed("10.0.0.5:7101", {"RINGLOCK_FAULTS": "1"})
    assert FaultLayer(1, enabled=False).ops() == {}
    layer = FaultLayer(1, enabled=True)
    answers: list[object] = []
    layer.ops()["fault"]({"drop_peers": [2, 1]}, lambda r, e: answers.append(r))
    assert layer.drop_peers == {2} and layer.blocks(2) and not layer.blocks(3)


def test_the_schedule_is_seeded_and_has_every_kind() -> None:
    first = schedule(4, 25, list(FAULT_KINDS), [1, 2, 3], 2.0)
    assert first == schedule(4, 25, list(FAULT_KINDS), [1, 2, 3], 2.0)
    assert {f.kind for f in first} == set(FAULT_KINDS)
    assert all(f.at + f.duration <= 25 for f in first)
    assert all(len(f.nodes) == 1 for f in first)  # of 3 nodes, a minority of one
    five = schedule(4, 300, ["partition"], [1, 2, 3, 4, 5], 2.0)
    assert {len(f.nodes) for f in five} == {1, 2}
