"""WAL records: framing, msgpack bodies, and a scanner that finds where valid data ends.

Framing is separate from meaning so that replay can first decide which bytes are
trustworthy (magic, length, CRC) and only then interpret them. Every header starts
with a two-byte magic so that, after a bad record, a scan can look for later valid
records with `bytes.find` instead of trying every offset: that search is what tells
a torn tail (nothing valid follows) from corruption (valid records follow).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from itertools import pairwise
from typing import Any

import msgpack

from ringlock.raft.messages import Entry, EntryKind, HardState
from ringlock.storage.errors import StorageError

MAGIC = 0x524C
"""b"RL": first two bytes of every record header."""
_MAGIC_BYTES = MAGIC.to_bytes(2, "big")
_PREFIX = struct.Struct(">HBI")
"""magic, record type, body length: the part of the header the CRC also covers."""
_CRC = struct.Struct(">I")
HEADER_SIZE = _PREFIX.size + _CRC.size

MAX_RECORD_BYTES = 64 * 1024 * 1024
"""Largest record body accepted on write and on replay. A bigger length read from disk
is damage, not data, so replay never allocates past it."""
CHECKPOINT_GROUPS_PER_RECORD = 4096
"""A checkpoint is split into records of this many groups so it stays far below
MAX_RECORD_BYTES however many groups a node hosts."""


class RecordType(IntEnum):
    CHECKPOINT = 1
    ENTRIES = 2
    HARD_STATE = 3
    SNAPSHOT = 4
    DROP = 5


_TYPES = {int(t): t for t in RecordType}
_KINDS = {int(k): k for k in EntryKind}


class RecordTooLarge(StorageError):
    """One record would exceed MAX_RECORD_BYTES."""


class MalformedRecord(ValueError):
    """A record passed its checksum but its body is not what its type promises."""


# -- encoding --------------------------------------------------------------------------


def _frame(rtype: RecordType, body_obj: object) -> bytes:
    try:
        body: bytes = msgpack.packb(body_obj, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as error:
        raise StorageError(f"cannot encode a {rtype.name} record: {error}") from error
    if len(body) > MAX_RECORD_BYTES:
        raise RecordTooLarge(
            f"{rtype.name} record of {len(body)} bytes exceeds MAX_RECORD_BYTES={MAX_RECORD_BYTES}"
        )
    prefix = _PREFIX.pack(MAGIC, rtype, len(body))
    return prefix + _CRC.pack(zlib.crc32(body, zlib.crc32(prefix))) + body


def encode_entries(group: int, entries: Sequence[Entry]) -> bytes:
    """One record normally; halves are retried only when a batch is over the record limit."""
    rows = [[e.index, e.term, int(e.kind), e.data] for e in entries]
    try:
        return _frame(RecordType.ENTRIES, [group, rows])
    except RecordTooLarge:
        if len(entries) == 1:
            raise
        half = len(entries) // 2
        return encode_entries(group, entries[:half]) + encode_entries(group, entries[half:])


def encode_hard_state(group: int, hard_state: HardState) -> bytes:
    return _frame(
        RecordType.HARD_STATE, [group, hard_state.term, hard_state.vote, hard_state.commit]
    )


def encode_snapshot_marker(group: int, index: int, term: int, keep_tail: bool) -> bytes:
    return _frame(RecordType.SNAPSHOT, [group, index, term, keep_tail])


def encode_drop(group: int) -> bytes:
    return _frame(RecordType.DROP, [group])


@dataclass(frozen=True, slots=True)
class CheckpointItem:
    group: int
    hard_state: HardState | None
    snapshot: tuple[int, int] | None
    """(index, term) of the group's durable snapshot marker."""


def encode_checkpoint(base_seq: int, items: Sequence[CheckpointItem]) -> bytes:
    """At least one record even with no groups, so every segment starts with one."""
    out = bytearray()
    step = CHECKPOINT_GROUPS_PER_RECORD
    for start in range(0, max(len(items), 1), step):
        rows = [_checkpoint_row(item) for item in items[start : start + step]]
        out += _frame(RecordType.CHECKPOINT, [base_seq, rows])
    return bytes(out)


def _checkpoint_row(item: CheckpointItem) -> list[Any]:
    hs = item.hard_state
    return [
        item.group,
        None if hs is None else [hs.term, hs.vote, hs.commit],
        None if item.snapshot is None else list(item.snapshot),
    ]


# -- framing on read -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RawRecord:
    offset: int
    end: int
    type: RecordType
    body: memoryview


def read_record(data: bytes, offset: int) -> RawRecord | str:
    """The record at `offset`, or why there is no valid record there."""
    body_start = offset + HEADER_SIZE
    if body_start > len(data):
        return "record header runs past the end of the file"
    magic, rtype, length = _PREFIX.unpack_from(data, offset)
    if magic != MAGIC:
        return "bad record magic"
    if length > MAX_RECORD_BYTES:
        return f"record length {length} exceeds MAX_RECORD_BYTES={MAX_RECORD_BYTES}"
    end = body_start + length
    if end > len(data):
        return "record runs past the end of the file"
    view = memoryview(data)
    (crc,) = _CRC.unpack_from(data, offset + _PREFIX.size)
    if zlib.crc32(view[body_start:end], zlib.crc32(view[offset : offset + _PREFIX.size])) != crc:
        return "checksum mismatch"
    if rtype not in _TYPES:
        return f"unknown record type {rtype}"
    return RawRecord(offset, end, _TYPES[rtype], view[body_start:end])


def scan(data: bytes) -> tuple[list[RawRecord], tuple[int, str] | None]:
    """Valid records from the start, and (offset, reason) of the first bad one if any."""
    records: list[RawRecord] = []
    offset = 0
    while offset < len(data):
        record = read_record(data, offset)
        if isinstance(record, str):
            return records, (offset, record)
        records.append(record)
        offset = record.end
    return records, None


def valid_record_after(data: bytes, start: int) -> int | None:
    """Offset of the first valid record at or after `start`, if any."""
    position = data.find(_MAGIC_BYTES, start)
    while position != -1:
        if not isinstance(read_record(data, position), str):
            return position
        position = data.find(_MAGIC_BYTES, position + 1)
    return None


# -- decoding --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EntriesRecord:
    group: int
    entries: list[Entry]


@dataclass(frozen=True, slots=True)
class HardStateRecord:
    group: int
    hard_state: HardState


@dataclass(frozen=True, slots=True)
class SnapshotRecord:
    group: int
    index: int
    term: int
    keep_tail: bool
    """Whether the entries after `index` survive: decided when the marker was written,
    so replay never needs an entry that a released segment held."""


@dataclass(frozen=True, slots=True)
class DropRecord:
    group: int
    """Everything stored for the group before this record is gone: its replica left
    this node. Records after it start the group afresh."""


@dataclass(frozen=True, slots=True)
class CheckpointRecord:
    base_seq: int
    """Oldest segment still needed when this checkpoint was written; anything older is
    left over from a deletion a crash interrupted."""
    items: list[CheckpointItem]


Decoded = EntriesRecord | HardStateRecord | SnapshotRecord | DropRecord | CheckpointRecord


def decode(record: RawRecord) -> Decoded:
    """Raises MalformedRecord when the body does not have its type's shape."""
    try:
        body = msgpack.unpackb(record.body, raw=False, use_list=True)
    except (ValueError, TypeError, msgpack.UnpackException) as error:
        raise MalformedRecord(f"undecodable {record.type.name} body: {error}") from error
    return _DECODERS[record.type](body)


def _uint(value: Any, what: str) -> int:
    if type(value) is not int or value < 0:
        raise MalformedRecord(f"{what} is not a non-negative integer: {value!r}")
    return value


def _fields(value: Any, count: int, what: str) -> list[Any]:
    if not isinstance(value, list) or len(value) != count:
        raise MalformedRecord(f"{what} is not an array of {count}")
    return value


def _rows(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise MalformedRecord(f"{what} is not an array")
    return value


def _hard_state(fields: list[Any]) -> HardState:
    term, vote, commit = fields
    return HardState(_uint(term, "term"), _uint(vote, "vote"), _uint(commit, "commit"))


def _decode_entries(body: Any) -> EntriesRecord:
    group, rows = _fields(body, 2, "ENTRIES body")
    entries = [_entry(row) for row in _rows(rows, "entries")]
    for before, after in pairwise(entries):
        if after.index != before.index + 1:
            raise MalformedRecord(f"entries not consecutive: {after.index} after {before.index}")
    return EntriesRecord(_uint(group, "group"), entries)


def _entry(row: Any) -> Entry:
    index, term, kind, data = _fields(row, 4, "entry")
    if type(data) is not bytes:
        raise MalformedRecord("entry data is not bytes")
    entry_kind = _KINDS.get(kind) if type(kind) is int else None
    if entry_kind is None:
        raise MalformedRecord(f"unknown entry kind {kind!r}")
    if _uint(index, "entry index") == 0:
        raise MalformedRecord("entry index 0")
    return Entry(index=index, term=_uint(term, "entry term"), data=data, kind=entry_kind)


def _decode_hard_state(body: Any) -> HardStateRecord:
    fields = _fields(body, 4, "HARD_STATE body")
    return HardStateRecord(_uint(fields[0], "group"), _hard_state(fields[1:]))


def _decode_snapshot(body: Any) -> SnapshotRecord:
    group, index, term, keep_tail = _fields(body, 4, "SNAPSHOT body")
    if type(keep_tail) is not bool:
        raise MalformedRecord("keep_tail is not a boolean")
    return SnapshotRecord(
        _uint(group, "group"), _uint(index, "index"), _uint(term, "term"), keep_tail
    )


def _decode_drop(body: Any) -> DropRecord:
    (group,) = _fields(body, 1, "DROP body")
    return DropRecord(_uint(group, "group"))


def _decode_checkpoint(body: Any) -> CheckpointRecord:
    base_seq, rows = _fields(body, 2, "CHECKPOINT body")
    return CheckpointRecord(_uint(base_seq, "base_seq"), [_item(r) for r in _rows(rows, "groups")])


def _item(row: Any) -> CheckpointItem:
    group, hs, snap = _fields(row, 3, "checkpoint group")
    hard_state = None if hs is None else _hard_state(_fields(hs, 3, "hard state"))
    marker = None
    if snap is not None:
        index, term = _fields(snap, 2, "snapshot marker")
        marker = (_uint(index, "snapshot index"), _uint(term, "snapshot term"))
    return CheckpointItem(_uint(group, "group"), hard_state, marker)


_DECODERS: dict[RecordType, Callable[[Any], Decoded]] = {
    RecordType.CHECKPOINT: _decode_checkpoint,
    RecordType.ENTRIES: _decode_entries,
    RecordType.HARD_STATE: _decode_hard_state,
    RecordType.SNAPSHOT: _decode_snapshot,
    RecordType.DROP: _decode_drop,
}
