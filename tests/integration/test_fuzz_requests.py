"""Fuzzing a real node's request handlers: hypothesis-generated request bodies, each with
at least one required field corrupted (wrong type, out of range, over a limit), sent over
a raw connection to a 3-node cluster. Every answer must be a typed error carrying the
request's id; no node may die; the stored keys must be exactly as before; and the
cluster must serve a normal put/get afterwards.

Only requests that must fail are generated, so "state did not change" is checkable as
"a scan of every shard is unchanged". The membership ops (join, node_state, report,
shard_change) and hello (which turns a connection into a peer stream) are left out.
"""

from __future__ import annotations

import time
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from ringlock.devcluster import DevCluster
from ringlock.errors import ERROR_CODES
from ringlock.server.config import MAX_KEY_BYTES, MAX_VALUE_BYTES
from ringlock.sharding.keys import shard_of
from tests.fuzzing import Counter, fuzz_settings, msgpack_values, record, scalars
from tests.integration.conftest import TEST_SHARDS
from tests.integration.test_bad_input import Raw, assert_still_serving

KEY = b"fuzz-key"
SHARD = shard_of(KEY, TEST_SHARDS)
BASES: dict[str, dict[str, Any]] = {
    "get": {"shard": SHARD, "key": KEY},
    "put": {"shard": SHARD, "key": KEY, "value": b"v", "client": 5, "seq": 1},
    "delete": {"shard": SHARD, "key": KEY, "client": 5, "seq": 2},
    "cas": {"shard": SHARD, "key": KEY, "target": "version", "expected": 0, "then": "put",
            "value": b"v"},
    "scan": {"shard": 0, "limit": 10},
    "lease_grant": {"shard": SHARD, "ttl_ms": 5000},
    "lease_revoke": {"shard": SHARD, "lease": 1},
    "lease_keepalive": {"shard": SHARD, "lease": 1},
    "lease_ttl": {"shard": SHARD, "lease": 1},
    "lock_acquire": {"shard": SHARD, "name": KEY, "lease": 1, "waiter": 1, "wait": False},
    "lock_release": {"shard": SHARD, "name": KEY, "waiter": 1},
    "lock_cancel": {"shard": SHARD, "name": KEY, "waiter": 1},
    "lock_wait": {"shard": SHARD, "name": KEY, "waiter": 1},
    "locks": {"shard": SHARD},
    "watch": {"shard": SHARD, "prefix": KEY, "exact": True},
}
CORRUPTIONS: dict[str, list[tuple[str, Any]]] = {
    # field -> a strategy of values that must be refused there
    "key": [("key", st.one_of(scalars.filter(lambda v: not isinstance(v, bytes)),
                              st.just(b""), st.just(b"k" * (MAX_KEY_BYTES + 1))))],
    "value": [("value", st.one_of(scalars.filter(lambda v: not isinstance(v, bytes)),
                                  st.just(b"v" * (MAX_VALUE_BYTES + 1))))],
    "shard": [("shard", st.one_of(scalars.filter(lambda v: type(v) is not int),
                                  st.sampled_from([-1, TEST_SHARDS, 2**63, 2**64 - 1])))],
    "ttl_ms": [("ttl_ms", st.one_of(scalars.filter(lambda v: type(v) is not int),
                                    st.sampled_from([-1, 0, 99, 24 * 3600 * 1000 + 1])))],
    "lease": [("lease", st.one_of(scalars.filter(lambda v: type(v) is not int),
                                  st.sampled_from([-1, -(2**63), 2**63, 2**64 - 1])))],
    "name": [("name", st.one_of(scalars.filter(lambda v: not isinstance(v, bytes)),
                                st.just(b""), st.just(b"n" * 1025)))],
    "waiter": [("waiter", st.one_of(scalars.filter(lambda v: type(v) is not int),
                                    st.sampled_from([0, -1, 2**63])))],
    "target": [("target", st.one_of(scalars, st.just("color")).filter(
        lambda v: v not in ("value", "version", "mod_revision")))],
    "limit": [("limit", st.one_of(scalars.filter(lambda v: type(v) is not int),
                                  st.sampled_from([0, -1, 10_001])))],
    "prefix": [("prefix", scalars.filter(lambda v: not isinstance(v, bytes)))],
}
REQUIRED = {"get": ["key", "shard"], "put": ["key", "value", "shard"],
            "delete": ["key", "shard"], "cas": ["key", "target", "shard"],
            "scan": ["shard", "limit"], "lease_grant": ["ttl_ms", "shard"],
            "lease_revoke": ["lease", "shard"], "lease_keepalive": ["lease", "shard"],
            "lease_ttl": ["lease", "shard"], "lock_acquire": ["name", "waiter", "lease"],
            "lock_release": ["name", "waiter"], "lock_cancel": ["name", "waiter"],
            "lock_wait": ["name", "waiter"], "locks": ["shard"], "watch": ["prefix", "shard"]}
EXTRA_NAMES = st.sampled_from(["prev", "fence", "consistency", "client", "seq", "mode",
                               "exact", "start_revision", "after", "expected", "then",
                               "zzz", "", "hops"])


@st.composite
def failing_requests(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from([*BASES, "unknown-op", "bad-id"]))
    if kind == "unknown-op":
        op = draw(st.one_of(scalars, st.text(max_size=10)).filter(
            lambda v: v not in BASES and v not in ("hello", "map", "status", "join",
                                                   "node_state", "report", "shard_change",
                                                   "watch_cancel")))
        return {"id": draw(st.integers(1, 2**31)), "op": op}
    if kind == "bad-id":
        return {"id": draw(scalars.filter(lambda v: type(v) is not int)), "op": "get",
                **BASES["get"]}
    body: dict[str, Any] = {"id": draw(st.integers(1, 2**31)), "op": kind, **BASES[kind]}
    for _ in range(draw(st.integers(0, 3))):  # random extra fields, of random types
        name = draw(EXTRA_NAMES)
        if name not in body:
            body[name] = draw(msgpack_values)
    field_name = draw(st.sampled_from(REQUIRED[kind]))
    (_, values), = CORRUPTIONS[field_name]
    if field_name != "limit" and draw(st.integers(0, 9)) == 0:
        del body[field_name]  # a required field missing
    else:
        body[field_name] = draw(values)
    return body


def _scan_all(raw: Raw) -> list[Any]:
    everything = []
    for shard in range(TEST_SHARDS):
        answer = raw.request({"id": 1, "op": "scan", "shard": shard, "limit": 10_000})
        assert "ok" in answer, answer
        everything.append(answer["ok"])
    return everything


def test_fuzzed_requests_get_typed_errors_and_change_nothing(cluster: DevCluster) -> None:
    with cluster.client(timeout=20) as client:
        for number in range(8):
            client.put(f"sentinel-{number}", f"value-{number}")
    pids = {node_id: node.pid for node_id, node in cluster.nodes.items()}
    raws = [Raw(address) for address in cluster.addresses]
    # Regression: a negative lease was granted, and a put under it made every replica's
    # apply raise (struct.error packing the key's record): the whole shard died.
    for number, body in enumerate([{"op": "lease_grant", "shard": SHARD, "ttl_ms": 5000,
                                    "lease": -1},
                                   {"op": "put", "shard": SHARD, "key": KEY, "value": b"v",
                                    "lease": -1}], start=1):
        assert raws[0].request({"id": number, **body})["err"] == "BadRequest"
    before = _scan_all(raws[0])
    counter = Counter()
    started = time.monotonic()

    @fuzz_settings(500)
    @given(failing_requests(), st.integers(0, len(raws) - 1))
    def run(body: dict[str, Any], node: int) -> None:
        counter.inputs += 1
        try:
            answer = raws[node].request(body)
        except OSError:  # a request error never closes the connection: a frame error does
            raise AssertionError(f"the node closed the connection on {body!r:.200}") from None
        expected_id = body["id"] if type(body.get("id")) is int else 0
        assert answer.get("id") == expected_id, (body, answer)
        assert answer.get("err") in ERROR_CODES, (body, answer)
        assert isinstance(answer.get("msg"), str) and answer["msg"], (body, answer)

    run()
    elapsed = time.monotonic() - started
    record(f"node request handlers ({elapsed:.1f} s)", counter.inputs)
    assert counter.inputs >= 400
    for raw in raws:
        raw.close()
    assert all(node.running for node in cluster.nodes.values())
    assert {node_id: node.pid for node_id, node in cluster.nodes.items()} == pids
    check = Raw(cluster.addresses[1])
    assert _scan_all(check) == before
    check.close()
    assert_still_serving(cluster)
