"""Client requests: checked field by field before anything is proposed or read.

A request is a msgpack map `{"id": int, "op": str, ...}`; the answer is
`{"id": id, "ok": result}` or `{"id": id, "err": code, "msg": text[, "leader": addr]}`.
See docs/PROTOCOL.md. Every check raises a typed `RequestError`; nothing reaches a
Raft core or a state machine unless it passed.
"""

from __future__ import annotations

from typing import Any

from ringlock.errors import BadRequest, RequestError, TooLarge, WrongShard
from ringlock.sharding.keys import shard_of
from ringlock.statemachine.kv import KeyValue
from ringlock.statemachine.locks import MAX_LOCK_NAME_BYTES, MODES

CONSISTENCIES = ("linearizable", "stale")
MAX_SCAN_LIMIT = 10_000
MAX_LEASE_TTL_MS = 24 * 3600 * 1000
MIN_LEASE_TTL_MS = 100
_ABSENT = object()


def field(body: dict[str, Any], name: str, kind: type | tuple[type, ...],
          default: Any = ...) -> Any:
    """`body[name]` if it has type `kind` (a bool is not an int); `default` if absent,
    and BadRequest if absent without a default."""
    value = body.get(name, _ABSENT)
    if type(value) is kind:  # the common case, decided in one test
        return value
    if value is _ABSENT:
        if default is ...:
            raise BadRequest(f"missing field {name!r}")
        return default
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise BadRequest(f"field {name!r} has the wrong type ({type(value).__name__})")
    return value


def checked_key(body: dict[str, Any], shards: int, max_key_bytes: int,
                name: str = "key") -> tuple[int, bytes]:
    key = field(body, name, bytes)
    if not key:
        raise BadRequest("keys must not be empty")
    if len(key) > max_key_bytes:
        raise TooLarge(f"key of {len(key)} bytes exceeds max_key_bytes={max_key_bytes}")
    shard = field(body, "shard", int)
    if shard != shard_of(key, shards):
        raise WrongShard(f"key belongs to shard {shard_of(key, shards)}, not {shard}")
    return shard, key


def checked_value(body: dict[str, Any], max_value_bytes: int, name: str = "value") -> bytes:
    value = field(body, name, bytes)
    if len(value) > max_value_bytes:
        raise TooLarge(f"value of {len(value)} bytes exceeds max_value_bytes={max_value_bytes}")
    return value  # type: ignore[no-any-return]


def checked_session(body: dict[str, Any]) -> tuple[int, int]:
    """(client id, request seq) for exactly-once; (0, 0) turns de-duplication off."""
    client = field(body, "client", int, 0)
    seq = field(body, "seq", int, 0)
    if not (0 <= client < 2**63 and 0 <= seq < 2**63):
        raise BadRequest("client and seq must be in 0..2**63-1")
    return client, seq


def checked_lease(body: dict[str, Any], default: Any = ...) -> int:
    """A lease id: 0 (none, where a default allows it) or 1..2**63-1. A negative one was
    granted, and a key put under it made every replica's apply raise (its record packs
    the lease unsigned)."""
    lease = field(body, "lease", int, default)
    if not 0 <= lease < 2**63:
        raise BadRequest(f"lease must be in 0..2**63-1, got {lease}")
    return lease  # type: ignore[no-any-return]


def checked_fence(body: dict[str, Any]) -> list[list[Any]]:
    """The optional `fence`, [lock name, token], as the trailing argument of a write
    command: [] when absent, so an unfenced command keeps its shape."""
    fence = body.get("fence")
    if fence is None:
        return []
    if (not isinstance(fence, list) or len(fence) not in (2, 3)
            or not isinstance(fence[0], bytes)
            or not fence[0] or len(fence[0]) > MAX_LOCK_NAME_BYTES
            or type(fence[1]) is not int or not 0 < fence[1] < 2**63
            or (len(fence) == 3 and fence[2] not in MODES)):
        raise BadRequest("fence must be [lock name (1..1024 bytes), token (a positive int)"
                         f"[, mode (one of {MODES})]]")
    return [fence]


def checked_consistency(body: dict[str, Any]) -> str:
    consistency = field(body, "consistency", str, "linearizable")
    if consistency not in CONSISTENCIES:
        raise BadRequest(f"consistency must be one of {CONSISTENCIES}, got {consistency!r}")
    return consistency  # type: ignore[no-any-return]


def checked_shard(body: dict[str, Any], shards: int) -> int:
    shard = field(body, "shard", int)
    if not 0 <= shard < shards:
        raise WrongShard(f"shard {shard} does not exist (shards: {shards})")
    return shard  # type: ignore[no-any-return]


def encode_kv(kv: KeyValue | None) -> list[Any] | None:
    if kv is None:
        return None
    return [kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease]


def encode_result(result: Any) -> Any:
    if isinstance(result, KeyValue):
        return encode_kv(result)
    return result


def error_body(request_id: int, error: RequestError) -> dict[str, Any]:
    body: dict[str, Any] = {"id": request_id, "err": error.code, "msg": str(error)}
    leader = getattr(error, "leader", None)
    if leader:
        body["leader"] = leader
    if error.version:
        body["version"] = error.version
    return body
