"""Snapshot files: one per saved snapshot, each written whole or not at all.

A snapshot can be far larger than any WAL record, so it lives in its own file and the
WAL only carries a small marker naming (group, index, term). Files are written to a
temporary name, fsynced, renamed into place and the directory fsynced, so after a
crash a name either points to a complete file or does not exist; a leftover temporary
file is a write the crash interrupted and is deleted at open.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import zlib
from pathlib import Path
from typing import Any

import msgpack

from ringlock.files import fsync_path, write_all
from ringlock.raft.messages import Configuration, Snapshot, SnapshotMeta
from ringlock.storage.errors import StorageCorruption, StorageError

SNAPSHOT_MAGIC = b"RLSNAP01"
_HEADER = struct.Struct(">8sQI")
"""magic, body length, CRC32 of the body."""
MAX_SNAPSHOT_BYTES = 2 * 1024 * 1024 * 1024
"""Largest snapshot body written or read: a length beyond it read from disk is damage."""
KEEP_SNAPSHOTS = 2
"""Files kept per group. The newest may have no durable WAL marker yet (a crash between
the file and the next sync); the one before it is what the durable marker names."""
_NAME = re.compile(r"^g(\d+)-(\d+)\.snap$")
_TEMP_SUFFIX = ".tmp"

log = logging.getLogger("ringlock.storage")


class SnapshotFiles:
    """The snapshot directory of one node; only the event-loop thread touches it, except
    `delete`, which the sync thread calls for files `forget` has already disowned."""

    def __init__(self, directory: Path, *, fsync: bool, keep: int = KEEP_SNAPSHOTS) -> None:
        self._dir = directory
        self._fsync = fsync
        self._keep = keep
        self._indexes: dict[int, list[int]] = {}
        self._scan()

    def _scan(self) -> None:
        for path in self._dir.iterdir():
            if path.name.endswith(_TEMP_SUFFIX):
                log.info("deleting %s: a snapshot write interrupted by a crash", path)
                path.unlink()
                continue
            match = _NAME.match(path.name)
            if match is not None:
                self._indexes.setdefault(int(match[1]), []).append(int(match[2]))
        for indexes in self._indexes.values():
            indexes.sort()

    def path(self, group: int, index: int) -> Path:
        return self._dir / f"g{group:05d}-{index:020d}.snap"

    def groups(self) -> set[int]:
        return set(self._indexes)

    def newest(self, group: int) -> int | None:
        indexes = self._indexes.get(group)
        return indexes[-1] if indexes else None

    def indexes(self, group: int) -> list[int]:
        return list(self._indexes.get(group, ()))

    def forget(self, group: int) -> list[int]:
        """Disown the group's files without deleting them (its drop is not durable yet):
        `newest` and pruning no longer see them, and `delete` removes them later."""
        return self._indexes.pop(group, [])

    def delete(self, group: int, indexes: list[int]) -> None:
        """Remove files that `forget` returned, durably. Touches only the disk, so the
        sync thread may call it; the caller guarantees no new file of the group is
        written meanwhile (one could reuse an index in the list)."""
        for index in indexes:
            self.path(group, index).unlink(missing_ok=True)
        if indexes and self._fsync:
            fsync_path(self._dir)

    def write(self, group: int, snapshot: Snapshot) -> None:
        """Atomically publish the file, then prune older ones (see KEEP_SNAPSHOTS)."""
        meta = snapshot.meta
        final = self.path(group, meta.index)
        data = _encode(group, snapshot)
        temp = final.with_name(final.name + _TEMP_SUFFIX)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            write_all(fd, data)
            if self._fsync:
                os.fsync(fd)
        except OSError:
            # A full disk, typically: give back what the half-written file took.
            temp.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        os.replace(temp, final)
        if self._fsync:
            fsync_path(self._dir)
        indexes = self._indexes.setdefault(group, [])
        if meta.index not in indexes:
            indexes.append(meta.index)
            indexes.sort()
        self._prune(group)

    def _prune(self, group: int) -> None:
        indexes = self._indexes[group]
        while len(indexes) > self._keep:
            self.path(group, indexes.pop(0)).unlink(missing_ok=True)

    def read(self, group: int, index: int) -> Snapshot:
        """The validated snapshot, or StorageCorruption naming the file."""
        path = self.path(group, index)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise _corrupt(path, 0, "missing, though the WAL names this snapshot") from None
        body = _checked_body(path, raw)
        snapshot, stored_group = _decode(path, body)
        if stored_group != group or snapshot.meta.index != index:
            raise _corrupt(path, _HEADER.size, "contents belong to another snapshot")
        return snapshot


def _encode(group: int, snapshot: Snapshot) -> bytes:
    meta = snapshot.meta
    body: bytes = msgpack.packb(
        {
            "group": group,
            "index": meta.index,
            "term": meta.term,
            "voters": sorted(meta.configuration.voters),
            "learners": sorted(meta.configuration.learners),
            "data": snapshot.data,
        },
        use_bin_type=True,
    )
    if len(body) > MAX_SNAPSHOT_BYTES:
        raise StorageError(
            f"snapshot of {len(body)} bytes exceeds MAX_SNAPSHOT_BYTES={MAX_SNAPSHOT_BYTES}"
        )
    return _HEADER.pack(SNAPSHOT_MAGIC, len(body), zlib.crc32(body)) + body


def _checked_body(path: Path, raw: bytes) -> memoryview:
    if len(raw) < _HEADER.size:
        raise _corrupt(path, 0, "shorter than its header")
    magic, length, crc = _HEADER.unpack_from(raw)
    if magic != SNAPSHOT_MAGIC:
        raise _corrupt(path, 0, "bad magic")
    if length > MAX_SNAPSHOT_BYTES or length != len(raw) - _HEADER.size:
        raise _corrupt(path, 0, f"header says {length} body bytes, file has {len(raw)}")
    body = memoryview(raw)[_HEADER.size :]
    if zlib.crc32(body) != crc:
        raise _corrupt(path, _HEADER.size, "checksum mismatch")
    return body


def _decode(path: Path, body: memoryview) -> tuple[Snapshot, int]:
    try:
        fields: Any = msgpack.unpackb(body, raw=False)
        members = [fields[key] for key in ("group", "index", "term", "voters", "learners")]
        data = fields["data"]
        if not all(type(v) is int for v in members[:3]) or type(data) is not bytes:
            raise TypeError("wrong field types")
        configuration = Configuration(
            voters=frozenset(_ints(members[3])), learners=frozenset(_ints(members[4]))
        )
    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as error:
        raise _corrupt(path, _HEADER.size, f"malformed body: {error}") from error
    meta = SnapshotMeta(index=members[1], term=members[2], configuration=configuration)
    return Snapshot(meta=meta, data=data), members[0]


def _ints(value: Any) -> list[int]:
    if not isinstance(value, list) or not all(type(v) is int for v in value):
        raise TypeError("member ids are not integers")
    return value


def _corrupt(path: Path, offset: int, reason: str) -> StorageCorruption:
    return StorageCorruption(str(path), offset, reason, what="snapshot file")
