"""`Expect: 100-continue` on a node with a secret: the body is invited only once the
bearer is right (aiohttp answers the expectation before any middleware runs)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ringlock.server.httpapi import HttpApi
from tests.unit.http_api_helpers import http_node, serving


@pytest.mark.parametrize("bearer, continued", [(b"", False), (b"wrong", False),
                                               (b"s3cret", True)])
def test_only_an_authorized_request_is_told_to_continue(tmp_path: Path, bearer: bytes,
                                                        continued: bool) -> None:
    node = http_node(tmp_path, secret="s3cret")

    async def main() -> None:
        async with serving(HttpApi(node)) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            auth = b"Authorization: Bearer " + bearer + b"\r\n" if bearer else b""
            writer.write(b"PUT /v1/kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n"
                         + auth + b"Expect: 100-continue\r\n\r\n")
            async with asyncio.timeout(5):
                status = await reader.readline()
            assert status.startswith(b"HTTP/1.1 100 ") is continued, status
            if not continued:
                assert status.startswith(b"HTTP/1.1 401 "), status
            writer.close()

    asyncio.run(main())
