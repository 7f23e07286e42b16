"""NodeStorage: the one WAL and snapshot directory that every Raft group on a node shares.

Threading: the event-loop thread calls append, save_snapshot, compact, drop and pending;
one worker thread may run sync() meanwhile (never two syncs at once). `_lock` guards
only the batch being filled and the writer-side bookkeeping, so the loop never waits
for a disk: sync swaps the batch out under the lock and does its I/O without it.
State named `_durable`, `_segments` and `_fd` belongs to whichever thread runs sync.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from ringlock.errors import ConfigError, InvariantViolation
from ringlock.files import fsync_path, write_all_at
from ringlock.invariant import invariant
from ringlock.raft.messages import Entry, HardState, Snapshot
from ringlock.storage import records
from ringlock.storage.errors import StorageCorruption, StorageError, describe_os_error
from ringlock.storage.records import CheckpointItem
from ringlock.storage.replay import GroupLog, Segment, WalState, replay_wal, segment_path
from ringlock.storage.shape import LogShape
from ringlock.storage.snapfiles import SnapshotFiles

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
PREALLOCATE_BYTES = 1024 * 1024
"""Zeros written ahead of the records at a time (see NodeStorage._preallocate)."""
"""A segment is closed once it reaches this size; only whole segments are ever deleted."""

log = logging.getLogger("ringlock.storage")


@dataclass
class GroupState:
    hard_state: HardState | None
    snapshot: Snapshot | None
    entries: list[Entry]
    """Entries after the snapshot (index snapshot.index+1 ...), contiguous."""


@dataclass(slots=True)
class StorageStats:
    syncs: int = 0
    """Syncs that wrote something (an empty sync is free and not counted)."""
    bytes_written: int = 0
    segments: int = 0
    """Segment files currently on disk."""
    segments_deleted: int = 0
    torn_bytes_cut: int = 0
    """Bytes of a torn tail cut off at open."""


@dataclass(slots=True)
class _Effect:
    """What a batch changes for one group, so sync can keep checkpoint state and
    segment bookkeeping without decoding its own bytes."""

    hard_state: HardState | None = None
    snapshot: tuple[int, int] | None = None
    max_index: int = 0


@dataclass(slots=True)
class _Batch:
    buf: bytearray = field(default_factory=bytearray)
    effects: dict[int, _Effect] = field(default_factory=dict)
    """Per group, what the records after its last DROP in this batch change."""
    drops: dict[int, list[int]] = field(default_factory=dict)
    """Groups dropped in this batch, each with the indexes of the snapshot files it had
    when dropped: sync deletes them once the DROP record is durable."""

    def effect(self, group: int) -> _Effect:
        effect = self.effects.get(group)
        if effect is None:
            effect = self.effects[group] = _Effect()
        return effect


@dataclass(slots=True)
class _Durable:
    """A group's hard state and snapshot marker as of the last completed sync: exactly
    what a new segment's checkpoint must repeat."""

    hard_state: HardState | None = None
    snapshot: tuple[int, int] | None = None


class NodeStorage:
    """Durable state for every Raft group on a node. See the package docstring."""

    def __init__(
        self,
        directory: str | Path,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        fsync: bool = True,
    ) -> None:
        if segment_bytes < 1:
            raise ConfigError(f"segment_bytes must be positive, got {segment_bytes}")
        self._segment_bytes = segment_bytes
        self._fsync = fsync
        self._wal_dir = Path(directory) / "wal"
        self._make_dirs(Path(directory))
        self._snapfiles = SnapshotFiles(self._snap_dir, fsync=fsync)
        wal = replay_wal(self._wal_dir, fsync=fsync)
        self._delete_dropped_leftovers(wal)
        # What the WAL holds; adopted snapshots join it only when their markers are synced.
        self._durable = {g: _Durable(s.hard_state, s.snapshot) for g, s in wal.groups.items()}
        adopted = self._adopt_newer_snapshot_files(wal.groups)
        self._loaded = {g: self._group_state(g, state) for g, state in wal.groups.items()}

        self._lock = threading.Lock()
        self._batch = _Batch()
        self._closed = False
        self._failed: BaseException | None = None
        self._groups = set(wal.groups)
        self._shapes = {g: LogShape(s.snapshot, s.entries) for g, s in wal.groups.items()}
        self._dropping: set[int] = set()
        """Groups dropped by a sync that has not yet returned (or not yet started)."""

        self.stats = StorageStats(torn_bytes_cut=wal.torn_bytes)
        self._segments: list[Segment] = []
        self._fd: int | None = None
        self._allocated = 0
        """Bytes of the current segment that exist on disk: records, then zeros."""
        self._resume_last_segment(wal)
        for group, index, term, keep_tail in adopted:
            self._buffer_marker(group, index, term, keep_tail)
        self.sync()

    @property
    def _snap_dir(self) -> Path:
        return self._wal_dir.parent / "snapshots"

    def _make_dirs(self, root: Path) -> None:
        for path in (root, self._wal_dir, self._snap_dir):
            if not path.is_dir():
                path.mkdir(parents=True, exist_ok=True)
                if self._fsync:
                    fsync_path(path.parent)

    def _delete_dropped_leftovers(self, wal: WalState) -> None:
        """Replay ended with these groups dropped, so every snapshot file of theirs is a
        leftover (see WalState.dropped); kept, it would be adopted below as the group's
        newest snapshot and bring the dropped replica back."""
        for group in sorted(wal.dropped):
            state = wal.groups.get(group)
            invariant(
                state is None or state.snapshot is None,
                f"group {group}: a snapshot marker follows its drop, yet its files are deleted",
            )
            indexes = self._snapfiles.forget(group)
            if indexes:
                log.info("deleting snapshot files %s of dropped group %d", indexes, group)
            self._snapfiles.delete(group, indexes)

    def _adopt_newer_snapshot_files(
        self, groups: dict[int, GroupLog]
    ) -> list[tuple[int, int, int, bool]]:
        """A snapshot file is durable before its WAL marker is, so a crash in between
        leaves a file newer than any marker. It holds committed state, so it is
        installed as if its marker were the last record, and the marker is written now:
        otherwise records appended after this open would replay before it next time."""
        adopted = []
        for group in sorted(set(groups) | self._snapfiles.groups()):
            log_ = groups.setdefault(group, GroupLog())
            newest = self._snapfiles.newest(group)
            marker = log_.snapshot
            if marker is not None and (newest is None or newest < marker[0]):
                path = self._snapfiles.path(group, marker[0])
                raise StorageCorruption(
                    str(path), 0, "missing, though the WAL names this snapshot",
                    what="snapshot file",
                )
            if newest is not None and (marker is None or newest > marker[0]):
                meta = self._snapfiles.read(group, newest).meta
                keep_tail = log_.term_at(meta.index) == meta.term
                log_.install(meta.index, meta.term, keep_tail)
                adopted.append((group, meta.index, meta.term, keep_tail))
        return adopted

    def _group_state(self, group: int, state: GroupLog) -> GroupState:
        snapshot = None
        if state.snapshot is not None:
            snapshot = self._snapfiles.read(group, state.snapshot[0])
            if snapshot.meta.term != state.snapshot[1]:
                path = str(self._snapfiles.path(group, state.snapshot[0]))
                reason = f"term {snapshot.meta.term}, but the WAL says {state.snapshot[1]}"
                raise StorageCorruption(path, 0, reason, what="snapshot file")
        base = state.base()
        if state.hole():
            reason = f"group {group}: entries start at {state.entries[0].index} after {base}"
            raise StorageCorruption(str(self._wal_dir), 0, f"log gap: {reason}")
        invariant(
            all(e.index == base + 1 + i for i, e in enumerate(state.entries)),
            f"group {group}: replayed entries are not consecutive after {base}",
        )
        return GroupState(state.hard_state, snapshot, list(state.entries))

    def _resume_last_segment(self, wal: WalState) -> None:
        """Keep appending to the newest segment; an empty one (its checkpoint was torn)
        is removed so the next sync starts that sequence number afresh with a checkpoint."""
        self._segments = wal.segments
        if self._segments and self._segments[-1].size == 0:
            self._segments.pop().path.unlink()
        self._next_seq = self._segments[-1].seq + 1 if self._segments else 1
        if self._segments:
            self._fd = os.open(self._segments[-1].path, os.O_WRONLY)
            self._allocated = self._segments[-1].size  # replay cut any zeros past it
        self.stats.segments = len(self._segments)

    # -- reading ---------------------------------------------------------------------------

    def groups(self) -> set[int]:
        """Groups with state on disk or buffered."""
        with self._lock:
            return set(self._groups)

    def load(self, group: int) -> GroupState:
        """The group's state as replayed at open, handed over once (the replica keeps it in
        memory; storage does not hold a second copy): a second call returns nothing."""
        state = self._loaded.pop(group, None)  # handed over once: the caller keeps it now
        if state is None:
            return GroupState(None, None, [])
        return GroupState(state.hard_state, state.snapshot, state.entries)

    def read_snapshot(self, group: int, index: int) -> Snapshot:
        """A snapshot saved earlier, read back from its file (to send it to a peer)."""
        return self._snapfiles.read(group, index)

    def pending(self) -> bool:
        with self._lock:
            return bool(self._batch.buf)

    # -- writing (event-loop thread) ---------------------------------------------------------

    def append(self, group: int, hard_state: HardState | None, entries: Sequence[Entry]) -> None:
        """Buffer records; durable only once a sync() that starts after this returns."""
        _check_group(group)
        payload = bytearray()
        if entries:
            _check_entries(entries)
            payload += records.encode_entries(group, entries)
        if hard_state is not None:
            if min(hard_state.term, hard_state.vote, hard_state.commit) < 0:
                raise StorageError(f"group {group}: negative field in {hard_state}")
            payload += records.encode_hard_state(group, hard_state)
        if not payload:
            return
        with self._lock:
            self._check_writable()
            effect = self._batch.effect(group)
            if entries:
                self._shape(group).append_checked(group, entries)
                effect.max_index = max(effect.max_index, entries[-1].index)
            if hard_state is not None:
                effect.hard_state = hard_state
            self._batch.buf += payload
            self._groups.add(group)

    def _shape(self, group: int) -> LogShape:
        shape = self._shapes.get(group)
        if shape is None:
            shape = self._shapes[group] = LogShape(None, ())
        return shape

    def save_snapshot(self, group: int, snapshot: Snapshot) -> None:
        """Write the file now (atomically); its WAL marker is buffered, so the stored log
        is replaced by the snapshot only once the next sync() returns."""
        _check_group(group)
        index, term = snapshot.meta.index, snapshot.meta.term
        with self._lock:
            self._check_writable()
            if group in self._dropping:
                raise StorageError(
                    f"group {group}: dropped, and the drop is not durable yet; "
                    "sync() before saving a snapshot of a new replica"
                )
            self._check_snapshot_order(group, index, term)
        try:
            self._snapfiles.write(group, snapshot)
        except OSError as error:
            message = (f"cannot write snapshot {index} of group {group}: "
                       f"{describe_os_error(error)}")
            raise StorageError(message) from error
        self._buffer_marker(group, index, term, None)

    def _check_snapshot_order(self, group: int, index: int, term: int) -> None:
        if index < 1:
            raise StorageError(f"group {group}: snapshot index must be positive, got {index}")
        current = self._shape(group).snapshot
        if current is None:
            return
        if index < current[0] or (index == current[0] and term != current[1]):
            raise StorageError(
                f"group {group}: snapshot ({index}, term {term}) would go back from "
                f"({current[0]}, term {current[1]})"
            )

    def _buffer_marker(self, group: int, index: int, term: int, keep_tail: bool | None) -> None:
        """keep_tail None: decide it from the log as buffered so far, in the same critical
        section that fixes the marker's place in the WAL."""
        with self._lock:
            self._check_writable()
            if keep_tail is None:
                keep_tail = self._shape(group).install(index, term)
            self._batch.buf += records.encode_snapshot_marker(group, index, term, keep_tail)
            self._batch.effect(group).snapshot = (index, term)
            self._groups.add(group)

    def compact(self, group: int, index: int) -> None:
        """Hint that the group needs no entry <= index. Only checked: segments are released
        from durable snapshot markers, the one floor a replay can prove (entries at or
        below a marker are dropped by it), so no call is needed to reclaim space. An
        index past the group's snapshot means the caller would lose entries it still
        needs, so it is refused."""
        with self._lock:
            self._check_writable()
            current = self._shape(group).snapshot
            if current is None or index > current[0]:
                covered = current[0] if current else 0
                raise StorageError(
                    f"group {group}: cannot compact to {index}, its snapshot covers {covered}"
                )

    def drop(self, group: int) -> None:
        """Forget everything stored for the group: its replica was removed from the group
        (the shard moved to another node), and what it left here would otherwise be
        replayed at every start and pin the WAL segments holding its entries forever.

        Buffered like append: once a sync() that starts after this returns, the group is
        gone from the WAL and its snapshot files are deleted; a crash before that keeps
        it whole. At once, the group leaves `groups()`, an unclaimed `load()` of it, and
        the log picture the gap checks use: records after the drop build the group
        afresh (a new replica: its log is empty, so it starts with a snapshot or at 1).

        The new replica's first snapshot must wait until the drop is durable (refused
        until then): snapshot files are written before their marker, and one written
        now could be adopted into the old replica after a crash, or share an index with
        a file the drop deletes.
        """
        _check_group(group)
        record = records.encode_drop(group)
        with self._lock:
            self._check_writable()
            self._batch.buf += record
            self._batch.effects.pop(group, None)  # what the batch did to the old replica
            files = self._batch.drops.setdefault(group, [])
            files += self._snapfiles.forget(group)
            self._dropping.add(group)
            self._shapes.pop(group, None)
            self._groups.discard(group)
        self._loaded.pop(group, None)

    def _check_writable(self) -> None:
        if self._closed:
            raise StorageError("storage is closed")
        if self._failed is not None:
            raise StorageError(
                f"an earlier WAL write failed ({self._failed}); reopen the storage to recover"
            )

    # -- sync (one worker thread) ----------------------------------------------------------

    def sync(self) -> int:
        """Group commit: everything buffered before this call, in one write and one fsync.

        Returns the bytes written. A failed write or fsync leaves the file's contents
        unknown (a retried fsync may report success for lost pages), so the storage
        refuses further writes; reopening replays whatever did reach the disk.
        """
        with self._lock:
            self._check_writable()
            batch, self._batch = self._batch, _Batch()
        if not batch.buf:
            return 0
        try:
            return self._write(batch)
        except OSError as error:
            self._failed = error
            raise StorageError(f"WAL write failed: {describe_os_error(error)}") from error

    def _write(self, batch: _Batch) -> int:
        released: list[Segment] = []
        data: bytes | bytearray = batch.buf
        rolled = self._fd is None or self._segments[-1].size >= self._segment_bytes
        if rolled:
            checkpoint, released = self._roll()
            data = checkpoint + batch.buf
        fd = self._fd
        if fd is None:
            raise InvariantViolation("no open WAL segment after a roll")
        segment = self._segments[-1]
        end = segment.size + len(data)
        if end > self._allocated:
            self._preallocate(fd, end + PREALLOCATE_BYTES)
        write_all_at(fd, data, segment.size)
        if self._fsync:
            # The file's size and blocks were made durable with the preallocation, so
            # the data alone needs flushing: no journal commit per sync.
            os.fdatasync(fd)
            if rolled:
                fsync_path(self._wal_dir)
        segment.size = end
        self._absorb(batch, segment)
        self._delete_dropped_snapshots(batch)
        self._delete(released)
        self.stats.syncs += 1
        self.stats.bytes_written += len(data)
        return len(data)

    def _roll(self) -> tuple[bytes, list[Segment]]:
        """Open the next segment; its checkpoint lets replay start there, so the prefix of
        segments whose entries it covers can go once it is durable."""
        seq = self._next_seq
        segment = Segment(seq, segment_path(self._wal_dir, seq), 0)
        released = self._releasable()
        base = self._segments[len(released)].seq if len(released) < len(self._segments) else seq
        items = [CheckpointItem(g, d.hard_state, d.snapshot) for g, d in self._durable.items()]
        checkpoint = records.encode_checkpoint(base, items)
        if self._fd is not None:
            self._seal(self._fd, self._segments[-1].size)
            self._fd = None
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        self._fd = os.open(segment.path, flags, 0o644)
        self._allocated = 0
        self._segments.append(segment)
        self._next_seq = seq + 1
        self.stats.segments = len(self._segments)
        return checkpoint, released

    def _preallocate(self, fd: int, size: int) -> None:
        """Write zeros ahead of the records, so that the syncs that follow change no
        file metadata. Zeros, not fallocate: an unwritten extent would still need a
        metadata update when first written. Replay tells the zeros from a torn write."""
        if size > self._allocated:
            write_all_at(fd, bytes(size - self._allocated), self._allocated)
            if self._fsync:
                os.fsync(fd)
            self._allocated = size

    def _seal(self, fd: int, size: int) -> None:
        """A finished segment ends at its last record: replay forgives zeros only at the
        end of the newest segment."""
        os.ftruncate(fd, size)
        if self._fsync:
            os.fsync(fd)
        os.close(fd)

    def _releasable(self) -> list[Segment]:
        """The longest prefix of segments whose entries are all at or below their group's
        durable snapshot index. The new checkpoint repeats that snapshot, and markers
        carry their keep-the-tail decision, so a replay starting after the prefix reaches
        the same state: every entry it cannot see is dropped by a marker it does see."""
        count = 0
        for segment in self._segments:
            if not all(top <= self._snapshot_index(g) for g, top in segment.max_index.items()):
                break
            count += 1
        return self._segments[:count]

    def _snapshot_index(self, group: int) -> int:
        durable = self._durable.get(group)
        return durable.snapshot[0] if durable and durable.snapshot else 0

    def _absorb(self, batch: _Batch, segment: Segment) -> None:
        # Drops first: every effect in the batch is of records after its group's drop.
        for group in batch.drops:
            self._durable.pop(group, None)  # so no checkpoint names the dropped replica
            for held in self._segments:
                held.max_index.pop(group, None)  # its entries no longer pin a segment
        for group, effect in batch.effects.items():
            durable = self._durable.get(group)
            if durable is None:
                durable = self._durable[group] = _Durable()
            if effect.hard_state is not None:
                durable.hard_state = effect.hard_state
            if effect.snapshot is not None:
                durable.snapshot = effect.snapshot
            if effect.max_index:
                top = max(segment.max_index.get(group, 0), effect.max_index)
                segment.max_index[group] = top

    def _delete_dropped_snapshots(self, batch: _Batch) -> None:
        """The DROP records are durable now, so their groups' old snapshot files can go.
        Done before this sync returns: a later sync may release the segment holding a
        DROP, after which a surviving file would be adopted at open as a new group."""
        if not batch.drops:
            return
        with self._lock:
            invariant(
                all(group in self._dropping for group in batch.drops),
                "a dropped group was let save snapshots before its old files were deleted",
            )
        for group, indexes in batch.drops.items():
            self._snapfiles.delete(group, indexes)
        with self._lock:  # the new replica may save snapshots, unless dropped again since
            self._dropping -= batch.drops.keys() - self._batch.drops.keys()

    def _delete(self, released: list[Segment]) -> None:
        """Oldest first, so a crash midway leaves a contiguous suffix; anything it leaves
        behind is below the new checkpoint's base_seq and is deleted again at open."""
        for segment in released:
            segment.path.unlink(missing_ok=True)
            self._segments.remove(segment)
            self.stats.segments_deleted += 1
        self.stats.segments = len(self._segments)

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        """Sync what is buffered, then release the file. Idempotent; not to be called
        while another thread is inside sync()."""
        if self._closed:
            return
        try:
            if self._failed is None:
                self.sync()
        finally:
            self._release()

    def abandon(self) -> None:
        """Close without writing what is buffered: the disk is left as a crash would
        leave it. For tests, and for a caller that must persist nothing more."""
        self._release()

    def _release(self) -> None:
        with self._lock:
            self._closed = True
            self._batch = _Batch()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> NodeStorage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _check_group(group: int) -> None:
    if group < 0:
        raise StorageError(f"group ids are non-negative, got {group}")


def _check_entries(entries: Sequence[Entry]) -> None:
    """Refuse what replay would reject, so a caller's bug fails here and not at the next
    start. Cheap next to encoding: a few comparisons per entry."""
    expected = entries[0].index
    if expected < 1:
        raise StorageError(f"entry index must be positive, got {expected}")
    for entry in entries:
        if entry.index != expected or entry.term < 0 or not isinstance(entry.data, bytes):
            raise StorageError(
                "entries need consecutive indexes, non-negative terms and bytes data: "
                f"got ({entry.index}, term {entry.term}, {type(entry.data).__name__}) "
                f"where index {expected} was due"
            )
        expected += 1
