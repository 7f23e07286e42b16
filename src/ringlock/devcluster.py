"""A local cluster of real node processes on loopback, for `ringlock dev`, tests and bench.

The cluster's shape (node ids, addresses, shards, name) is written to
`DATA/cluster.json` on first start; a later start on the same directory restarts the
same cluster with its data. Every process is started in its own session and stopped by
its PID (SIGTERM, then SIGKILL after a grace period), never by name.

With `secret=`, the nodes share that cluster secret (written to `DATA/secret`, mode
0600, and passed with --secret-file, never on a command line); with `tls_dir=` (made by
`ringlock certs`), node N uses `node-N.pem`, `node-N-key.pem` and `ca.pem` from there.
Both are kept in `cluster.json` (the secret by its file), so a restart keeps them.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ringlock.errors import ConfigError, RequestError
from ringlock.files import write_atomically
from ringlock.raft.messages import Role
from ringlock.server.config import read_secret_file
from ringlock.sharding.meta import META_GROUP

DEFAULT_DATA_DIR = ".ringlock"
DEFAULT_BASE_PORT = 7101
HTTP_PORT_OFFSET = 1000
"""`ringlock dev` gives node i an HTTP API on its client port + 1000 (7101 -> 8101)."""
READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
POLL_INTERVAL_S = 0.05
FREE_PORTS_FROM = 20_000
"""free_base_port's lowest choice: above the ports services usually hold."""


def free_base_port(count: int, host: str = "127.0.0.1") -> int:
    """A port P such that P..P+count-1 are free on loopback right now (a probe: another
    process may still take one before the nodes bind it).

    Chosen below the kernel's ephemeral range, never from it: an outgoing connection
    (one node dialling another) takes its local port from that range, and took a
    probed port between the probe and the next node's bind (a CI run, 2026-11-28)."""
    low, high = _ephemeral_ports()
    if low - count > FREE_PORTS_FROM:
        span = (FREE_PORTS_FROM, low - count)
    else:
        span = (high + 1, 65536 - count)
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(*span)
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.bind((host, port))
            return base
        except OSError:
            continue
    raise RuntimeError("no run of free loopback ports found")


def _ephemeral_ports() -> tuple[int, int]:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return low, high


@dataclass
class NodeProcess:
    node_id: int
    address: str
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None
    http: str = ""
    """HOST:PORT of the node's HTTP API; empty: none."""
    store_subdir: str | None = None
    """Where `--data` points inside `data_dir` (None: `data_dir` itself). Torture mounts a
    small tmpfs there, so that a full disk leaves the node's log writable."""

    @property
    def store_dir(self) -> Path:
        return self.data_dir / self.store_subdir if self.store_subdir else self.data_dir

    @property
    def log_path(self) -> Path:
        return self.data_dir / "node.log"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class DevCluster:
    def __init__(self, data_dir: str | Path = DEFAULT_DATA_DIR, *, nodes: int = 3,
                 base_port: int = DEFAULT_BASE_PORT, host: str = "127.0.0.1",
                 shards: int = 64, fsync: bool = True, extra_args: tuple[str, ...] = (),
                 name: str = "ringlock-dev", env: dict[str, str] | None = None,
                 http_base_port: int | None = None,
                 node_addresses: dict[int, str] | None = None,
                 launcher: Callable[[int], list[str]] | None = None,
                 store_subdir: str | None = None, secret: str | None = None,
                 tls_dir: str | Path | None = None) -> None:
        """`http_base_port`: give node i an HTTP API on http_base_port + i - 1 (docs/HTTP.md).
        A restart on existing data keeps the shape written at first start.
        `node_addresses` and `launcher` are for torture's network namespaces only: an
        address per node inside a namespace the caller made, and the command prefix that
        runs a node there (`ip netns exec NS`, which execs, so the PID is the node's).
        `secret` and `tls_dir` (certificates from `ringlock certs`) start a secured cluster."""
        if not 1 <= nodes <= 64:
            raise ConfigError(f"nodes must be in 1..64, got {nodes}")
        if not host.startswith("127."):
            raise ConfigError(f"a dev cluster listens on loopback only, not {host}")
        if (node_addresses is None) != (launcher is None):
            raise ConfigError("node_addresses and launcher go together (torture's netns)")
        self.launcher = launcher
        self.store_subdir = store_subdir
        self.data_dir = Path(data_dir).absolute()
        self.fsync = fsync
        self.extra_args = extra_args
        self.env = env
        """Extra environment of the node processes (torture sets RINGLOCK_FAULTS=1)."""
        existing = self._shape_file.exists()
        shape: dict[str, Any] = json.loads(self._shape_file.read_text()) if existing else {
            "name": name, "shards": shards,
            "nodes": {str(i): f"{host}:{base_port + i - 1}" for i in range(1, nodes + 1)}
            if node_addresses is None else {str(i): a for i, a in node_addresses.items()},
            "http": {} if http_base_port is None else {
                str(i): f"{host}:{http_base_port + i - 1}" for i in range(1, nodes + 1)}}
        self.name: str = shape["name"]
        self.shards: int = shape["shards"]
        http = shape.get("http", {})
        self.nodes = {int(i): NodeProcess(int(i), a, self.data_dir / f"node-{i}",
                                          http=http.get(i, ""), store_subdir=store_subdir)
                      for i, a in shape["nodes"].items()}
        self._joined: dict[int, str] = {int(i): a for i, a in shape.get("joined", {}).items()}
        """Nodes added after founding, and the member they joined through."""
        self.tls_dir: Path | None = Path(tls_dir).absolute() if tls_dir else (
            Path(shape["tls_dir"]) if shape.get("tls_dir") else None)
        self.secret: str | None = secret
        if secret is None and shape.get("secure"):
            self.secret = read_secret_file(self.secret_file)
        self._node_secrets: dict[int, str] = {}
        """Per-node secrets that differ from the cluster's (tests of a wrong one)."""
        self._client: Any = None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if secret is not None:
            self._write_secret(self.secret_file, secret)
        if not existing or secret is not None or tls_dir:
            self._save_shape()

    @property
    def secret_file(self) -> Path:
        return self.data_dir / "secret"

    @staticmethod
    def _write_secret(path: Path, secret: str) -> None:
        write_atomically(path, (secret + "\n").encode(), private=True)

    @property
    def tls_ca(self) -> str | None:
        return str(self.tls_dir / "ca.pem") if self.tls_dir else None

    @property
    def _shape_file(self) -> Path:
        return self.data_dir / "cluster.json"

    def _save_shape(self) -> None:
        """What a restart on the same data needs: name, shards, nodes, who joined how."""
        shape = {"name": self.name, "shards": self.shards,
                 "nodes": {str(i): n.address for i, n in sorted(self.nodes.items())},
                 "http": {str(i): n.http for i, n in sorted(self.nodes.items()) if n.http},
                 "joined": {str(i): a for i, a in sorted(self._joined.items())},
                 "secure": self.secret is not None,
                 "tls_dir": str(self.tls_dir) if self.tls_dir else None}
        self.data_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(self._shape_file, json.dumps(shape, indent=2).encode())

    @property
    def addresses(self) -> list[str]:
        return [n.address for _, n in sorted(self.nodes.items())]

    @property
    def http_addresses(self) -> list[str]:
        """Every node's HTTP API (HOST:PORT), in node order; empty without one."""
        return [n.http for _, n in sorted(self.nodes.items()) if n.http]

    @property
    def cluster(self) -> str:
        return ",".join(self.addresses)

    # ------------------------------------------------------------------ processes

    def start(self, *, wait: bool = True) -> DevCluster:
        for node_id in self.nodes:
            self.start_node(node_id)
        if wait:
            self.wait_ready()
        return self

    def start_node(self, node_id: int) -> None:
        node = self.nodes[node_id]
        if node.running:
            return
        node.data_dir.mkdir(parents=True, exist_ok=True)
        node.store_dir.mkdir(parents=True, exist_ok=True)
        founders = {i: n for i, n in self.nodes.items() if i not in self._joined}
        peers = ",".join(f"{i}={n.address}" for i, n in sorted(founders.items()))
        prefix = self.launcher(node_id) if self.launcher is not None else []
        command = [*prefix, sys.executable, "-m", "ringlock", "serve", "--id", str(node_id),
                   "--listen", node.address, "--data", str(node.store_dir),
                   "--shards", str(self.shards), "--cluster", self.name, *self.extra_args]
        if node.http:
            command += ["--http", node.http]
        if node_id in self._joined:
            command += ["--join", self._joined[node_id]]
        else:
            command += ["--peers", peers]
        if not self.fsync:
            command.append("--no-fsync")
        command += self._security_args(node_id)
        with open(node.log_path, "ab") as log:
            node.process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=log, start_new_session=True,
                                            env={**os.environ, **self.env} if self.env else None)
        (node.data_dir / "pid").write_text(str(node.process.pid))

    def _security_args(self, node_id: int) -> list[str]:
        args: list[str] = []
        if node_id in self._node_secrets:
            path = self.data_dir / f"secret-{node_id}"
            self._write_secret(path, self._node_secrets[node_id])
            args += ["--secret-file", str(path)]
        elif self.secret is not None:
            args += ["--secret-file", str(self.secret_file)]
        if self.tls_dir is not None:
            args += ["--tls-cert", str(self.tls_dir / f"node-{node_id}.pem"),
                     "--tls-key", str(self.tls_dir / f"node-{node_id}-key.pem"),
                     "--tls-ca", str(self.tls_dir / "ca.pem")]
        return args

    def add_node(self, node_id: int, *, via: int | None = None,
                 secret: str | None = None) -> None:
        """Start a new node that joins the running cluster through `via` (any member).
        `secret`: this node's own, when a test wants one that differs."""
        if secret is not None:
            self._node_secrets[node_id] = secret
        if node_id in self.nodes:
            raise ConfigError(f"node {node_id} is already in this dev cluster")
        host, _, _ = self.addresses[0].rpartition(":")
        used = {int(n.address.rpartition(":")[2]) for n in self.nodes.values()}
        port = max(used) + 1
        member = self.nodes[via if via is not None else min(self.nodes)]
        http_ports = [int(n.http.rpartition(":")[2]) for n in self.nodes.values() if n.http]
        http = f"{host}:{max(http_ports) + 1}" if http_ports else ""
        node = NodeProcess(node_id, f"{host}:{port}", self.data_dir / f"node-{node_id}",
                           http=http)
        self.nodes[node_id] = node
        self._joined[node_id] = member.address
        self._save_shape()
        self.start_node(node_id)

    def signal_node(self, node_id: int, signum: int) -> None:
        node = self.nodes[node_id]
        if node.process is not None and node.process.poll() is None:
            os.kill(node.process.pid, signum)

    def kill(self, node_id: int) -> None:
        """kill -9, and reap it."""
        self.signal_node(node_id, signal.SIGKILL)
        process = self.nodes[node_id].process
        if process is not None:
            process.wait(timeout=STOP_GRACE_S)

    def stop_node(self, node_id: int, *, grace: float = STOP_GRACE_S) -> None:
        process = self.nodes[node_id].process
        if process is None or process.poll() is not None:
            return
        self.signal_node(node_id, signal.SIGCONT)  # a paused node cannot handle SIGTERM
        self.signal_node(node_id, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.kill(node_id)

    def stop(self) -> None:
        """One node after the other, so each can hand its leaderships to the rest."""
        for node_id in sorted(self.nodes):
            self.stop_node(node_id)
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> DevCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ readiness

    def client(self, **kwargs: Any) -> Any:
        from ringlock.client import Client

        security: dict[str, Any] = {"secret": self.secret or "", "tls_ca": self.tls_ca or ""}
        return Client(self.addresses, **{**security, **kwargs})

    def leaders(self) -> dict[int, int]:
        """shard -> node id, as the running nodes report their own leadership."""
        return {s: n for s, n in self.group_leaders().items() if s < self.shards}

    def meta_leader(self) -> int | None:
        return self.group_leaders().get(META_GROUP)

    def group_leaders(self) -> dict[int, int]:
        """Every Raft group's leader (the shards', and the meta group's at META_GROUP)."""
        if self._client is None:
            self._client = self.client(timeout=2.0)
        leaders: dict[int, int] = {}
        for report in self._client.status(timeout=1.0):
            for shard, role, *_ in report.get("shards", []):
                if role == Role.LEADER:
                    leaders[shard] = report["node"]
        return leaders

    def wait_balanced(self, timeout: float = READY_TIMEOUT_S) -> bool:
        """Poll until every node leads within one shard of every other (the meta leader
        evens leaders out a few seconds after a start); False at the deadline."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                leaders = self.leaders()
            except (RequestError, OSError):
                leaders = {}
            counts = [sum(1 for n in leaders.values() if n == node) for node in self.nodes]
            if len(leaders) == self.shards and max(counts) - min(counts) <= 1:
                return True
            time.sleep(POLL_INTERVAL_S)
        return False

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> dict[int, int]:
        """Poll until every shard has a leader; raise with what is missing at the deadline."""
        deadline = time.monotonic() + timeout
        leaders: dict[int, int] = {}
        while time.monotonic() < deadline:
            for node_id, node in self.nodes.items():
                code = node.process.poll() if node.process is not None else None
                if code is not None and code not in (0, -signal.SIGKILL, -signal.SIGTERM):
                    raise RuntimeError(f"node {node_id} exited with {code}; "
                                       f"see {node.data_dir / 'node.log'}")
            try:
                leaders = self.group_leaders()
            except (RequestError, OSError):
                leaders = {}
            if len(leaders) == self.shards + 1:  # every shard, and the meta group
                return {s: n for s, n in leaders.items() if s < self.shards}
            time.sleep(POLL_INTERVAL_S)
        missing = sorted(set(range(self.shards)) - set(leaders))
        raise TimeoutError(f"after {timeout} s, shards without a leader: {missing[:10]}...")
