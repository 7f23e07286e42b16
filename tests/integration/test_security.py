"""The front door, on real node processes on 127.0.0.1 with TLS and a cluster secret:
a node with the wrong secret cannot join, a client without it cannot read or write,
a plain-text client at a TLS port fails at once, and the cluster survives a leader kill
with its peer links back over TLS. One cluster for the module: starting one costs more
than every test here."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from ringlock.certs import make_certs
from ringlock.cli.main import cli
from ringlock.client import Client
from ringlock.devcluster import DevCluster, free_base_port
from ringlock.errors import TlsError, Unauthorized
from ringlock.eventloop import EVENT_LOOP_ENV
from ringlock.sharding.keys import shard_of
from ringlock.transport.rpc import RpcConnection
from ringlock.transport.tls import client_context
from tests.integration.conftest import running

SECRET = "the-right-secret"
DEADLINE_S = 20.0


@pytest.fixture(scope="module", params=["uvloop", "asyncio"])
def node_loop(request: pytest.FixtureRequest) -> str:
    """The nodes' event loop. The loops differ in when they start reading an accepted
    connection, and the TLS front door must see its first byte before anything reads
    it (transport/tls.py)."""
    return str(request.param)


@pytest.fixture(scope="module")
def secure(node_loop: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    root = tmp_path_factory.mktemp("secure")
    make_certs(root / "tls", nodes=4)  # node 4: the one that tries to join
    dev = DevCluster(root / "cluster", nodes=3, base_port=free_base_port(4), shards=4,
                     name="secure", secret=SECRET, tls_dir=root / "tls",
                     env={EVENT_LOOP_ENV: node_loop})
    with running(dev):
        with dev.client(timeout=5) as client:
            client.put("k", "v0")
        yield dev


def log_of(dev: DevCluster, node_id: int) -> str:
    return dev.nodes[node_id].log_path.read_text(errors="replace")


def test_the_nodes_run_the_event_loop_asked_for(secure: DevCluster, node_loop: str) -> None:
    with secure.client(timeout=5) as client:
        loops = {r.get("node"): r.get("event_loop") for r in client.status(timeout=5)}
    assert loops == dict.fromkeys(secure.nodes, node_loop)


def test_a_client_without_the_secret_or_with_a_wrong_one_changes_nothing(
        secure: DevCluster) -> None:
    ca = secure.tls_ca
    assert ca is not None
    for secret in ("", "a-wrong-secret"):
        with Client(secure.addresses, timeout=5, secret=secret, tls_ca=ca) as client:
            started = time.monotonic()
            with pytest.raises(Unauthorized, match="secret"):
                client.put("k", "changed")
            assert time.monotonic() - started < 2.0  # at once, not retried to a deadline
            with pytest.raises(Unauthorized):
                client.get("k")
            with pytest.raises(Unauthorized):
                client.delete("k")
            with pytest.raises(Unauthorized):
                client.lock("l", ttl=5).acquire(timeout=2)
    with secure.client(timeout=5) as client:
        assert client.get("k") == b"v0"
        assert client.locks() == []


def test_a_connection_that_did_not_authenticate_gets_unauthorized_per_request(
        secure: DevCluster) -> None:
    """Each request is refused with the typed error and the connection stays usable
    for the refusals (no proof was wrong); nothing is applied."""
    async def main() -> None:
        connection = RpcConnection(secure.addresses[0],
                                   ssl=client_context(secure.tls_ca or ""))
        try:
            for op in ({"op": "put", "key": b"k", "value": b"x", "shard": 0,
                        "client": 1, "seq": 1}, {"op": "map"}, {"op": "status"}):
                with pytest.raises(Unauthorized, match="requires a secret"):
                    await connection.call(op, 2.0)
        finally:
            await connection.close()

    asyncio.run(main())
    with secure.client(timeout=5) as client:
        assert client.get("k") == b"v0"


def test_a_plain_text_client_at_a_tls_port_fails_cleanly(secure: DevCluster) -> None:
    started = time.monotonic()
    with Client(secure.addresses, timeout=5, secret=SECRET, tls_ca="") as plain, \
            pytest.raises(TlsError, match="requires TLS"):
        plain.get("k")
    assert time.monotonic() - started < 2.0
    assert "a plain-text client at this TLS port" in "".join(
        log_of(secure, n) for n in secure.nodes)
    with secure.client(timeout=5) as client:  # the nodes keep serving
        assert client.get("k") == b"v0"


def test_the_cli_takes_the_secret_and_ca_from_the_environment(secure: DevCluster) -> None:
    env = {"RINGLOCK_CLUSTER": secure.cluster, "RINGLOCK_TLS_CA": secure.tls_ca or "",
           "RINGLOCK_SECRET": "", "RINGLOCK_SECRET_FILE": str(secure.secret_file)}
    result = CliRunner().invoke(cli, ["get", "k", "--timeout", "5"], env=env)
    assert result.exit_code == 0 and "v0" in result.output, result.output
    result = CliRunner().invoke(cli, ["put", "k", "x", "--timeout", "5"],
                                env={**env, "RINGLOCK_SECRET_FILE": ""})
    assert result.exit_code == 1 and "Unauthorized" in result.output, result.output


def test_a_node_with_the_wrong_secret_cannot_join(secure: DevCluster) -> None:
    before = secure.client(timeout=5).shard_map().nodes
    secure.add_node(4, via=1, secret="a-wrong-secret")
    process = secure.nodes[4].process
    assert process is not None
    assert process.wait(timeout=DEADLINE_S) == 2  # refused, and said so
    assert "Unauthorized" in log_of(secure, 4)
    with secure.client(timeout=5) as client:
        assert client.shard_map().nodes == before  # membership unchanged
        assert 4 not in client.shard_map().nodes


def test_a_tls_cluster_survives_a_leader_kill_and_its_links_come_back(
        secure: DevCluster) -> None:
    with secure.client(timeout=DEADLINE_S) as client:
        client.put("before", "1")
        victim = secure.leaders()[shard_of(b"after", secure.shards)]
        secure.kill(victim)
        client.put("after", "2")  # its shard elects a new leader over the TLS links
        assert client.get("before") == b"1" and client.get("after") == b"2"
        secure.start_node(victim)
        deadline = time.monotonic() + DEADLINE_S
        links: dict[str, bool] = {}
        while time.monotonic() < deadline:
            reports = {r.get("node"): r for r in client.status(timeout=2)}
            links = reports.get(victim, {}).get("peers", {})
            if len(links) == 2 and all(links.values()) and all(
                    r.get("peers", {}).get(str(victim)) for r in reports.values()
                    if r.get("node") != victim and "peers" in r):
                break
            time.sleep(0.05)
        assert len(links) == 2 and all(links.values()), links
        assert client.get("k") == b"v0"
