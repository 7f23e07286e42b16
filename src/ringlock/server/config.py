"""A node's settings: flags or a TOML file, every limit named, checked in one place."""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ringlock.address import parse_address
from ringlock.codec.frames import MAX_FRAME_BYTES
from ringlock.errors import ConfigError
from ringlock.sharding.keys import DEFAULT_SHARDS, MAX_SHARDS
from ringlock.transport.auth import MAX_SECRET_BYTES

DEFAULT_PORT = 7101
DEFAULT_TICK_MS = 100
"""Raft ticks every 100 ms: heartbeats every tick, elections after 1-2 s of silence.
Shorter ticks cost heartbeats for every shard on every node."""
DEFAULT_ELECTION_TICKS = 10
DEFAULT_HEARTBEAT_TICKS = 2
DEFAULT_REPLICAS = 3
MAX_KEY_BYTES = 4 * 1024
MAX_VALUE_BYTES = 1024 * 1024
MAX_INFLIGHT_PER_CONNECTION = 4096
"""Requests one client connection may have unanswered; more get `TooLarge`."""
MAX_CONNECTIONS = 10_000
"""Open connections a node accepts (clients, peers, relays, TLS handshakes included);
one more is told `Unavailable` and closed. The node raises its open-file limit to fit
at start, as Redis does for maxclients, and says so when it cannot."""
MAX_PEER_FRAME_BYTES = 64 * 1024 * 1024
"""Peers send snapshots of whole shards; a client never gets more than MAX_FRAME_BYTES."""
DEFAULT_DEAD_AFTER_S = 60.0
"""A node unheard for this long is declared dead and its replicas are re-created
elsewhere. Long enough to ride out a restart or a GC pause; tests set seconds."""
DEFAULT_MAX_MOVES = 2
"""Shard replicas moving at once (K in the ring issue)."""
DEFAULT_COMPACT_EVERY = 2_048
"""A shard snapshots its state and cuts its log after this many applied entries. The log
in memory is most of what a node holds beyond its keys (about 280 bytes an entry, times
this, times its shards): 4,096 put a node with a million keys over 400 MB
(docs/PERFORMANCE.md); fewer means more snapshots, each a copy of the shard."""
MAX_SECRET_CHARS = 1024
"""A secret is sent in a header line: longer ones would not fit aiohttp's line limit."""


SECRET_REQUIRED = ("a cluster secret is required when any address is not loopback; "
                   "see `ringlock certs` / --secret-file")


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or "localhost": reachable from this machine only."""
    host = host.removeprefix("[").removesuffix("]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_secret_file(path: str | Path) -> str:
    """The cluster secret from a file (one trailing newline dropped). A file rather than
    a flag, so the secret is not in `ps` output or a shell's history."""
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_SECRET_BYTES + 2)
    except OSError as error:
        raise ConfigError(f"cannot read the secret file {path}: {error}") from error
    if len(raw.rstrip(b"\r\n")) > MAX_SECRET_BYTES:
        raise ConfigError(f"the secret file {path} holds more than "
                          f"MAX_SECRET_BYTES={MAX_SECRET_BYTES} bytes")
    try:
        secret = raw.decode().rstrip("\r\n")
    except UnicodeDecodeError as error:
        raise ConfigError(f"the secret file {path} is not UTF-8 text") from error
    if not secret:
        raise ConfigError(f"the secret file {path} is empty")
    return secret


def parse_peers(text: str) -> dict[int, str]:
    """`1=127.0.0.1:7101,2=127.0.0.1:7102` -> {1: "127.0.0.1:7101", ...}."""
    peers: dict[int, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        node, sep, address = item.partition("=")
        if not sep or not (node.isascii() and node.isdigit()) or int(node) <= 0:
            raise ConfigError(f"peer must be ID=HOST:PORT with a positive ID, got {item!r}")
        parse_address(address)
        peers[int(node)] = address
    return peers


@dataclass(frozen=True, slots=True)
class NodeConfig:
    node_id: int
    listen: str
    data_dir: str
    peers: dict[int, str] = field(default_factory=dict)
    """Every node of the cluster by id, this one included."""
    cluster: str = "ringlock"
    """A name peers must present: a node never joins a cluster of another name."""
    shards: int = DEFAULT_SHARDS
    replicas: int = DEFAULT_REPLICAS
    tick_ms: int = DEFAULT_TICK_MS
    election_ticks: int = DEFAULT_ELECTION_TICKS
    heartbeat_ticks: int = DEFAULT_HEARTBEAT_TICKS
    fsync: bool = True
    compact_every: int = DEFAULT_COMPACT_EVERY
    max_key_bytes: int = MAX_KEY_BYTES
    max_value_bytes: int = MAX_VALUE_BYTES
    max_frame_bytes: int = MAX_FRAME_BYTES
    max_peer_frame_bytes: int = MAX_PEER_FRAME_BYTES
    max_inflight_per_connection: int = MAX_INFLIGHT_PER_CONNECTION
    max_connections: int = MAX_CONNECTIONS
    join: str = ""
    """host:port of any member: join that cluster instead of founding one (first start)."""
    dead_after_s: float = DEFAULT_DEAD_AFTER_S
    max_moves: int = DEFAULT_MAX_MOVES
    http_listen: str = ""
    """HOST:PORT of the HTTP API, dashboard and /metrics (docs/HTTP.md); empty: none."""
    secret: str = field(default="", repr=False)
    """Peers must prove they know it to join, clients to read or write (transport/
    auth.py). Required unless every address is loopback. Never logged nor shown."""
    tls_cert: str = ""
    """Paths of this node's certificate, its key and the cluster's CA (all or none):
    TLS for the listener, the peer links and relays (see `ringlock certs`)."""
    tls_key: str = ""
    tls_ca: str = ""

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    def validate(self) -> NodeConfig:
        if self.node_id <= 0:
            raise ConfigError(f"node_id must be positive, got {self.node_id}")
        parse_address(self.listen)
        if not isinstance(self.peers, dict) or not all(
                type(node) is int and node > 0 for node in self.peers):
            raise ConfigError(f"peers must map positive node ids to HOST:PORT, "
                              f"got {self.peers!r:.80}")
        for address in self.peers.values():
            parse_address(address)
        if self.node_id not in self.peers:
            raise ConfigError(f"peers must include this node ({self.node_id})")
        if not 1 <= self.shards <= MAX_SHARDS:
            raise ConfigError(f"shards must be in 1..{MAX_SHARDS}, got {self.shards}")
        if self.replicas < 1:
            raise ConfigError(f"replicas must be at least 1, got {self.replicas}")
        if not 1 <= self.tick_ms <= 10_000:
            raise ConfigError(f"tick_ms must be in 1..10000, got {self.tick_ms}")
        if self.election_ticks <= self.heartbeat_ticks or self.heartbeat_ticks < 1:
            raise ConfigError("election_ticks must exceed heartbeat_ticks, which must be >= 1")
        for name in ("compact_every", "max_key_bytes", "max_value_bytes", "max_frame_bytes",
                     "max_inflight_per_connection", "max_connections"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not 1.0 <= self.dead_after_s <= 86_400:
            raise ConfigError(f"dead_after_s must be in 1..86400, got {self.dead_after_s}")
        if not 1 <= self.max_moves <= 64:
            raise ConfigError(f"max_moves must be in 1..64, got {self.max_moves}")
        if self.join:
            parse_address(self.join)
        if self.http_listen and parse_address(self.http_listen) == parse_address(self.listen):
            raise ConfigError(f"http_listen must differ from listen ({self.listen})")
        if (len(self.secret) > MAX_SECRET_CHARS or not self.secret.isprintable()
                or self.secret != self.secret.strip()):
            # (HTTP strips a header's outer spaces: such a secret could never match.)
            raise ConfigError(f"secret must be printable, at most {MAX_SECRET_CHARS} "
                              "characters, without outer spaces (its value is not shown)")
        if self.max_value_bytes + self.max_key_bytes + 1024 > self.max_frame_bytes:
            raise ConfigError("max_frame_bytes must hold a largest key and value with room")
        self._validate_security()
        return self

    def _validate_security(self) -> None:
        addresses = [self.listen, *self.peers.values(), *([self.join] if self.join else []),
                     *([self.http_listen] if self.http_listen else [])]
        if not self.secret and not all(is_loopback(parse_address(a)[0]) for a in addresses):
            raise ConfigError(SECRET_REQUIRED)
        files = {"tls_cert": self.tls_cert, "tls_key": self.tls_key, "tls_ca": self.tls_ca}
        given = [name for name, path in files.items() if path]
        if given and len(given) != len(files):
            raise ConfigError(f"TLS needs tls_cert, tls_key and tls_ca together; "
                              f"only {', '.join(given)} given")
        for name, path in files.items():
            if path and not Path(path).is_file():
                raise ConfigError(f"{name}: no such file {path}")



_TOML_KEYS = {f.name for f in fields(NodeConfig)} - {"secret"} | {"secret_file"}
"""A config file names a secret file rather than holding the secret: config files are
shared and committed more often than secrets should be."""


def load_toml(path: str | Path, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Settings from a TOML file (keys as in NodeConfig, `peers` a table of id = address)."""
    try:
        with open(path, "rb") as file:
            raw = tomllib.load(file)
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error}") from error
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:  # TOML is UTF-8
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from error
    if "secret" in raw:
        raise ConfigError(f"config file {path}: put the secret in a file of its own and "
                          "name it with secret_file")
    unknown = set(raw) - _TOML_KEYS
    if unknown:
        raise ConfigError(f"config file {path}: unknown keys {sorted(unknown)}")
    settings = dict(base or {})
    for key, value in raw.items():
        if key == "peers":
            if not isinstance(value, dict):
                raise ConfigError(f"config file {path}: peers must be a table id = address")
            value = parse_peers(",".join(f"{k}={v}" for k, v in value.items()))
        if key == "secret_file":
            if not isinstance(value, str):
                raise ConfigError(f"config file {path}: secret_file must be a path")
            key, value = "secret", read_secret_file(Path(path).parent / value)
        settings[key] = value
    return settings


def build_config(settings: dict[str, Any]) -> NodeConfig:
    try:
        config = NodeConfig(**settings)
    except TypeError as error:
        raise ConfigError(f"bad node settings: {error}") from error
    for f in fields(NodeConfig):
        value = getattr(config, f.name)
        expected: Any = {"int": int, "str": str, "bool": bool,
                         "float": (int, float)}.get(str(f.type))
        if expected is not None and not isinstance(value, expected):
            shown = "a value not shown" if f.name == "secret" else repr(value)
            raise ConfigError(f"{f.name} must be {f.type}, got {shown}")
    return replace(config).validate()
