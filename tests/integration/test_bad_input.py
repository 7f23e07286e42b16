"""Bad bytes and bad requests get a typed error, change nothing, and the node keeps serving."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest

from ringlock.certs import make_certs
from ringlock.codec.frames import FrameDecoder, encode_frame
from ringlock.devcluster import DevCluster, free_base_port
from ringlock.server.config import MAX_KEY_BYTES, MAX_VALUE_BYTES
from ringlock.sharding.keys import shard_of
from tests.integration.conftest import TEST_SHARDS, make_cluster, running


class Raw:
    """A bare socket speaking frames, to send what no client would."""

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.decoder = FrameDecoder()

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, body: dict[str, Any]) -> dict[str, Any]:
        self.send_bytes(encode_frame(body))
        return self.answer()

    def answer(self) -> dict[str, Any]:
        for _ in range(10_000):
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("closed without an answer")
            bodies = self.decoder.feed(data)
            if bodies:
                assert isinstance(bodies[0], dict)
                return bodies[0]
        raise AssertionError("no complete answer")

    def closed_by_peer(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def put_body(key: bytes, value: bytes, request_id: int = 1) -> dict[str, Any]:
    return {"id": request_id, "op": "put", "shard": shard_of(key, 8), "key": key,
            "value": value}


def assert_still_serving(cluster: DevCluster) -> None:
    with cluster.client(timeout=20) as client:
        client.put("still-serving", "yes")
        assert client.get("still-serving") == b"yes"


@pytest.mark.parametrize("garbage", [
    b"\x00\x00\x00\x05\x07hello",                           # unknown frame version
    b"\x00\x00\x00\x03\x01\xc1\xc1",                        # body is not msgpack
    b"\x00\x00\x00\x00",                                    # frame with no version byte
    struct.pack(">I", 2) + b"\x01" + msgpack.packb(7),      # body neither map nor array
])
def test_malformed_frame_gets_bad_request_and_node_keeps_serving(
    cluster: DevCluster, garbage: bytes
) -> None:
    raw = Raw(cluster.addresses[0])
    raw.send_bytes(garbage)
    answer = raw.answer()
    assert answer["err"] in ("BadRequest",), answer
    assert raw.closed_by_peer()
    raw.close()
    assert_still_serving(cluster)


def test_announced_oversized_frame_is_refused_before_reading_it(cluster: DevCluster) -> None:
    raw = Raw(cluster.addresses[1])
    raw.send_bytes(struct.pack(">I", 1 << 30) + b"\x01")
    assert raw.answer()["err"] == "TooLarge"
    raw.close()
    assert_still_serving(cluster)


def test_random_garbage_bytes_do_not_stop_the_node(cluster: DevCluster) -> None:
    import random

    rng = random.Random(1234)
    for _ in range(20):
        raw = Raw(cluster.addresses[2])
        raw.send_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))))
        raw.sock.shutdown(socket.SHUT_WR)
        raw.close()
    assert_still_serving(cluster)


def test_oversized_key_and_value_get_too_large_and_change_nothing(cluster: DevCluster) -> None:
    with cluster.client(timeout=20) as client:
        with pytest.raises(Exception) as too_long_key:
            client.put(b"k" * (MAX_KEY_BYTES + 1), b"v")
        assert type(too_long_key.value).__name__ == "TooLarge"
        with pytest.raises(Exception) as too_big_value:
            client.put(b"big", b"v" * (MAX_VALUE_BYTES + 1))
        assert type(too_big_value.value).__name__ == "TooLarge"
        assert client.get(b"big") is None
        client.put(b"k" * MAX_KEY_BYTES, b"v" * MAX_VALUE_BYTES)  # the limits themselves pass
        assert client.get(b"k" * MAX_KEY_BYTES) == b"v" * MAX_VALUE_BYTES


def test_unknown_command_and_bad_fields_get_typed_errors(cluster: DevCluster) -> None:
    raw = Raw(cluster.addresses[0])
    assert raw.request({"id": 1, "op": "format_disk"})["err"] == "BadRequest"
    assert raw.request({"id": 2, "op": "put", "shard": 0, "key": "str-not-bytes",
                        "value": b"x"})["err"] == "BadRequest"
    assert raw.request({"id": 3, "op": "get"})["err"] == "BadRequest"
    assert raw.request({"op": "get"})["err"] == "BadRequest"
    assert raw.request({"id": 4, "op": "get", "shard": 99, "key": b"a"})["err"] == "WrongShard"
    wrong = (shard_of(b"a", 8) + 1) % 8
    assert raw.request({"id": 5, "op": "get", "shard": wrong, "key": b"a"})["err"] == (
        "WrongShard")
    assert raw.request({"id": 6, "op": "scan", "shard": 0, "limit": 0})["err"] == "BadRequest"
    assert raw.request({"id": 7, "op": "hello", "node": 2, "cluster": "other"})["err"] == (
        "BadRequest")
    raw.close()  # a refused hello closes its stream: what a peer sends next is Raft traffic
    raw = Raw(cluster.addresses[0])
    assert raw.request({"id": 8, "op": "lease_grant", "shard": 0, "ttl_ms": -5})["err"] == (
        "BadRequest")
    assert raw.request({"id": 9, "op": "cas", "shard": shard_of(b"a", 8), "key": b"a",
                        "target": "color", "expected": 1, "then": "put", "value": b""})[
        "err"] == "BadRequest"
    raw.close()
    assert_still_serving(cluster)


def test_raft_frames_from_a_client_connection_are_refused(cluster: DevCluster) -> None:
    raw = Raw(cluster.addresses[0])
    answer = raw.request({"id": 1, "raft": [[1, 1, 2, 99, 0, 0, 0, [], 0, False, 0, 0, None,
                                              False]]})
    assert answer["err"] == "BadRequest"
    raw.close()
    assert_still_serving(cluster)


def assert_serving_again_with_the_refusal_counted(dev: DevCluster) -> None:
    """After a test of `max_connections` closed its held sockets: the node serves again
    once it has seen them close (bounded), and counted the refusal."""
    deadline = time.monotonic() + 20
    while True:
        try:
            assert_still_serving(dev)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    with dev.client(timeout=20) as client:
        counters = client.status()[0]["counters"]
    assert counters["connections_refused"] >= 1


def test_connections_past_max_connections_get_unavailable_and_the_node_keeps_serving(
        tmp_path: Path) -> None:
    """A flood of connections cannot take every descriptor: one past `max_connections`
    is told `Unavailable` (retryable: try another node) and closed; once they go, new
    ones are served again."""
    limit = 6
    dev = make_cluster(tmp_path / "c", nodes=1, extra_args=("--max-connections", str(limit)))
    with running(dev):
        address = dev.addresses[0]
        held: list[Raw] = []
        refused: dict[str, Any] | None = None
        try:
            for _ in range(limit + 2):  # bounded: the node's own clients hold a few
                raw = Raw(address)
                raw.sock.settimeout(0.5)
                try:
                    answer = raw.answer()  # a served connection says nothing first
                except TimeoutError:
                    held.append(raw)
                    continue
                refused = answer
                assert raw.closed_by_peer()
                raw.close()
                break
            else:
                raise AssertionError(f"{len(held)} connections open and none refused")
        finally:
            for raw in held:
                raw.close()
        assert refused is not None and refused["err"] == "Unavailable", refused
        assert "max_connections" in refused["msg"]
        assert_serving_again_with_the_refusal_counted(dev)


def test_tls_connections_past_max_connections_are_closed_before_any_handshake(
        tmp_path: Path) -> None:
    """On a TLS node no handshake is spent on a connection past `max_connections`
    (server/node.py, _accept_tls): it is closed at once, counted, and the node keeps
    serving. A connection within the limit waits silently for its ClientHello."""
    limit = 6
    make_certs(tmp_path / "tls", nodes=1)
    dev = DevCluster(tmp_path / "c", nodes=1, base_port=free_base_port(1), shards=TEST_SHARDS,
                     name="test-tls-max", tls_dir=tmp_path / "tls",
                     extra_args=("--max-connections", str(limit)))
    with running(dev):
        host, port = dev.addresses[0].rsplit(":", 1)
        held: list[socket.socket] = []
        refused = False
        try:
            for _ in range(limit + 2):  # bounded; well within TLS_HANDSHAKE_TIMEOUT_S
                sock = socket.create_connection((host, int(port)), timeout=10)
                sock.settimeout(0.3)
                try:
                    closed = sock.recv(1) == b""
                except TimeoutError:  # within the limit: waiting for our ClientHello
                    held.append(sock)
                    continue
                except ConnectionResetError:
                    closed = True
                sock.close()
                assert closed
                refused = True
                break
        finally:
            for sock in held:
                sock.close()
        assert refused, f"{len(held)} TLS connections open and none refused"
        assert len(held) <= limit
        assert_serving_again_with_the_refusal_counted(dev)
