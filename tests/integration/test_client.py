"""The client's surface on a real cluster: values and revisions, cas, scan across shards,
the MutableMapping view, AsyncClient, and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from ringlock import eventloop
from ringlock.cli import bench
from ringlock.client import AsyncClient
from ringlock.devcluster import DevCluster
from ringlock.raft import BUILD as RAFT_BUILD


def test_put_get_delete_cas_and_revisions(cluster: DevCluster) -> None:
    with cluster.client() as client:
        assert client.put("color", "red") is None
        first = client.get_kv("color")
        assert first is not None and first.value == b"red" and first.version == 1
        previous = client.put("color", "blue", prev=True)
        assert previous is not None and previous.value == b"red"
        second = client.get_kv("color")
        assert second is not None and second.version == 2
        assert second.create_revision == first.create_revision
        assert second.mod_revision > first.mod_revision
        assert client.compare_and_set("color", "red", "green") is False
        assert client.compare_and_set("color", "blue", "green") is True
        assert client.cas("color", "version", 3, "cyan") is True
        assert client.compare_and_set("fresh", None, "made") is True  # create if absent
        assert client.compare_and_set("fresh", None, "again") is False
        assert client.delete("color") is True
        assert client.delete("color") is False
        assert client.get("color") is None
        assert client.get("fresh", consistency="stale") in (b"made", None)


def test_scan_merges_every_shard_in_key_order_and_pages(cluster: DevCluster) -> None:
    with cluster.client() as client:
        keys = [f"scan/{n:03d}" for n in range(50)]
        for key in reversed(keys):
            client.put(key, key.upper())
        client.put("scanx", "outside the prefix")
        assert [kv.key.decode() for kv in client.scan("scan/")] == keys
        page = client.scan("scan/", limit=10, after="scan/019")
        assert [kv.key.decode() for kv in page] == keys[20:30]


def test_the_dict_view_behaves_like_a_mutable_mapping(cluster: DevCluster) -> None:
    with cluster.client() as client:
        view = client.dict("app/config/")
        view["a"] = "1"
        view["b"] = b"2"
        assert view["a"] == b"1" and "b" in view and "c" not in view
        assert dict(view) == {"a": b"1", "b": b"2"} and len(view) == 2
        del view["a"]
        with pytest.raises(KeyError):
            view["a"]
        with pytest.raises(KeyError):
            del view["a"]
        view.update({"c": "3"})
        assert sorted(view) == ["b", "c"]
        assert client.get("app/config/c") == b"3"


def test_async_client_has_the_same_calls(cluster: DevCluster) -> None:
    async def run() -> list[bytes | None]:
        async with AsyncClient(cluster.addresses) as client:
            await asyncio.gather(*(client.put(f"async/{n}", str(n)) for n in range(100)))
            return list(await asyncio.gather(*(client.get(f"async/{n}") for n in range(100))))

    assert asyncio.run(run()) == [str(n).encode() for n in range(100)]


def ringlock_cli(cluster: DevCluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RINGLOCK_CLUSTER": cluster.cluster}
    return subprocess.run([sys.executable, "-m", "ringlock", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_the_cli_finds_the_cluster_from_the_environment(
        cluster: DevCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    assert ringlock_cli(cluster, "put", "cli-key", "cli-value").returncode == 0
    got = ringlock_cli(cluster, "get", "cli-key")
    assert got.returncode == 0 and got.stdout.strip() == "cli-value"
    assert "cli-key\tcli-value" in ringlock_cli(cluster, "scan", "cli-").stdout
    assert ringlock_cli(cluster, "del", "cli-key").stdout.strip() == "deleted"
    missing = ringlock_cli(cluster, "get", "cli-key")
    assert missing.returncode == 1 and "not found" in missing.stderr
    status = json.loads(ringlock_cli(cluster, "status", "--json").stdout)
    assert {n["id"] for n in status["nodes"]} == {1, 2, 3}
    assert all(n["state"] == "up" for n in status["nodes"])
    # the nodes run this install, so the same build of the Raft core
    assert {n["raft_core"] for n in status["nodes"]} == {RAFT_BUILD}
    assert len(status["shards"]) == cluster.shards
    assert all(s["leader"] in (1, 2, 3) and s["replicas"] == [1, 2, 3]
               for s in status["shards"])
    # `ringlock bench --cluster` reports what the nodes run, not what it runs itself
    nodes_loop = eventloop.chosen()  # the nodes were started with this environment
    monkeypatch.setattr(bench, "RAFT_BUILD", "not-this-process")
    monkeypatch.setenv("RINGLOCK_EVENT_LOOP", "asyncio" if nodes_loop == "uvloop" else "")
    assert bench.cluster_builds(cluster.addresses) == {"raft_core": RAFT_BUILD,
                                                       "event_loop": nodes_loop}


def test_a_call_to_an_unreachable_cluster_times_out_with_a_typed_error() -> None:
    from ringlock.client import Client
    from ringlock.errors import RequestTimeout

    with Client(["127.0.0.1:9"], timeout=0.5) as client, pytest.raises(RequestTimeout):
        client.get("anything")
