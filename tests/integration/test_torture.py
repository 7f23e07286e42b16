"""`ringlock torture`, short: every fault kind on real node processes, then every check
passes; in network namespaces when this runs as root (CI does), else on loopback with
the transport fault layer (the test prints which); the namespaces keep the node's PID
and leave nothing behind; and the test hooks behave on a cluster started without them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ringlock.devcluster import DevCluster
from ringlock.torture.faults import FAULT_KINDS, NETNS_ONLY_KINDS
from ringlock.torture.netns import NetLab, netns_usable
from ringlock.torture.runner import Options, run
from ringlock.transport.rpc import RpcConnection

SHORT_RUN_S = 55.0
"""Room for one fault of each of the 8 kinds with seed 7 (about 75 s with start and
checks): the CI budget for torture is about 2 minutes."""


def test_a_short_torture_of_every_fault_kind_passes(tmp_path: Path) -> None:
    usable, why = netns_usable()
    print(f"\ntorture network: {'netns' if usable else 'transport'} ({why})")
    before = set(_namespaces())  # another run's namespaces on this machine are not ours
    outcome = run(Options(nodes=3, seconds=SHORT_RUN_S, faults=list(FAULT_KINDS), seed=7,
                          out=tmp_path / "torture"), log=print)
    assert outcome.passed, outcome.line
    assert outcome.line.startswith("torture: PASS ")
    verdict = json.loads((tmp_path / "torture" / "verdict.json").read_text())
    assert verdict["verdict"] == "PASS" and verdict["violations"] == 0
    expected = [k for k in FAULT_KINDS if usable or k not in NETNS_ONLY_KINDS]
    assert all(verdict["faults"][kind] >= 1 for kind in expected), verdict["faults"]
    assert verdict["network"] == ("netns" if usable else "transport")
    assert set(verdict["skipped"]) == (set() if usable else set(NETNS_ONLY_KINDS))
    assert ("iptables" if usable else "transport fault layer") in verdict["partition_mechanism"]
    assert verdict["ops_checked"] > 500 and verdict["lock_holds"] > 20
    assert set(verdict["checks"]) == {"kv_linearizable", "locks_safe", "no_ack_lost",
                                      "fenced_writes_stored", "replicas_identical",
                                      "faults_detected"}
    assert set(verdict["unavailability_s"]["writes"]) == set(expected)
    records = [json.loads(line) for line in
               (tmp_path / "torture" / "history.jsonl").read_text().splitlines()]
    faults = [r for r in records if r["type"] == "fault"]
    corrupt = [f for f in faults if f["kind"] == "corrupt_wal"]
    assert corrupt and all(f["detected"] and f["exit_code"] == 2 for f in corrupt), corrupt
    if usable:
        assert all(f["iptables_rules"] > 0 for f in faults if f["kind"] in
                   ("partition", "oneway", "bridge"))
    else:  # the fault layer really cut traffic: the cut nodes dropped Raft messages
        cuts = [f for f in faults if f["kind"] == "partition"]
        assert any(sum(v or 0 for v in p["raft_messages_dropped"].values()) > 0 for p in cuts)
    assert all(Path(log).exists() for log in verdict["node_logs"])
    slow = [f for f in faults if f["kind"] == "slow_link"]
    assert slow and all(f["applied"].startswith("tc netem") or any(
        a.get("slow_peers") for a in f["fault_layer_answers"].values()) for f in slow), slow
    assert not [ns for ns in set(_namespaces()) - before if ns.startswith("rlt-")]


def _clean_up_after(runner: subprocess.Popen[bytes], before: set[str], out: Path) -> list[str]:
    """What a runner that did not tear down left (it was killed, or failed to): its nodes
    (by the PIDs they wrote), its namespaces, its mounts. Removed, and named, so that the
    test fails on a leak without leaving it to the next run on this machine."""
    leaked = []
    for pid_file in out.glob("cluster/node-*/pid"):
        pid = int(pid_file.read_text())
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists() and stat.read_text().split()[2] != "Z" and "ringlock" in Path(
                f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
            leaked.append(f"node pid {pid}")
            os.kill(pid, signal.SIGKILL)
    for name in sorted(set(_namespaces()) - before):
        if name.startswith("rlt-"):
            leaked.append(f"namespace {name}")
            subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)
    for line in Path("/proc/mounts").read_text().splitlines():
        mount_point = line.split()[1]
        if mount_point.startswith(str(out)):
            leaked.append(f"mount {mount_point}")
            subprocess.run(["umount", mount_point], check=False, timeout=10)
    return leaked


def _namespaces() -> list[str]:
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def test_a_node_started_in_a_namespace_keeps_its_pid_and_teardown_removes_all() -> None:
    usable, why = netns_usable()
    if not usable:
        pytest.skip(f"network namespaces unavailable: {why}")
    lab = NetLab([1, 2])
    try:
        lab.create()
        assert {lab.ns(1), lab.ns(2), lab.bridge_ns, lab.client_ns} <= set(_namespaces())
        probe = subprocess.Popen([*lab.launcher(1), "sleep", "30"])
        try:
            for _ in range(100):  # until `ip` has exec'd: then the PID is sleep's own
                if Path(f"/proc/{probe.pid}/comm").read_text().strip() == "sleep":
                    break
                time.sleep(0.02)
            assert Path(f"/proc/{probe.pid}/comm").read_text().strip() == "sleep"
            ns_of_probe = Path(f"/proc/{probe.pid}/ns/net").resolve(strict=False)
            assert str(ns_of_probe) != str(Path("/proc/self/ns/net").resolve(strict=False))
        finally:
            probe.kill()
            probe.wait(10)
    finally:
        assert lab.teardown() == []
    assert not [ns for ns in _namespaces() if ns.startswith(f"rlt-{lab.tag}")]


def test_without_the_env_var_there_is_no_fault_op_but_digests_agree(
        cluster: DevCluster) -> None:
    async def ask(address: str, body: dict[str, Any]) -> Any:
        connection = RpcConnection(address)
        try:
            return await connection.call(body, 5.0)
        except Exception as error:
            return error
        finally:
            await connection.close()

    refused = asyncio.run(ask(cluster.addresses[0], {"op": "fault", "drop_peers": [2]}))
    assert isinstance(refused, Exception) and "unknown command" in str(refused)
    with cluster.client() as client:
        client.put("digest-me", "x")
    for _ in range(50):
        reports = [asyncio.run(ask(a, {"op": "digest"}))["groups"] for a in cluster.addresses]
        shard = next(g for g in reports[0] if int(g) >= 0)
        if len({tuple(r[shard]) for r in reports}) == 1:
            return
        time.sleep(0.1)
    raise AssertionError(f"digests of group {shard} never agreed: {[r[shard] for r in reports]}")


def test_ctrl_c_in_netns_mode_stops_every_node_and_deletes_every_namespace(
        tmp_path: Path) -> None:
    usable, why = netns_usable()
    if not usable:
        pytest.skip(f"network namespaces unavailable: {why}")
    before = set(_namespaces())
    out = tmp_path / "interrupted"
    said = tmp_path / "runner.log"
    runner = subprocess.Popen(
        [sys.executable, "-m", "ringlock", "torture", "--seconds", "60", "--out", str(out),
         "--net", "netns", "--faults", "pause"], stdout=subprocess.DEVNULL,
        stderr=said.open("wb"), start_new_session=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        pid_files = [out / "cluster" / f"node-{i}" / "pid" for i in (1, 2, 3)]
        deadline = time.monotonic() + 60
        # Interrupted during the first fault (a node paused): the hardest moment to stop.
        while "torture: t=" not in said.read_text() and time.monotonic() < deadline:
            assert runner.poll() is None, said.read_text()
            time.sleep(0.1)
        assert "pause" in said.read_text(), said.read_text()
        made = set(_namespaces()) - before
        assert len(made) == 5, made  # bridge, client, three nodes
        pids = [int(p.read_text()) for p in pid_files]
        runner.send_signal(signal.SIGINT)
        runner.wait(timeout=60)
    finally:
        if runner.poll() is None:  # a failed assertion above: still stop it cleanly
            runner.send_signal(signal.SIGINT)
            try:
                runner.wait(timeout=60)
            except subprocess.TimeoutExpired:
                runner.kill()
                runner.wait(10)
        leaked = _clean_up_after(runner, before, out)
    assert not leaked, leaked
    assert not made & set(_namespaces())
    assert all(not Path(f"/proc/{pid}").exists() or
               Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z" for pid in pids)
    assert str(out) not in Path("/proc/mounts").read_text()
