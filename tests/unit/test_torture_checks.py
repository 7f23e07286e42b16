"""The torture checks catch what they are for: planted violations fail them, and the
fault layer cannot be switched on outside its test setting."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ringlock.checker import LockHold, Op
from ringlock.errors import BadRequest
from ringlock.server.faults import FaultLayer, faults_allowed
from ringlock.storage import records
from ringlock.torture.availability import Success, percentile, windows_by_kind
from ringlock.torture.checks import (
    FencedWrite,
    check_kv,
    check_locks,
    check_stored,
    compare_digests,
)
from ringlock.torture.faults import FAULT_KINDS, Fault, cut_pairs, pick_record, schedule
from ringlock.torture.lockworker import fenced_key

SRC = Path(__file__).resolve().parents[2] / "src"


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
    assert layer.active and layer.blocks_send(2)


def test_a_one_way_cut_in_the_fault_layer_drops_only_what_the_node_sends() -> None:
    layer = FaultLayer(1, enabled=True)
    layer.ops()["fault"]({"drop_peers": [], "drop_outbound": [2, 3]}, lambda r, e: None)
    assert layer.active and layer.blocks_send(2) and layer.blocks_send(3)
    assert not layer.blocks(2) and not layer.blocks(3)  # theirs still received
    layer.ops()["fault"]({"drop_peers": [], "drop_outbound": []}, lambda r, e: None)
    assert not layer.active and not layer.blocks_send(2)


def test_a_slow_link_holds_messages_in_order_and_loses_its_share() -> None:
    layer = FaultLayer(1, enabled=True)
    layer.ops()["fault"]({"slow_peers": [2], "delay_ms": 100, "jitter_ms": 50,
                          "loss_pct": 20}, lambda r, e: None)
    assert layer.active and layer.hold(3, 0.0) == 0.0  # other peers: no delay
    holds = [layer.hold(2, now=i * 0.001) for i in range(2000)]
    kept = [(i * 0.001 + h) for i, h in enumerate(holds) if h is not None]
    assert 0.15 < 1 - len(kept) / len(holds) < 0.25  # ~20% lost
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(kept))  # never reordered
    assert min(h for h in holds if h is not None) >= 0.05 - 1e-9
    layer.ops()["fault"]({}, lambda r, e: None)  # an empty order heals everything
    assert not layer.active and layer.hold(2, 5.0) == 0.0


def test_the_fault_layer_refuses_a_bad_slow_link_and_changes_nothing() -> None:
    layer = FaultLayer(1, enabled=True)
    for bad in ({"slow_peers": [2], "delay_ms": -1}, {"slow_peers": [2], "loss_pct": 101},
                {"slow_peers": [2], "delay_ms": 9_000, "jitter_ms": 2_000},
                {"slow_peers": [2], "delay_ms": "100"}, {"slow_peers": "2"}):
        try:
            layer.ops()["fault"](bad, lambda r, e: None)
        except BadRequest:
            pass
        else:
            raise AssertionError(f"{bad} was taken")
        assert not layer.active and not layer.slow_peers


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                    reason="needs root and iproute2 to make a network namespace")
def test_the_fault_layer_is_allowed_in_a_test_network_namespace() -> None:
    name = f"rlt-unit-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        code = ("from ringlock.server.faults import faults_allowed as f;"
                "print(f('10.231.0.11:7101', {'RINGLOCK_FAULTS': '1'}),"
                " f('10.231.0.11:7101', {}))")
        done = subprocess.run(["ip", "netns", "exec", name, sys.executable, "-c", code],
                              capture_output=True, text=True, timeout=30,
                              env={**os.environ, "PYTHONPATH": str(SRC)})
        assert done.stdout.split() == ["True", "False"], done.stderr
    finally:
        subprocess.run(["ip", "netns", "del", name], timeout=10)


def test_cuts_partition_one_way_and_bridge() -> None:
    nodes = [1, 2, 3, 4, 5]
    partition = cut_pairs(Fault(0, "partition", [1, 2], 1.0), nodes)
    assert (1, 3) in partition and (3, 1) in partition and (1, 2) not in partition
    assert len(partition) == 2 * 2 * 3
    oneway = cut_pairs(Fault(0, "oneway", [3], 1.0), nodes)
    assert oneway == {(3, 1), (3, 2), (3, 4), (3, 5)}  # 3 hears all, no one hears 3
    bridge = cut_pairs(Fault(0, "bridge", [3, 1, 2], 1.0), nodes)  # 3 bridges {1,2}, {4,5}
    assert all(3 not in pair for pair in bridge)
    assert bridge == {(a, b) for a in (1, 2) for b in (4, 5)} | {
        (b, a) for a in (1, 2) for b in (4, 5)}


def test_the_corrupted_record_is_never_the_last_so_it_cannot_pass_for_a_torn_tail(
        tmp_path: Path) -> None:
    from ringlock.raft.messages import Entry
    from ringlock.storage import NodeStorage

    storage = NodeStorage(tmp_path)
    for index in range(1, 6):
        storage.append(1, None, [Entry(index=index, term=1, data=b"x" * 50)])
        storage.sync()
    storage.close()
    for pick in (0.0, 0.5, 0.999):
        path, offset, flip = pick_record(tmp_path / "wal", pick) or (None, 0, 0)
        assert path is not None
        valid, _ = records.scan(path.read_bytes())
        assert offset in [r.offset for r in valid[:-1]]
        assert offset < flip < next(r.end for r in valid if r.offset == offset)
    assert pick_record(tmp_path / "nothing", 0.5) is None


def test_unavailability_is_the_worst_shards_time_to_its_first_success_after_the_fault() -> None:
    s = 1_000_000_000
    successes = [Success("a", 10 * s, 10 * s + 1), Success("a", 11 * s, 11 * s + s // 10),
                 Success("b", 10 * s, 13 * s),  # b's first write after the fault: 3 s
                 Success("a", 20 * s, 20 * s + s // 2)]
    faults = [Fault(0, "kill", [1], 1.0, applied_ns=10 * s),
              Fault(0, "kill", [1], 1.0, applied_ns=20 * s),
              Fault(0, "pause", [1], 1.0, applied_ns=30 * s)]
    table = windows_by_kind(faults, successes, lambda f: f.applied_ns)
    assert table["kill"] == {"measured": 2, "without_success": 0, "p50_s": 0.5,
                             "p99_s": 3.0, "max_s": 3.0}
    assert table["pause"]["without_success"] == 1 and table["pause"]["p50_s"] is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 0.99) == 99.0


def test_the_schedule_is_seeded_and_has_every_kind() -> None:
    first = schedule(4, 60, list(FAULT_KINDS), [1, 2, 3], 2.0)
    assert first == schedule(4, 60, list(FAULT_KINDS), [1, 2, 3], 2.0)
    assert {f.kind for f in first} == set(FAULT_KINDS)
    assert all(f.at + f.duration <= 60 for f in first)
    # of 3 nodes: a minority of one; a bridge node and a side of one
    assert all(len(f.nodes) == (2 if f.kind == "bridge" else 1) for f in first
               if f.kind != "slow_link")
    five = schedule(4, 300, ["partition"], [1, 2, 3, 4, 5], 2.0)
    assert {len(f.nodes) for f in five} == {1, 2}
