"""Coverage-guided fuzzing (atheris, libFuzzer) of the HTTP API's pure parsers: a query
string, its integer and boolean parameters, a PUT body in either encoding, and an item's
encoding for an answer. Only BadRequest may come out. Not part of the test suite
(atheris is not a dependency); run by hand, bounded:

    pip install atheris
    PYTHONPATH=src python tests/atheris/fuzz_http_parsers.py -runs=200000

docs/RELIABILITY.md records the last run.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from ringlock.errors import BadRequest
    from ringlock.server.httpapi import (
        bool_param,
        decode_value,
        int_param,
        kv_json,
        parse_query,
    )

ALLOWED = frozenset({"encoding", "lease", "prev", "prefix", "limit"})


def one_input(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    query = provider.ConsumeUnicodeNoSurrogates(provider.ConsumeIntInRange(0, 200))
    encoding = "base64" if provider.ConsumeBool() else "utf-8"
    body = provider.ConsumeBytes(provider.ConsumeIntInRange(0, 300))
    try:
        params = parse_query(query, ALLOWED)
        int_param(params, "lease")
        int_param(params, "limit")
        bool_param(params, "prev")
    except BadRequest:
        pass
    try:
        value = decode_value(body, encoding)
    except BadRequest:
        value = body
    item = kv_json([body, value, 1, 2, 3, 0], encoding)
    if item["encoding"] not in ("utf-8", "base64"):
        raise AssertionError(item)


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
