"""A node with TLS serves its HTTP API over TLS too: the bearer is the cluster secret,
which must not cross the network in clear text."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest

from ringlock.certs import make_certs
from ringlock.server.httpapi import HttpApi
from ringlock.server.node import Node
from tests.unit.http_api_helpers import http_node, serving


def tls_node(tmp_path: Path) -> Node:
    made = make_certs(tmp_path / "tls", nodes=1)
    cert, key = made.nodes[1]
    return http_node(tmp_path / "d", secret="s3cret", tls_cert=str(cert), tls_key=str(key),
                     tls_ca=str(made.ca))


async def request(port: int, context: ssl.SSLContext | None) -> bytes:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1" if context else None)
    writer.write(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n"
                 b"Authorization: Bearer s3cret\r\nConnection: close\r\n\r\n")
    try:
        async with asyncio.timeout(5):
            return await reader.read()
    finally:
        writer.close()


def test_the_http_api_of_a_tls_node_is_https_and_refuses_clear_text(tmp_path: Path) -> None:
    node = tls_node(tmp_path)

    async def main() -> None:
        async with serving(HttpApi(node)) as port:
            # In clear text: no HTTP answer (the TLS layer drops it).
            answer = b""
            with pytest.raises((ConnectionError, OSError)):
                answer = await request(port, None)
                if not answer.startswith(b"HTTP/"):
                    raise ConnectionError("no HTTP answer")
            assert not answer.startswith(b"HTTP/")
            # Over TLS, verified against the cluster's CA: an HTTP answer.
            context = ssl.create_default_context(cafile=node.config.tls_ca)
            answer = await request(port, context)
            assert answer.startswith(b"HTTP/1.1 "), answer[:80]

    asyncio.run(main())
