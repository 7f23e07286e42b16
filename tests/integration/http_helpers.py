"""A bare HTTP/1.1 exchange over a socket, for the HTTP API tests: the request goes out
byte for byte as written (any method, any path, any header), which no client library
allows; the answer is parsed by the standard library."""

from __future__ import annotations

import http.client
import json
import re
import socket
from dataclasses import dataclass
from typing import Any

TIMEOUT_S = 15.0
"""Above the node's HTTP_REQUEST_TIMEOUT_S: a node's own timeout answers first."""


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def exchange(address: str, raw: bytes) -> Answer:
    """Send `raw` (a whole request) on a new connection and read one answer."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=TIMEOUT_S) as sock:
        sock.sendall(raw)
        method = raw.split(b" ", 1)[0].decode("latin-1")  # a HEAD answer has no body
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        body = response.read()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()},
                      body)


def request(address: str, method: str, path: str, body: bytes = b"",
            headers: dict[str, str] | None = None) -> Answer:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {address}", "Connection: close",
             f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return exchange(address, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)


def assert_typed_error(answer: Answer, status: int, name: str) -> None:
    assert answer.status == status, answer
    assert answer.headers.get("content-type", "").startswith("application/json"), answer
    body = answer.json()
    assert body["error"] == name and isinstance(body["message"], str) and body["message"], body


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"'
                    r',?)*\})? (\S+)$')


def parse_prometheus(text: str) -> dict[str, list[tuple[str, float]]]:
    """Prometheus text format, strictly: comments are `# HELP` / `# TYPE`, every other
    non-empty line `name{labels} value`. -> {name: [(labels text, value)]}."""
    samples: dict[str, list[tuple[str, float]]] = {}
    typed: set[str] = set()
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("#"):
            kind, name, *_ = line[2:].split(" ", 2)
            assert kind in ("HELP", "TYPE"), line
            if kind == "TYPE":
                assert line.split(" ")[3] in ("counter", "gauge"), line
                typed.add(name)
            continue
        match = SAMPLE.match(line)
        assert match, f"not a Prometheus sample: {line!r}"
        name, labels, value = match.group(1), match.group(2) or "", match.group(3)
        assert name in typed, f"{name} has no TYPE line"
        samples.setdefault(name, []).append((labels, float(value)))
    return samples
