"""The HTTP API's two load limits answer as documented: past MAX_HTTP_CONCURRENT_REQUESTS
a request gets 503 Unavailable with Retry-After at once, and one that outlives
HTTP_REQUEST_TIMEOUT_S gets 504 RequestTimeout; both as typed JSON, and the API keeps
serving after."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from ringlock.server import httpapi
from ringlock.server.httpapi import MAX_HTTP_CONCURRENT_REQUESTS, HttpApi
from tests.unit.http_api_helpers import http_node, serving


async def get(port: int, path: str) -> tuple[int, dict[str, str], dict[str, Any]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        async with asyncio.timeout(10):
            raw = await reader.read()
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, json.loads(body)


def make_api(tmp_path: Path) -> HttpApi:
    return HttpApi(http_node(tmp_path))


def test_past_the_concurrency_cap_a_request_gets_503_with_retry_after(tmp_path: Path) -> None:
    api = make_api(tmp_path)

    async def main() -> None:
        async with serving(api) as port:
            api.in_flight = MAX_HTTP_CONCURRENT_REQUESTS  # as if that many were being served
            status, headers, body = await get(port, "/v1/status")
            assert status == 503 and body["error"] == "Unavailable", (status, body)
            assert "MAX_HTTP_CONCURRENT_REQUESTS" in body["message"]
            assert int(headers["retry-after"]) >= 1
            api.in_flight = 0
            status, _, body = await get(port, "/v1/status")
            assert status == 200 and body["node"] == 1, (status, body)

    asyncio.run(main())


def test_a_request_past_the_timeout_gets_504_request_timeout(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    monkeypatch.setattr(httpapi, "HTTP_REQUEST_TIMEOUT_S", 0.2)
    api = make_api(tmp_path)

    async def never_answered(body: dict[str, Any]) -> Any:
        await asyncio.sleep(60)  # a shard that never answers (cancelled by the deadline)

    monkeypatch.setattr(api, "call", never_answered)

    async def main() -> None:
        async with serving(api) as port:
            status, _, body = await get(port, "/v1/kv/a")
            assert status == 504 and body["error"] == "RequestTimeout", (status, body)
            assert "HTTP_REQUEST_TIMEOUT_S" in body["message"]
            assert api.in_flight == 0  # the timed-out request let go of its slot

    asyncio.run(main())
