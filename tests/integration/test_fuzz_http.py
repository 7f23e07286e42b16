"""Fuzzing the HTTP handlers of a real node (server/httpapi.py): hypothesis-generated
requests with random methods, paths (percent-encoded junk, non-UTF-8, `..`, keys over
the limit), query strings, headers and bodies, sent byte for byte over loopback to a
one-node cluster that has a secret.

Every answer must be a 2xx (a read), or a 4xx with a typed JSON error, or a 503; never
another 5xx. A write (PUT or DELETE) always carries at least one fault that must refuse
it, so "nothing changed" is checkable exactly: the sentinel keys, every stored key's
revisions and every data shard's applied index are the same afterwards (one node: no
election, no forwarding, no lease expiry moves them). The node must keep its PID and
serve normally at the end. A few malformed byte streams that are not HTTP at all are
sent too: aiohttp's parser refuses those before any handler runs, and the node words
the refusal as the same typed JSON error.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

from hypothesis import given
from hypothesis import strategies as st

from ringlock import errors
from ringlock.devcluster import DevCluster
from ringlock.server.config import MAX_KEY_BYTES, MAX_VALUE_BYTES
from ringlock.sharding.meta import META_GROUP
from tests.fuzzing import Counter, fuzz_settings, record
from tests.integration.conftest import make_cluster, running
from tests.integration.http_helpers import Answer, exchange, request
from tests.integration.test_bad_input import assert_still_serving

SECRET = "fuzz-secret"
RIGHT = f"Bearer {SECRET}"
TYPED_NAMES = {cls.__name__ for cls in vars(errors).values()
               if isinstance(cls, type) and issubclass(cls, errors.RequestError)}
WRITE_METHODS = ("PUT", "DELETE")
PARAM_NAMES = ("encoding", "consistency", "lease", "prev", "prev_revision", "client", "seq",
               "prefix", "after", "limit", "bogus", "", "ENCODING", "lease[]")

junk_bytes = st.one_of(st.binary(max_size=24),
                       st.sampled_from([b"", b"..", b"../..", b"%", b"%zz", b"\xff\xfe",
                                        b"\x00", b"/", b"base64", b"utf-8", b"stale",
                                        b"-1", b"0", b"1", b"true", b"2" * 25,
                                        b"9223372036854775808", b"k" * 300]))


def encoded(data: bytes) -> str:
    """Percent-encode some bytes, and leave a few raw (a bare `%`, `..`, `/`)."""
    return quote_from_bytes(data, safe="/.%")


paths = st.one_of(
    junk_bytes.map(lambda key: "/v1/kv/" + encoded(key)),
    st.sampled_from(["/v1/kv", "/v1/kv/", "/v1/status", "/metrics", "/healthz",
                     "/v1/kv/../v1/status", "//v1//kv//x", "/v1/kv/%FF%FE%00",
                     "/v1/kv/%", "/v1/kv/%zz", "/v1/kv/sentinel-0", "/V1/KV/x", "/",
                     "/v1/kv/" + "k" * (MAX_KEY_BYTES + 1),
                     "/v1/kv/" + "%FF" * (MAX_KEY_BYTES + 1)]),
    st.text(st.sampled_from("abcv1/kz.%-_~"), max_size=30).map(lambda text: "/" + text),
)
queries = st.one_of(
    st.sampled_from(["", "encoding=base64", "consistency=stale", "limit=3&prefix=sentinel",
                     "prefix=%FF&after=sentinel-1", "prev=true", "client=1&seq=2",
                     "limit=10000", "encoding=base64&consistency=linearizable"]),
    st.lists(st.tuples(st.sampled_from(PARAM_NAMES), junk_bytes), max_size=4).map(
        lambda pairs: "&".join(f"{name}={encoded(value)}" for name, value in pairs)))
KNOWN_METHODS = st.sampled_from(["GET", "GET", "GET", "HEAD", "PUT", "PUT", "DELETE", "POST",
                                 "PATCH", "OPTIONS", "PROPFIND"])
ANY_METHOD = st.text(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZget"), min_size=1, max_size=8)
auths = st.one_of(st.just(RIGHT), st.just(RIGHT), st.just(RIGHT),
                  st.sampled_from([None, "Bearer", "Bearer wrong", SECRET, f"Basic {SECRET}",
                                   f"bearer {SECRET}", f"Bearer {SECRET} extra",
                                   f"Bearer  {SECRET}"]),
                  st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40))
extra_headers = st.dictionaries(
    st.sampled_from(["Content-Type", "Accept", "X-Junk", "Accept-Encoding", "Cookie"]),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60), max_size=3)
bodies = st.one_of(junk_bytes, st.binary(max_size=200),
                   st.sampled_from([b"aGVsbG8=", b"not base64!", b"v" * (MAX_VALUE_BYTES + 1)]))
WRITE_FAULTS = ("auth", "unknown-param", "encoding", "key-too-large", "client-without-seq")


@st.composite
def http_requests(draw: st.DrawFn) -> tuple[str, str, bytes, dict[str, str]]:
    method = draw(ANY_METHOD if draw(st.integers(0, 4)) == 0 else KNOWN_METHODS)
    path, query = draw(paths), draw(queries)
    headers = draw(extra_headers)
    auth = draw(auths)
    if auth is not None:
        headers["Authorization"] = auth
    if method in WRITE_METHODS:  # at least one fault that must refuse the write
        fault = draw(st.sampled_from(WRITE_FAULTS))
        if fault == "auth":
            headers["Authorization"] = draw(st.sampled_from(["Bearer nope", "", "Basic x"]))
        elif fault == "unknown-param":
            query += "&bogus=1"
        elif fault == "encoding":
            query += "&encoding=latin-1"
        elif fault == "key-too-large":
            path = "/v1/kv/" + "k" * (MAX_KEY_BYTES + 1)
        else:
            query += "&client=7"
    target = path + ("?" + query if query else "")
    return method, target, draw(bodies), headers


def state(dev: DevCluster) -> Any:
    """What no refused request may change: every key with its revisions, and each data
    shard's applied index on the one node."""
    with dev.client(timeout=20) as client:
        keys = [(kv.key, kv.value, kv.mod_revision, kv.version)
                for kv in client.scan(b"", limit=10_000)]
        (status,) = client.status(timeout=10)
    applied = {row[0]: row[5] for row in status["shards"] if row[0] != META_GROUP}
    return keys, applied


def check(answer: Answer, method: str, what: str) -> None:
    assert answer.status < 500 or answer.status == 503, what
    if answer.status >= 400 and method != "HEAD":
        assert answer.headers.get("content-type", "").startswith("application/json"), what
        body = answer.json()
        assert body["error"] in TYPED_NAMES, what
        assert isinstance(body["message"], str) and body["message"], what
    if method in WRITE_METHODS:
        assert answer.status >= 400, f"a write with a fault was accepted: {what}"


NOT_HTTP = [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32),  # a TLS hello
            b"GET /v1/status HTTP/9.9\r\n\r\n", b"GET\r\n\r\n",
            b"GET /" + b"x" * 70_000 + b" HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n",
            b"PUT /v1/kv/a HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
            b"PUT /v1/kv/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"]


def test_fuzzed_http_requests_get_typed_errors_and_change_nothing(tmp_path: Path) -> None:
    dev = make_cluster(tmp_path / "f", nodes=1, http=True, secret=SECRET)
    with running(dev):
        (address,) = dev.http_addresses
        for number in range(4):
            assert request(address, "PUT", f"/v1/kv/sentinel-{number}", b"v",
                           {"Authorization": RIGHT}).status == 200
        pid = dev.nodes[1].pid
        before = state(dev)
        counter = Counter()
        statuses: dict[int, int] = {}
        started = time.monotonic()

        @fuzz_settings(500)
        @given(http_requests())
        def run(case: tuple[str, str, bytes, dict[str, str]]) -> None:
            method, target, body, headers = case
            counter.inputs += 1
            what = f"{method} {target[:200]} body {body[:40]!r} headers {headers}"
            answer = request(address, method, target, body, headers)
            statuses[answer.status] = statuses.get(answer.status, 0) + 1
            check(answer, method, what)

        run()
        for raw in NOT_HTTP:
            counter.inputs += 1
            try:
                answer = exchange(address, raw)
            except (ConnectionError, OSError):  # closed without an answer: also a refusal
                continue
            check(answer, "", repr(raw[:60]))
            assert 400 <= answer.status < 500, (raw[:60], answer)
        elapsed = time.monotonic() - started
        seen = ", ".join(f"{code}: {n}" for code, n in sorted(statuses.items()))
        record(f"node HTTP handlers ({elapsed:.1f} s; statuses {seen})", counter.inputs)
        assert counter.inputs >= 500
        assert dev.nodes[1].running and dev.nodes[1].pid == pid
        assert state(dev) == before
        assert request(address, "GET", "/v1/kv/sentinel-0",
                       headers={"Authorization": RIGHT}).json()["value"] == "v"
        assert_still_serving(dev)
