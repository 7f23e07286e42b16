"""The HTTP API's pure pieces (server/httpapi.py, server/metrics.py), without a node:
query strings, integer parameters and bodies either parse or raise BadRequest, nothing
else; values survive both encodings; error classes map to the documented statuses;
the metrics text parses as Prometheus text."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringlock.errors import (
    BadRequest,
    FencedOut,
    LockLimitExceeded,
    NotFound,
    NotLeader,
    RequestTimeout,
    TooLarge,
    Unauthorized,
    Unavailable,
    WatchLagged,
)
from ringlock.server.httpapi import (
    PreconditionFailed,
    bool_param,
    decode_value,
    error_name,
    int_param,
    kv_json,
    parse_query,
    status_of,
)
from ringlock.server.metrics import render_metrics
from ringlock.sharding.meta import META_GROUP
from tests.fuzzing import Counter, fuzz_settings, record
from tests.integration.http_helpers import parse_prometheus

ALLOWED = frozenset({"encoding", "lease", "prefix"})


def test_query_values_are_bytes_and_mistakes_are_refused() -> None:
    assert parse_query("prefix=a%00%FF+b&lease=7", ALLOWED) == {"prefix": b"a\x00\xff b",
                                                                 "lease": b"7"}
    assert parse_query("", ALLOWED) == {}
    for bad in ("bogus=1", "lease=1&lease=2", "&".join(["lease=1"] * 17)):
        with pytest.raises(BadRequest):
            parse_query(bad, ALLOWED)


@pytest.mark.parametrize("raw", [b"", b"-1", b"1.0", b"\xd9\xa3", b"9" * 20,
                                 b"9223372036854775808", b" 1"])
def test_integer_parameters_are_plain_decimals_below_2_63(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        int_param({"lease": raw}, "lease")
    assert int_param({"lease": b"9223372036854775807"}, "lease") == 2**63 - 1
    assert int_param({}, "lease") is None
    assert bool_param({"prev": b"true"}, "prev") and not bool_param({}, "prev")


def test_values_round_trip_in_both_encodings() -> None:
    value = bytes(range(256))
    assert decode_value(base64.b64encode(value), "base64") == value
    assert decode_value("héllo".encode(), "utf-8") == "héllo".encode()
    with pytest.raises(BadRequest):
        decode_value(b"\xff", "utf-8")
    with pytest.raises(BadRequest):
        decode_value(b"a$==", "base64")
    text = kv_json([b"k", "héllo".encode(), 1, 2, 3, 0], "utf-8")
    assert (text["key"], text["value"], text["encoding"]) == ("k", "héllo", "utf-8")
    binary = kv_json([b"k", value, 1, 2, 3, 0], "utf-8")  # not UTF-8: base64, and says so
    assert binary["encoding"] == "base64" and base64.b64decode(binary["value"]) == value
    assert base64.b64decode(binary["key"]) == b"k"


def test_typed_errors_map_to_http_statuses() -> None:
    cases = [(BadRequest("x"), 400), (Unauthorized("x"), 401), (NotFound("x"), 404),
             (TooLarge("x"), 413), (LockLimitExceeded("x"), 409), (FencedOut("x"), 409),
             (PreconditionFailed("x"), 412), (Unavailable("x"), 503), (NotLeader(), 503),
             (WatchLagged("x"), 503), (RequestTimeout("x"), 504)]
    for error, status in cases:
        assert status_of(error) == status, error
    assert error_name(PreconditionFailed("x")) == "CommandFailed"
    assert error_name(Unauthorized("x")) == "Unauthorized"


def test_parsers_raise_only_bad_request() -> None:
    counter = Counter()

    @fuzz_settings(300)
    @given(st.text(max_size=60), st.binary(max_size=40), st.sampled_from(["utf-8", "base64"]))
    def run(query: str, body: bytes, encoding: str) -> None:
        counter.inputs += 1
        try:
            params = parse_query(query, ALLOWED | {"prev"})
            int_param(params, "lease")
            bool_param(params, "prev")
        except BadRequest as error:
            assert str(error)
        try:
            decode_value(body, encoding)
        except BadRequest as error:
            assert str(error)

    run()
    record("HTTP query and body parsers", counter.inputs)


def test_metrics_render_as_prometheus_text() -> None:
    status = {"node": 2, "address": '127.0.0.1:7102"\\', "uptime_s": 1.5,
              "shards": [[0, 3, 2, 4, 10, 10], [1, 0, 1, 4, 9, 8], [META_GROUP, 0, 1, 2, 5, 5]],
              "peers": {"1": True, "3": False}, "counters": {"requests": 7, "forwarded": 2},
              "wal": {"syncs": 3, "bytes_written": 100, "segments": 1}, "map_version": 4,
              "lock_waits_open": 1, "lock_grants_pushed": 0}
    samples = parse_prometheus(render_metrics(status, {"in_flight": 1,
                                                       "responses": {200: 5, 404: 1}}))
    assert samples["ringlock_leaders_held"] == [("", 1.0)]
    assert samples["ringlock_replicas"] == [("", 2.0)]
    assert ('{group="meta"}', 2.0) in samples["ringlock_raft_term"]
    assert samples["ringlock_forwarded_total"] == [("", 2.0)]
    assert ('{code="404"}', 1.0) in samples["ringlock_http_responses_total"]
    assert ('{peer="3"}', 0.0) in samples["ringlock_peer_connected"]
