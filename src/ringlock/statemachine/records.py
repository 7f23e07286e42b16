"""How a shard stores one key: its create revision, mod revision, version and lease
packed in front of its value, as one bytes object.

Why one object: a million keys then cost one `bytes` each, not a tuple, four ints and a
value (about 100 MB less, docs/PERFORMANCE.md). Why a module of its own: the watch
history (history.py) keeps a put as the very record the shard stored, so a change whose
key was not written again costs a reference rather than a copy of its value, and it must
read the record the way the shard wrote it.

Deterministic and free of I/O, as the rest of the state machine.
"""

from __future__ import annotations

import struct

META = struct.Struct(">QQQQ")
"""create revision, mod revision, version, lease: stored in front of the value."""


def pack(create: int, mod: int, version: int, lease: int, value: bytes) -> bytes:
    return META.pack(create, mod, version, lease) + value


def value_of(record: bytes) -> bytes:
    return record[META.size:]
