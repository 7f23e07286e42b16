"""Open-time replay of the WAL: which segments count, which bytes are valid, what they say.

The rules that make a damaged WAL either safe to open or refused:

* Only a torn write at the very end of the newest segment is forgiven. Every earlier
  batch was fsynced before the next one was written, so a bad record with a valid
  record anywhere after it, or a bad record in an older segment, cannot be a crash:
  it is damage, and replaying around it could forget acknowledged entries or votes.
* Segments older than the newest checkpoint's `base_seq` were released; finding one
  means a crash interrupted their deletion, so they are deleted again unread.
  A missing segment at or after `base_seq` is damage.
* A DROP record forgets its group: state, and the group's share of every segment's
  `max_index` replayed so far, so the dropped log never holds a segment back. Records
  after it rebuild the group from nothing.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

from ringlock.files import fsync_path
from ringlock.raft.messages import Entry, HardState
from ringlock.storage import records
from ringlock.storage.errors import StorageCorruption
from ringlock.storage.records import (
    CheckpointRecord,
    Decoded,
    DropRecord,
    EntriesRecord,
    HardStateRecord,
    RawRecord,
    RecordType,
    SnapshotRecord,
)

log = logging.getLogger("ringlock.storage")
_SEGMENT_NAME = re.compile(r"^(\d{16})\.wal$")


def segment_path(wal_dir: Path, seq: int) -> Path:
    return wal_dir / f"{seq:016d}.wal"


@dataclass(slots=True)
class Segment:
    """What deciding a segment's deletion needs, without reading it again."""

    seq: int
    path: Path
    size: int
    max_index: dict[int, int] = field(default_factory=dict)
    """Per group, the highest entry index any ENTRIES record in this segment carries."""


class LogGap(ValueError):
    """Entries would leave a gap, or a marker disagrees with the log it was written over."""


class GroupLog:
    """One group's log as the WAL describes it, rebuilt record by record.

    `entries` are consecutive from `entries[0].index`. Replay that starts at a later
    segment (older ones released) may see entries begin after a hole: the hole held
    entries at or below a snapshot marker still to come, which removes it. `hole()`
    says whether one is left at the end.
    """

    __slots__ = ("entries", "hard_state", "snapshot")

    def __init__(self) -> None:
        self.hard_state: HardState | None = None
        self.snapshot: tuple[int, int] | None = None
        self.entries: list[Entry] = []

    def base(self) -> int:
        return self.snapshot[0] if self.snapshot else 0

    def last_index(self) -> int:
        return self.entries[-1].index if self.entries else self.base()

    def hole(self) -> bool:
        return bool(self.entries) and self.entries[0].index != self.base() + 1

    def term_at(self, index: int) -> int | None:
        if self.snapshot is not None and index == self.snapshot[0]:
            return self.snapshot[1]
        if self.entries and self.entries[0].index <= index <= self.entries[-1].index:
            return self.entries[index - self.entries[0].index].term
        return None

    def append(self, entries: list[Entry]) -> None:
        """Entries replace stored ones at the same or higher index; the snapshot already
        covers any at or below its index."""
        base = self.base()
        if entries and entries[0].index <= base:
            entries = [e for e in entries if e.index > base]
        if not entries:
            return
        first = entries[0].index
        if not self.entries or first <= self.entries[0].index:
            self.entries = list(entries)
            return
        if first > self.last_index() + 1:
            raise LogGap(f"entries start at {first} but the log ends at {self.last_index()}")
        del self.entries[first - self.entries[0].index :]
        self.entries.extend(entries)

    def install(self, index: int, term: int, keep_tail: bool) -> None:
        """Apply a snapshot marker. A marker older than the current snapshot is stale.
        Where this log still holds the entry at `index`, the written decision must agree
        with the rule it was computed by (keep the tail iff that entry has the term)."""
        if self.snapshot and index < self.snapshot[0]:
            return
        known = self.term_at(index)
        if known is not None and (known == term) != keep_tail:
            raise LogGap(f"snapshot marker ({index}, term {term}) disagrees with the log")
        if not keep_tail:
            self.entries = []
        elif self.entries and self.entries[0].index <= index:
            del self.entries[: index - self.entries[0].index + 1]
        self.snapshot = (index, term)


@dataclass(slots=True)
class WalState:
    groups: dict[int, GroupLog]
    segments: list[Segment]
    torn_bytes: int
    dropped: set[int] = field(default_factory=set)
    """Groups with a DROP record that no snapshot marker follows. Their snapshot files on
    disk are all leftovers: of the dropped replica (the sync that made the drop durable
    crashed before deleting them), or of a new one whose marker never became durable."""


def replay_wal(wal_dir: Path, *, fsync: bool) -> WalState:
    found = _list_segments(wal_dir)
    found = _without_released(found)
    _check_contiguous(found)
    state = WalState(groups={}, segments=[], torn_bytes=0)
    for position, (seq, path) in enumerate(found):
        data = path.read_bytes()
        is_last = position == len(found) - 1
        valid, end = _valid_records(path, data, is_last=is_last, fsync=fsync)
        if data.count(0, end) != len(data) - end:  # zeros are preallocation, not a torn write
            state.torn_bytes += len(data) - end
        segment = Segment(seq, path, end)
        _apply_segment(segment, valid, state)
        state.segments.append(segment)
    state.dropped = {g for g in state.dropped if state.groups.get(g, GroupLog()).snapshot is None}
    return state


def _list_segments(wal_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for path in wal_dir.iterdir():
        match = _SEGMENT_NAME.match(path.name)
        if match is not None:
            found.append((int(match[1]), path))
    return sorted(found)


def _without_released(found: list[tuple[int, Path]]) -> list[tuple[int, Path]]:
    base = max((_base_seq(path) for _, path in found), default=0)
    kept = []
    for seq, path in found:
        if seq < base:
            log.info("deleting %s: released before a crash interrupted its deletion", path)
            path.unlink()
        else:
            kept.append((seq, path))
    if base and (not kept or kept[0][0] != base):
        missing = segment_path(found[0][1].parent, base)
        raise StorageCorruption(str(missing), 0, "segment is missing; a checkpoint needs it")
    return kept


def _base_seq(path: Path) -> int:
    """base_seq of the segment's opening checkpoint; 0 when it has none readable (that
    case is judged later, by the full scan, unless the segment turns out released)."""
    with path.open("rb") as file:
        head = file.read(records.HEADER_SIZE)
        if len(head) < records.HEADER_SIZE:
            return 0
        length = int.from_bytes(head[3:7], "big")
        data = head + file.read(min(length, records.MAX_RECORD_BYTES))
    record = records.read_record(data, 0)
    if isinstance(record, str) or record.type is not RecordType.CHECKPOINT:
        return 0
    try:
        decoded = records.decode(record)
    except records.MalformedRecord:
        return 0
    return decoded.base_seq if isinstance(decoded, CheckpointRecord) else 0


def _check_contiguous(found: list[tuple[int, Path]]) -> None:
    for (before, _), (seq, path) in pairwise(found):
        if seq != before + 1:
            missing = segment_path(path.parent, before + 1)
            raise StorageCorruption(str(missing), 0, f"segment is missing before {path.name}")


def _valid_records(
    path: Path, data: bytes, *, is_last: bool, fsync: bool
) -> tuple[list[RawRecord], int]:
    """The segment's valid records and where they end; cuts a torn tail off the file."""
    valid, bad = records.scan(data)
    if bad is None:
        return valid, len(data)
    offset, reason = bad
    if is_last and data.count(0, offset) == len(data) - offset:
        # The zeros the writer preallocated past its last record: nothing was torn.
        os.truncate(path, offset)
        if fsync:
            fsync_path(path)
        return valid, offset
    if not is_last:
        raise StorageCorruption(str(path), offset, f"{reason} in a segment that was complete")
    later = records.valid_record_after(data, offset + 1)
    if later is not None:
        raise StorageCorruption(str(path), offset, f"{reason}, with a valid record at {later}")
    _cut_torn_tail(path, offset, len(data), reason, fsync=fsync)
    return valid, offset


def _cut_torn_tail(path: Path, offset: int, size: int, reason: str, *, fsync: bool) -> None:
    log.warning(
        "torn write at the end of %s: cutting %d bytes at offset %d (%s); "
        "they were never acknowledged",
        path, size - offset, offset, reason,
    )
    os.truncate(path, offset)
    if fsync:
        fsync_path(path)


def _apply_segment(segment: Segment, valid: list[RawRecord], state: WalState) -> None:
    """`state.segments` holds the segments before this one."""
    path = str(segment.path)
    if valid and valid[0].type is not RecordType.CHECKPOINT:
        raise StorageCorruption(path, 0, "segment does not start with a checkpoint")
    for raw in valid:
        try:
            _apply(records.decode(raw), segment, state)
        except records.MalformedRecord as error:
            raise StorageCorruption(path, raw.offset, f"malformed record: {error}") from error
        except LogGap as error:
            raise StorageCorruption(path, raw.offset, f"inconsistent log: {error}") from error


def _apply(record: Decoded, segment: Segment, state: WalState) -> None:
    groups = state.groups
    if isinstance(record, EntriesRecord):
        groups.setdefault(record.group, GroupLog()).append(record.entries)
        if record.entries:
            top = max(segment.max_index.get(record.group, 0), record.entries[-1].index)
            segment.max_index[record.group] = top
    elif isinstance(record, HardStateRecord):
        groups.setdefault(record.group, GroupLog()).hard_state = record.hard_state
    elif isinstance(record, SnapshotRecord):
        group = groups.setdefault(record.group, GroupLog())
        group.install(record.index, record.term, record.keep_tail)
    elif isinstance(record, DropRecord):
        groups.pop(record.group, None)  # a group never seen: nothing to forget
        for earlier in (*state.segments, segment):
            earlier.max_index.pop(record.group, None)
        state.dropped.add(record.group)
    else:
        _apply_checkpoint(record, groups)


def _apply_checkpoint(record: CheckpointRecord, groups: dict[int, GroupLog]) -> None:
    """A checkpoint repeats the durable snapshot: re-installing it keeps the tail, and
    on a replay that starts here it only sets the snapshot."""
    for item in record.items:
        group = groups.setdefault(item.group, GroupLog())
        if item.hard_state is not None:
            group.hard_state = item.hard_state
        if item.snapshot is not None:
            group.install(*item.snapshot, keep_tail=True)
