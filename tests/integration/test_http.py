"""The HTTP API (docs/HTTP.md) on real node processes: writes and reads through any node
reach the shard leader and agree with the RPC client; refused requests (404, 400, 412,
413, 401) change nothing and the node keeps serving; /metrics is Prometheus text."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

from ringlock.devcluster import DevCluster
from ringlock.server.config import MAX_KEY_BYTES, MAX_VALUE_BYTES
from ringlock.server.httpapi import MAX_HTTP_BODY_BYTES
from tests.integration.conftest import TEST_SHARDS, make_cluster, running
from tests.integration.http_helpers import (
    assert_typed_error,
    exchange,
    parse_prometheus,
    request,
)
from tests.integration.test_bad_input import assert_still_serving

SECRET = "s3cret-for-tests"


def everything(dev: DevCluster) -> list[Any]:
    """Every stored key with its revisions, as the RPC client scans them."""
    with dev.client(timeout=20) as client:
        return [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version)
                for kv in client.scan(b"", limit=10_000)]


def test_kv_through_any_node_agrees_with_the_client(tmp_path: Path) -> None:
    with running(make_cluster(tmp_path / "c", http=True)) as dev:
        https = dev.http_addresses
        assert len(https) == 3
        for number, address in enumerate(https):
            answer = request(address, "PUT", f"/v1/kv/key-{number}", f"value-{number}".encode())
            assert (answer.status, answer.json()) == (200, {"ok": True}), answer
        with dev.client(timeout=20) as client:
            for number in range(3):
                assert client.get(f"key-{number}") == f"value-{number}".encode()
        for address in https:  # every node answers for every key: relayed to the leaders
            for number in range(3):
                got = request(address, "GET", f"/v1/kv/key-{number}").json()
                assert (got["value"], got["encoding"]) == (f"value-{number}", "utf-8")

        # Binary-safe: a key and a value with every byte, base64 both ways.
        key, value = b"\x00\xff/../bin", bytes(range(256))
        path = "/v1/kv/" + quote_from_bytes(key, safe="")
        answer = request(https[0], "PUT", path + "?encoding=base64", base64.b64encode(value))
        assert answer.status == 200, answer
        with dev.client(timeout=20) as client:
            assert client.get(key) == value
        got = request(https[1], "GET", path).json()  # not UTF-8: given in base64, and said so
        assert got["encoding"] == "base64"
        assert base64.b64decode(got["key"]) == key and base64.b64decode(got["value"]) == value
        stale = request(https[2], "GET", "/v1/kv/key-0?consistency=stale")
        assert stale.status == 200 or stale.json()["error"] == "NotFound", stale

        # Compare-and-set on mod_revision (0: absent).
        revision = request(https[0], "GET", "/v1/kv/key-0").json()["mod_revision"]
        assert_typed_error(request(https[1], "PUT", f"/v1/kv/key-0?prev_revision={revision + 9}",
                                   b"no"), 412, "CommandFailed")
        assert request(https[1], "PUT", f"/v1/kv/key-0?prev_revision={revision}",
                       b"cas").status == 200
        assert request(https[2], "PUT", "/v1/kv/fresh?prev_revision=0", b"1").status == 200
        assert_typed_error(request(https[2], "PUT", "/v1/kv/fresh?prev_revision=0", b"2"),
                           412, "CommandFailed")

        # Delete through a third node; a second delete finds nothing.
        assert request(https[2], "DELETE", "/v1/kv/key-1").json() == {"deleted": True}
        assert request(https[0], "DELETE", "/v1/kv/key-1").json() == {"deleted": False}
        assert_typed_error(request(https[0], "GET", "/v1/kv/key-1"), 404, "NotFound")
        scan = request(https[1], "GET", "/v1/kv?prefix=key-&limit=10").json()
        assert [item["key"] for item in scan["items"]] == ["key-0", "key-2"], scan
        assert scan["items"][0]["value"] == "cas" and not scan["truncated"]

        before = everything(dev)
        refused = [
            (("GET", "/v1/kv/absent", b""), 404, "NotFound"),
            (("PUT", "/v1/kv/key-0?lease=abc", b"x"), 400, "BadRequest"),
            (("PUT", "/v1/kv/key-0?bogus=1", b"x"), 400, "BadRequest"),
            (("PUT", "/v1/kv/key-0?lease=1&lease=2", b"x"), 400, "BadRequest"),
            (("PUT", "/v1/kv/key-0", b"\xff\xfe"), 400, "BadRequest"),
            (("PUT", "/v1/kv/key-0?encoding=base64", b"!!not base64"), 400, "BadRequest"),
            (("PUT", "/v1/kv/key-0?encoding=rot13", b"x"), 400, "BadRequest"),
            (("PUT", "/v1/kv/key-0?client=1", b"x"), 400, "BadRequest"),
            (("PUT", "/v1/kv/key-0?lease=99999999999999999999", b"x"), 400, "BadRequest"),
            (("PUT", "/v1/kv/", b"x"), 400, "BadRequest"),
            (("PUT", "/v1/kv/" + "k" * (MAX_KEY_BYTES + 1), b"x"), 413, "TooLarge"),
            (("PUT", "/v1/kv/key-0", b"v" * (MAX_VALUE_BYTES + 1)), 413, "TooLarge"),
            (("DELETE", "/v1/kv/key-0?prev_revision=999999", b""), 412, "CommandFailed"),
            (("GET", "/v1/kv?limit=0", b""), 400, "BadRequest"),
            (("GET", "/v1/kv/key-0?consistency=eventual", b""), 400, "BadRequest"),
            (("POST", "/v1/kv/key-0", b"x"), 405, "BadRequest"),
            (("GET", "/v2/anything", b""), 404, "NotFound"),
        ]
        for number, ((method, path, body), status, name) in enumerate(refused):
            assert_typed_error(request(https[number % 3], method, path, body), status, name)
        # A body announced over the limit is refused before it is read (none is sent: the
        # node answers and closes at once).
        assert_typed_error(exchange(https[1], (
            f"PUT /v1/kv/key-0 HTTP/1.1\r\nHost: x\r\nContent-Length: "
            f"{MAX_HTTP_BODY_BYTES + 1}\r\n\r\n").encode()), 413, "TooLarge")
        unknown_lease = request(https[0], "PUT", "/v1/kv/key-0?lease=4242", b"x")
        assert 400 <= unknown_lease.status < 500 and "error" in unknown_lease.json()
        assert everything(dev) == before
        assert all(node.running for node in dev.nodes.values())
        assert_still_serving(dev)

        statuses = [request(address, "GET", "/v1/status").json() for address in https]
        assert sorted(status["node"] for status in statuses) == [1, 2, 3]
        for address in https:
            assert request(address, "GET", "/healthz").json()["ok"] is True
        metrics = [request(address, "GET", "/metrics") for address in https]
        assert all(m.headers["content-type"].startswith("text/plain") for m in metrics)
        parsed = [parse_prometheus(m.body.decode()) for m in metrics]
        for samples in parsed:
            for name in ("ringlock_requests_total", "ringlock_forwarded_total",
                         "ringlock_raft_term", "ringlock_raft_commit_index",
                         "ringlock_leaders_held", "ringlock_lock_waits_open",
                         "ringlock_http_responses_total"):
                assert name in samples, name
            assert len(samples["ringlock_raft_term"]) == TEST_SHARDS + 1  # and the meta group
        assert sum(s["ringlock_leaders_held"][0][1] for s in parsed) == TEST_SHARDS
        assert sum(s["ringlock_forwarded_total"][0][1] for s in parsed) > 0


def test_a_secret_guards_every_endpoint_but_healthz(tmp_path: Path) -> None:
    dev = make_cluster(tmp_path / "s", nodes=1, http=True, secret=SECRET)
    with running(dev):
        (address,) = dev.http_addresses
        right = {"Authorization": f"Bearer {SECRET}"}
        assert request(address, "PUT", "/v1/kv/guarded", b"first", right).status == 200
        assert request(address, "GET", "/healthz").status == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": SECRET},
                        {"Authorization": f"Basic {SECRET}"},
                        {"Authorization": f"Bearer {SECRET}x"}):
            for method, path in (("PUT", "/v1/kv/guarded"), ("DELETE", "/v1/kv/guarded"),
                                 ("GET", "/v1/kv/guarded"), ("GET", "/v1/kv"),
                                 ("GET", "/v1/status"), ("GET", "/metrics"),
                                 ("GET", "/nowhere")):
                answer = request(address, method, path, b"second", headers)
                assert_typed_error(answer, 401, "Unauthorized")
                assert answer.headers["www-authenticate"].startswith("Bearer")
        got = request(address, "GET", "/v1/kv/guarded", headers=right).json()
        assert (got["value"], got["version"]) == ("first", 1)  # the refused writes did nothing
        with dev.client(timeout=20) as client:
            assert client.get("guarded") == b"first"
        assert request(address, "DELETE", "/v1/kv/guarded", headers=right).json() == {
            "deleted": True}
        assert "ringlock_http_responses_total" in parse_prometheus(
            request(address, "GET", "/metrics", headers=right).body.decode())
