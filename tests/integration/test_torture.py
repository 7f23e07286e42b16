"""`ringlock torture`, short: every fault kind on real node processes, then every check
passes; and the test hooks behave on a cluster started without them."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from ringlock.devcluster import DevCluster
from ringlock.torture.faults import FAULT_KINDS
from ringlock.torture.runner import Options, run
from ringlock.transport.rpc import RpcConnection

SHORT_RUN_S = 20.0


def test_a_short_torture_of_every_fault_kind_passes(tmp_path: Path) -> None:
    outcome = run(Options(nodes=3, seconds=SHORT_RUN_S, faults=list(FAULT_KINDS), seed=7,
                          out=tmp_path / "torture"), log=lambda _: None)
    assert outcome.passed, outcome.line
    assert outcome.line.startswith("torture: PASS ")
    verdict = json.loads((tmp_path / "torture" / "verdict.json").read_text())
    assert verdict["verdict"] == "PASS" and verdict["violations"] == 0
    assert all(verdict["faults"][kind] >= 1 for kind in FAULT_KINDS), verdict["faults"]
    assert "transport fault layer" in verdict["partition_mechanism"]
    assert verdict["ops_checked"] > 200 and verdict["lock_holds"] > 10
    assert set(verdict["checks"]) == {"kv_linearizable", "locks_safe", "no_ack_lost",
                                      "fenced_writes_stored", "replicas_identical"}
    records = [json.loads(line) for line in
               (tmp_path / "torture" / "history.jsonl").read_text().splitlines()]
    partitions = [r for r in records if r["type"] == "fault" and r["kind"] == "partition"]
    # The fault layer really cut traffic: the isolated side dropped Raft messages.
    assert any(sum(v or 0 for v in p["raft_messages_dropped"].values()) > 0 for p in partitions)
    assert all(Path(log).exists() for log in verdict["node_logs"])


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
