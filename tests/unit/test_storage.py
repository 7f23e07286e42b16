"""NodeStorage: the shared WAL and snapshot files survive reopen, crashes and damage as
the Ready contract requires. A "crash" is `abandon()` (buffered records dropped, files
closed) followed by opening a new NodeStorage on the same directory."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringlock.errors import ConfigError
from ringlock.raft.messages import (
    Configuration,
    Entry,
    EntryKind,
    HardState,
    Snapshot,
    SnapshotMeta,
)
from ringlock.storage import (
    DEFAULT_SEGMENT_BYTES,
    GroupState,
    NodeStorage,
    StorageCorruption,
    StorageError,
)
from ringlock.storage import records as records_module
from ringlock.storage.records import HEADER_SIZE

# -- helpers ---------------------------------------------------------------------------


def entries(first: int, last: int, term: int, tag: str = "") -> list[Entry]:
    return [
        Entry(index=i, term=term, data=f"{tag}{i}@{term}".encode())
        for i in range(first, last + 1)
    ]


def snapshot(index: int, term: int, data: bytes = b"state") -> Snapshot:
    configuration = Configuration(voters=frozenset({1, 2, 3}), learners=frozenset({4}))
    return Snapshot(SnapshotMeta(index=index, term=term, configuration=configuration), data)


def segments(directory: Path) -> list[Path]:
    return sorted((directory / "wal").glob("*.wal"))


def indexes(state: GroupState) -> list[tuple[int, int]]:
    return [(e.index, e.term) for e in state.entries]


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def opened() -> Iterator[list[NodeStorage]]:
    """Storages opened by a test; closed at the end so no file descriptor leaks."""
    made: list[NodeStorage] = []
    yield made
    for storage in made:
        storage.abandon()


def open_storage(
    opened: list[NodeStorage],
    directory: Path,
    *,
    segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    fsync: bool = True,
) -> NodeStorage:
    storage = NodeStorage(directory, segment_bytes=segment_bytes, fsync=fsync)
    opened.append(storage)
    return storage


# -- round trips -----------------------------------------------------------------------


def test_entries_and_hard_states_of_several_groups_survive_reopen(
    tmp_path: Path, opened: list[NodeStorage]
) -> None:
    storage = open_storage(opened, tmp_path)
    conf = Entry(index=4, term=2, data=Configuration(frozenset({1, 2})).encode(),
                 kind=EntryKind.CONF)
    storage.append(1, HardState(term=2, vote=1, commit=3), [*entries(1, 3, 1), conf])
    storage.append(7, HardState(term=5, vote=3, commit=0), entries(1, 2, 5, "g7-"))
    storage.append(1, HardState(term=2, vote=1, commit=4), [])
    storage.sync()
    storage.close()

    reopened = open_storage(opened, tmp_path)
    assert reopened.groups() == {1, 7}
    one = reopened.load(1)
    assert one.hard_state == HardState(term=2, vote=1, commit=4)
    assert one.snapshot is None
    assert one.entries == [*entries(1, 3, 1), conf]
    assert reopened.load(7) == GroupState(HardState(5, 3, 0), None, entries(1, 2, 5, "g7-"))
    assert reopened.load(99) == GroupState(None, None, [])


def test_overwrite_at_a_lower_index_truncates_the_conflicting_tail_across_reopen(
    tmp_path: Path, opened: list[NodeStorage]
) -> None:
    storage = open_storage(opened, tmp_path)
    storage.append(1, None, entries(1, 10, 1))
    storage.sync()
    storage.append(1, None, entries(6, 7, 2))
    storage.sync()
    storage.close()

    state = open_storage(opened, tmp_path).load(1)
    assert indexes(state) == [(i, 1) for i in range(1, 6)] + [(6, 2), (7, 2)]


def test_fsync_false_still_round_trips_after_clean_close(
    tmp_path: Path, opened: list[NodeStorage]
) -> None:
    storage = open_storage(opened, tmp_path, fsync=False)
    storage.append(3, HardState(1, 1, 1), entries(1, 5, 1))
    storage.save_snapshot(3, snapshot(2, 1))
    storage.close()  # close syncs what is buffered

    state = open_storage(opened, tmp_path, fsync=False).load(3)
    assert state.snapshot == snapshot(2, 1)
    assert indexes(state) == [(i, 1) for i in range(3, 6)]
    assert state.hard_state == HardState(1, 1, 1)


# -- crashes and group commit ----------------------------------------------------------


def test_nothing_appended_after_the_last_sync_survives_a_crash(
    tmp_path: Path, opened: list[NodeStorage]
) -> None:
    storage = open_storage(opened, tmp_path)
    storage.append(1, HardState(1, 1, 0), entries(1, 2, 1))
    storage.sync()
    size = segments(tmp_path)[0].stat().st_size
    storage.append(1, HardState(2, 2, 2), entries(3, 4, 2))
    assert storage.pending()
    assert segments(tmp_path)[0].stat().st_size == size  # buffered, never written
    storage.abandon()

    state = open_storage(opened, tmp_path).load(1)
    assert state.hard_state == HardState(1, 1, 0)
    assert indexes(state) == [(1, 1), (2, 1)]


def test_sync_writes_every_buffered_group_with_one_write_and_one_fsync(
    tmp_path: Path, opened: list[NodeStorage], monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = open_storage(opened, tmp_path)
    storage.append(1, HardState(1, 1, 0), entries(1, 1, 1))
    storage.sync()  # opens the first segment
    calls = {"write": 0, "fsync": 0}
    real_write, real_fsync = os.pwrite, os.fdatasync

    def counting_write(fd: int, data: bytes, offset: int) -> int:
        calls["write"] += 1
        return real_write(fd, data, offset)

    def counting_fsync(fd: int) -> None:
        calls["fsync"] += 1
        real_fsync(fd)

    # The segment is preallocated, so a sync is one positioned write and one fdatasync.
    monkeypatch.setattr(os, "pwrite", counting_write)
    monkeypatch.setattr(os, "fdatasync", counting_fsync)
    for group in range(1, 21):
        storage.append(group, HardState(1, 1, 0), entries(2 if group == 1 else 1, 3, 1))
    written = storage.sync()
    assert calls == {"write": 1, "fsync": 1}
    assert written > 0 and not storage.pending()
    assert storage.sync() == 0  # nothing buffered: no syscall at all
    assert calls == {"write": 1, "fsync": 1}


def test_an_append_during_a_sync_goes_into_the_next_batch(
    tmp_path: Path, opened: list[NodeStorage], monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = open_storage(opened, tmp_path)
    storage.append(1, None, entries(1, 1, 1))
    storage.sync()
    in_fsync, release = threading.Event(), threading.Event()
    real_fsync = os.fdatasync

    def held_fsync(fd: int) -> None:
        in_fsync.set()
        assert release.wait(10)
        real_fsync(fd)

    monkeypatch.setattr(os, "fdatasync", held_fsync)
    storage.append(1, None, entries(2, 2, 1))
    with ThreadPoolExecutor(max_workers=1) as pool:
        first_sync = pool.submit(storage.sync)
        assert in_fsync.wait(10)
        storage.append(1, None, entries(3, 3, 1))  # while the worker is inside fsync
        release.set()
        first = first_sync.result(timeout=10)
    assert storage.pending()
    second = storage.sync()
    # Each sync wrote one single-entry record of the same shape: the racing append went
    # whole into the second batch, none of it into the first.
    assert first == second > 0 and not storage.pending()
    storage.close()
    assert indexes(open_storage(opened, tmp_path).load(1)) == [(1, 1), (2, 1), (3, 1)]


def test_appends_racing_syncs_in_another_thread_are_never_lost(
    tmp_path: Path, opened: list[NodeStorage]
) -> None:
    storage = open_storage(opened, tmp_path, fsync=False, segment_bytes=4096)
    stop = threading.Event()
    failures: list[BaseException] = []

    def syncer() -> None:
        try:
            while not stop.is_set():
                storage.sync()
        except BaseException as error:  # surfaced by the assertion below
            failures.append(error)

    worker = threading.Thread(target=syncer)
    worker.start()
    for index in range(1, 1501):
        for group in (1, 2, 3):
            storage.append(group, HardState(1, group, index - 1), entries(index, index, 1))
    stop.set()
    worker.join(timeout=30)
    assert not worker.is_alive() and not failures
    storage.close()

    reopened = open_storage(opened, tmp_path)
    for group in (1, 2, 3):
        state = reopened.load(group)
        assert [e.index for e in state.entries] == list(range(1, 1501))
        assert state.hard_state == HardState(1, group, 1499)


def test_a_failed_fsync_makes_the_storage_refuse_further_writes(
    tmp_path: Path, opened: list[NodeStorage], monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = open_storage(opened, tmp_path)
    storage.append(1, None, entries(1, 1, 1))
    storage.sync()

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing_fsync)
    storage.append(1, None, entries(2, 2, 1))
    with pytest.raises(StorageError, match="WAL write failed"):
        storage.sync()
    with pytest.raises(StorageError, match="reopen"):
        storage.append(1, None, entries(3, 3, 1))
    monkeypatch.undo()
    storage.close()  # does not retry the failed batch
    # Entry 2 may or may not have reached the disk; what was acknowledged did.
    assert open_storage(opened, tmp_path).load(1).entries[0] == entries(1, 1, 1)[0]


# -- torn writes and corruption --------------------------------------------------------


def test_a_torn_tail_is_cut_so_earlier_records_survive_and_appending_works_again(
    tmp_path: Path, opened: list[NodeStorage], caplog: pytest.LogCaptureFixture
) -> None:
    storage = open_storage(opened, tmp_path)
    storage.append(1, HardState(1, 1, 0), entries(1, 3, 1))
    good = storage.sync()
    storage.append(1, HardState(2, 2, 3), entries(4, 6, 2))
    torn = storage.sync()
    storage.close()
    path = segments(tmp_path)[0]
    os.truncate(path, good + torn // 2)

    with caplog.at_level(logging.WARNING, logger="ringlock.storage"):
        reopened = open_storage(opened, tmp_path)
    assert "torn write" in caplog.text and str(path) in caplog.text
    state = reopened.load(1)
    assert state.hard_state == HardState(1, 1, 0)
    assert indexes(state) == [(1, 1), (2, 1), (3, 1)]
    assert path.stat().st_size == good
    assert reopened.stats.torn_bytes_cut == torn // 2

    reopened.append(1, None, entries(4, 4, 3))
    reopened.close()
    assert indexes(open_storage(opened, tmp_path).load(1))[-1] == (4, 3)


def test_a_zero_filled_tail_is_a_torn_write(tmp_path: Path, opened: list[NodeStorage]) -> None:
    storage = open_storage(opened, tmp_path)
    storage.append(1, None, entries(1, 2, 1))
    good = storage.sync()
    storage.close()
    path = segments(tmp_path)[0]
    with path.open("ab") as file:
        file.write(bytes(4096))

    state = open_storage(opened, tmp_path).load(1)
    assert indexes(state) == [(1, 1), (2, 1)]
    assert path.stat().st_size == good


def test_a_bad_record_followed_by_valid_ones_is_corruption_naming_file_and_offset(
    tmp_path: Path, opened: list[NodeStorage]
) -> None:
    storage = open_storage(opened, tmp_path)
    storage.append(1, None, entries(1, 1, 1))
    offset = storage.sync()
    storage.append(1, None, entries(2, 2, 1))
    storage.sync()
    storage.append(1, None, entries(3, 3, 1))
    storage.sync()
    storage.close()
    path = segments(tmp_path)[0]
    size = path.stat().st_size
    flip_byte(path, offset + HEADER_SIZE + 2)

    with pytest.raises(StorageCorruption) as caught:
        NodeStorage(tmp_path)
    assert caught.value.path == str(path)
    assert caught.value.offset == offset
    assert f"{path} at offset {offset}" in str(caught.value)
    assert "checksum mismatch" in str(caught.value)
    assert path.stat().st_size == size  # damage is reported, never "repaired"


def test_damage_in_a_segment_before_the_last_is_corruption_even_at_its_end(
    tmp_path: Path, opened: list[NodeStorage]
) -> None:
    storage = open_storage(opened, tmp_path, segment_bytes=1)  # every sync opens a segment
    for index in (1, 2, 3):
        storage.append(1, None, entries(index, index, 1))
        storage.sync()
    storage.close()
    first, *_ = found = segments(tmp_path)
    assert len(found) == 3
    os.truncate(first, first.stat().st_size - 1)  # would look torn if it were the last

    with pytest.raises(StorageCorruption) as caught:
        NodeStorage(tmp_path)
    assert caught.value.path == str(first)


def test_a_missing_segment_in_the_middle_is_corruption(
    tmp_path: Path, opened: list[NodeStorage]
) -> None:
    storage = open_storage(opened, tmp_path, segment_bytes=1)
    for index in (1, 2, 3):
        storage.append(1, None, entries(index, index, 1))
        storage.sync()
    storage.close()
    middle = segments(tmp_path)[1]
    middle.unlink()

    with pytest.raises(StorageCorruption) as caught:
        NodeStorage(tmp_path)
    assert caught.value.path == str(middle)


# -- snapshots -------------------------------------------------------------------------


def test_a_snapshot_replaces_the_log_up_to_its_index_across_reopen(
    tmp_path: Path, opened: list[NodeStorage]
) -> None:
    storage = open_storage(opened, tmp_path)
    storage.append(1, HardState(1, 1, 6), entries(1, 10, 1))
    storage.sync()
    storage.save_snapshot(1, snapshot(6, 1, b"kv@6"))
    storage.compact(1, 6)
    storage.sync()
    storage.close()

    state = open_storage(opened, tmp_path).load(1)
    assert state.snapshot == snapshot(6, 1, b"kv@6")
    assert indexes(state) == [(i, 1) for i in range(7, 11)]
    assert state.hard_state == HardState(1, 1, 6)


def test_a_snapshot_whose_index_holds_another_term_drops_every_later_entry(
    tmp_path: Path, opened: list[NodeStorage]
) -> None:
    storage = open_storage(opened, tmp_path)
    storage.append(1, None, entries(1, 10, 1))
    storage.sync()
    storage.save_snapshot(1, snapshot(7, 2))  # the leader's log differs at 7
    storage.append(1, None, entries(8, 9, 2))  # what the leader sends next is kept
    storage.sync()
    storage.save_snapshot(2, snapshot(3, 1))  # past the end of an empty log
    storage.sync()
    storage.close()

    reopened = open_storage(opened, tmp_path)
    state = reopened.load(1)
    assert state.snapshot is not None and state.snapshot.meta.index == 7
    assert indexes(state) == [(8, 2), (9, 2)]
    assert reopened.load(2).entries == []


def test_a_snapshot_file_whose_marker_was_not_synced_is_adopted_before_later_appends(
    tmp_path: Path, opened: list[NodeStorage]
) -> None:
    storage = open_storage(opened, tmp_path)
    storage.append(1, None, entries(1, 10, 1))
    storage.sync()
    storage.save_snapshot(1, snapshot(8, 2))  # file durable; marker only buffered
    storage.abandon()

    reopened = open_storage(opened, tmp_path)
    state = reopened.load(1)
    assert state.snapshot == snapshot(8, 2)
    assert state.entries == []  # entry 8 had term 1, so the tail went
    reopened.append(1, None, entries(9, 10, 2))
    reopened.close()

    # Had the marker not been written at the first reopen, replay would put the
    # snapshot after entries 9..10 and drop them.
    assert indexes(open_storage(opened, tmp_path).load(1)) == [(9, 2), (10, 2)]


def test_only_the_two_newest_snapshot_files_of_a_group_are_kept(
    tmp_path: Path, opened: list[NodeStorage]
) -> None:
    storage = open_storage(opened, tmp_path)
    storage.append(1, None, entries(1, 10, 1))
    for index in (2, 4, 6, 8):
        storage.save_snapshot(1, snapshot(index, 1))
        storage.sync()
    storage.save_snapshot(5, snapshot(3, 1))
    storage.close()
    names = sorted(p.name for p in (tmp_path / "snapshots").iterdir())
    assert names == [
        "g00001-00000000000000000006.snap",
        "g00001-00000000000000000008.snap",
        "g00005-00000000000000000003.snap",
    ]


def test_a_corrupt_newest_snapshot_file_is_corruption_naming_it(
    tmp_path: Path, opened: list[NodeStorage]
) -> None:
    storage = open_storage(opened, tmp_path)
    storage.append(1, None, entries(1, 5, 1))
    storage.save_snapshot(1, snapshot(2, 1))
    storage.save_snapshot(1, snapshot(4, 1, b"x" * 100))
    storage.close()
    newest = tmp_path / "snapshots" / "g00001-00000000000000000004.snap"
    flip_byte(newest, newest.stat().st_size - 10)

    with pytest.raises(StorageCorruption) as caught:
        NodeStorage(tmp_path)
    assert caught.value.path == str(newest)
    assert "snapshot file" in str(caught.value)


def test_a_snapshot_file_named_by_the_wal_but_missing_is_corruption(
    tmp_path: Path, opened: list[NodeStorage]
) -> None:
    storage = open_storage(opened, tmp_path)
    storage.append(1, None, entries(1, 5, 1))
    storage.save_snapshot(1, snapshot(3, 1))
    storage.close()
    missing = tmp_path / "snapshots" / "g00001-00000000000000000003.snap"
    missing.unlink()

    with pytest.raises(StorageCorruption) as caught:
        NodeStorage(tmp_path)
    assert caught.value.path == str(missing)


def test_a_leftover_temporary_snapshot_file_is_deleted_at_open(
    tmp_path: Path, opened: list[NodeStorage]
) -> None:
    open_storage(opened, tmp_path).close()
    leftover = tmp_path / "snapshots" / "g00001-00000000000000000009.snap.tmp"
    leftover.write_bytes(b"half a snapshot")
    assert open_storage(opened, tmp_path).load(1).snapshot is None
    assert not leftover.exists()


# -- segments --------------------------------------------------------------------------


def fill(storage: NodeStorage, group: int, first: int, last: int, term: int = 1) -> None:
    """One small sync per entry, so a small segment_bytes rolls often."""
    for index in range(first, last + 1):
        storage.append(group, HardState(term, 1, index - 1), entries(index, index, term))
        storage.sync()


def test_old_segments_are_deleted_once_snapshots_cover_them_and_reopen_agrees(
    tmp_path: Path, opened: list[NodeStorage]
) -> None:
    storage = open_storage(opened, tmp_path, segment_bytes=256)
    for index in range(1, 41):
        storage.append(1, HardState(1, 1, index - 1), entries(index, index, 1))
        storage.append(2, HardState(1, 2, index - 1), entries(index, index, 1))
        storage.sync()
    written = storage.stats.segments
    assert written > 5 and storage.stats.segments_deleted == 0

    storage.save_snapshot(1, snapshot(40, 1))
    storage.save_snapshot(2, snapshot(35, 1))
    storage.compact(1, 40)
    storage.compact(2, 35)
    storage.sync()
    fill(storage, 1, 41, 50)  # enough to open a new segment, where release happens
    assert storage.stats.segments_deleted > 0
    assert len(segments(tmp_path)) == storage.stats.segments < written
    storage.close()

    reopened = open_storage(opened, tmp_path, segment_bytes=256)
    one, two = reopened.load(1), reopened.load(2)
    assert one.snapshot is not None and one.snapshot.meta.index == 40
    assert [e.index for e in one.entries] == list(range(41, 51))
    assert one.hard_state == HardState(1, 1, 49)
    assert two.snapshot is not None and two.snapshot.meta.index == 35
    assert [e.index for e in two.entries] == [36, 37, 38, 39, 40]
    assert two.hard_state == HardState(1, 2, 39)


def test_a_group_without_a_snapshot_keeps_the_segments_holding_its_entries(
    tmp_path: Path, opened: list[NodeStorage]
) -> None:
    storage = open_storage(opened, tmp_path, segment_bytes=256)
    storage.append(9, HardState(1, 1, 0), entries(1, 1, 1, "pinned"))
    fill(storage, 1, 1, 30)
    storage.save_snapshot(1, snapshot(30, 1))
    fill(storage, 1, 31, 40)
    assert storage.stats.segments_deleted == 0
    storage.close()
    assert open_storage(opened, tmp_path).load(9).entries == entries(1, 1, 1, "pinned")


def test_a_released_segment_left_behind_by_a_crash_is_deleted_again_at_open(
    tmp_path: Path, opened: list[NodeStorage]
) -> None:
    storage = open_storage(opened, tmp_path, segment_bytes=256)
    fill(storage, 1, 1, 20)
    first = segments(tmp_path)[0]
    saved = first.read_bytes()
    storage.save_snapshot(1, snapshot(20, 1))
    storage.sync()
    fill(storage, 1, 21, 30)
    storage.close()
    assert not first.exists()
    first.write_bytes(saved)  # its unlink never reached the disk

    state = open_storage(opened, tmp_path).load(1)
    assert not first.exists()
    assert [e.index for e in state.entries] == list(range(21, 31))


# -- refused input ---------------------------------------------------------------------


@pytest.mark.interpreted_core  # a compiled Entry refuses str data itself
def test_an_entry_whose_data_is_not_bytes_is_refused(
    tmp_path: Path, opened: list[NodeStorage]
) -> None:
    storage = open_storage(opened, tmp_path)
    with pytest.raises(StorageError, match="bytes data"):
        storage.append(1, None, [Entry(1, 1, "text")])  # type: ignore[arg-type]


def test_writes_that_replay_would_reject_are_refused_up_front(
    tmp_path: Path, opened: list[NodeStorage]
) -> None:
    storage = open_storage(opened, tmp_path)
    storage.append(1, None, entries(1, 5, 1))
    with pytest.raises(StorageError, match="consecutive"):
        storage.append(1, None, [Entry(6, 1), Entry(8, 1)])
    with pytest.raises(StorageError, match="log ends at 5"):
        storage.append(1, None, entries(7, 8, 1))
    with pytest.raises(StorageError, match="positive"):
        storage.append(1, None, [Entry(0, 1)])
    with pytest.raises(StorageError, match="negative"):
        storage.append(1, HardState(term=-1), [])
    with pytest.raises(StorageError, match="non-negative"):
        storage.append(-1, None, entries(1, 1, 1))
    storage.save_snapshot(1, snapshot(4, 1))
    with pytest.raises(StorageError, match="go back"):
        storage.save_snapshot(1, snapshot(3, 1))
    with pytest.raises(StorageError, match="go back"):
        storage.save_snapshot(1, snapshot(4, 2))
    with pytest.raises(StorageError, match="cannot compact"):
        storage.compact(1, 5)
    with pytest.raises(StorageError, match="cannot compact"):
        storage.compact(2, 1)
    with pytest.raises(ConfigError):
        NodeStorage(tmp_path / "other", segment_bytes=0)
    storage.close()
    with pytest.raises(StorageError, match="closed"):
        storage.append(1, None, entries(6, 6, 1))
    assert [e.index for e in open_storage(opened, tmp_path).load(1).entries] == [5]


def test_a_batch_over_the_record_limit_is_split_but_a_single_oversized_entry_is_refused(
    tmp_path: Path, opened: list[NodeStorage], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(records_module, "MAX_RECORD_BYTES", 200)
    storage = open_storage(opened, tmp_path)
    batch = [Entry(i, 1, bytes(40)) for i in range(1, 21)]
    storage.append(1, None, batch)
    storage.sync()
    with pytest.raises(StorageError, match="MAX_RECORD_BYTES"):
        storage.append(1, None, [Entry(21, 1, bytes(300))])
    storage.close()
    assert open_storage(opened, tmp_path).load(1).entries == batch


# -- property: the WAL behaves like the simple model of the Ready contract --------------


class Model:
    """One group's durable log, by the rules stated in raft.messages.Ready."""

    def __init__(self) -> None:
        self.hard_state: HardState | None = None
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        self.exists = False
        """Whether any record names the group (since its last drop)."""

    def copy(self) -> Model:
        other = Model()
        other.hard_state, other.snapshot, other.entries, other.exists = (
            self.hard_state, self.snapshot, list(self.entries), self.exists,
        )
        return other

    def base(self) -> int:
        return self.snapshot.meta.index if self.snapshot else 0

    def last(self) -> int:
        return self.entries[-1].index if self.entries else self.base()

    def term_at(self, index: int) -> int | None:
        if self.snapshot and index == self.snapshot.meta.index:
            return self.snapshot.meta.term
        found = [e.term for e in self.entries if e.index == index]
        return found[0] if found else None

    def append(self, hard_state: HardState | None, new: list[Entry]) -> None:
        self.exists = self.exists or hard_state is not None or bool(new)
        new = [e for e in new if e.index > self.base()]
        if new:
            self.entries = [e for e in self.entries if e.index < new[0].index] + new
        if hard_state is not None:
            self.hard_state = hard_state

    def install(self, snap: Snapshot) -> None:
        keep = self.term_at(snap.meta.index) == snap.meta.term
        self.entries = [e for e in self.entries if e.index > snap.meta.index] if keep else []
        self.snapshot = snap
        self.exists = True


GROUPS = (0, 1, 2)
MAX_STEPS = 80


@settings(max_examples=75, deadline=None)
@given(st.data())
def test_random_appends_snapshots_drops_syncs_and_crashes_match_a_simple_model(
    data: st.DataObject,
) -> None:
    directory = Path(tempfile.mkdtemp())
    try:
        run_model_check(data, directory)
    finally:
        shutil.rmtree(directory)


def run_model_check(data: st.DataObject, directory: Path) -> None:
    # fsync=False: a crash here is abandon(), which loses exactly what fsync would.
    def open_it() -> NodeStorage:
        return NodeStorage(directory, segment_bytes=128, fsync=False)

    storage = open_it()
    durable = {g: Model() for g in GROUPS}
    buffered = {g: m.copy() for g, m in durable.items()}
    unsynced_snapshots: dict[int, Snapshot] = {}
    dropping: set[int] = set()  # dropped since the last sync: no snapshot allowed
    # Dropped with no snapshot since. After a crash, a snapshot file such a group's new
    # replica wrote without a durable marker is either deleted at open as a leftover of
    # the drop (the DROP record is still in the WAL) or adopted as a new group's (the
    # segment holding it was released): both lose nothing acknowledged.
    buffered_dropped: set[int] = set()
    durable_dropped: set[int] = set()
    ops = ["append"] * 3 + ["snapshot"] * 2 + ["sync"] * 3 + ["crash", "reopen", "drop"]
    try:
        for _ in range(data.draw(st.integers(10, MAX_STEPS), label="steps")):
            op = data.draw(st.sampled_from(ops), label="op")
            group = data.draw(st.sampled_from(GROUPS), label="group")
            model = buffered[group]
            if op == "append":
                first = data.draw(st.integers(max(1, model.base() - 1), model.last() + 1))
                count = data.draw(st.integers(0, 4))
                term = data.draw(st.integers(1, 4))
                hard_state = data.draw(st.none() | st.builds(HardState, st.integers(0, 5),
                                                             st.integers(0, 3), st.integers(0, 9)))
                new = entries(first, first + count - 1, term, f"g{group}-")
                storage.append(group, hard_state, new)
                model.append(hard_state, new)
            elif op == "drop":
                storage.drop(group)
                buffered[group] = Model()
                dropping.add(group)
                buffered_dropped.add(group)
            elif op == "snapshot":
                if group in dropping:
                    with pytest.raises(StorageError, match="not durable yet"):
                        storage.save_snapshot(group, snapshot(model.last() + 1, 1))
                    continue
                index = data.draw(st.integers(max(1, model.base()), model.last() + 2))
                known = model.term_at(index)
                if model.snapshot and index == model.base():
                    term = model.snapshot.meta.term
                else:
                    term = data.draw(st.sampled_from([known or 1, 1, 2, 3, 4]))
                snap = snapshot(index, term, data.draw(st.binary(max_size=8)))
                storage.save_snapshot(group, snap)
                storage.compact(group, index)
                model.install(snap)
                unsynced_snapshots[group] = snap
                buffered_dropped.discard(group)
            elif op == "sync":
                storage.sync()
                durable = {g: m.copy() for g, m in buffered.items()}
                unsynced_snapshots.clear()
                dropping.clear()
                durable_dropped = set(buffered_dropped)
            else:
                either: dict[int, Model] = {}
                if op == "crash":
                    storage.abandon()
                    for g, snap in unsynced_snapshots.items():  # files outlive the crash
                        if g in durable_dropped:
                            either[g] = durable[g].copy()
                        durable[g].install(snap)
                else:
                    storage.close()
                    durable = {g: m.copy() for g, m in buffered.items()}
                    durable_dropped = set(buffered_dropped)
                unsynced_snapshots.clear()
                dropping.clear()
                storage = open_it()
                for g in GROUPS:
                    loaded = storage.load(g)
                    expected = durable[g]
                    if g in either and loaded.snapshot != expected.snapshot:
                        expected = durable[g] = either[g]  # deleted, not adopted
                    elif g in either:
                        durable_dropped.discard(g)  # adopted: its marker is written
                    assert loaded == GroupState(
                        expected.hard_state, expected.snapshot, expected.entries
                    ), f"group {g} after {op}"
                assert storage.groups() == {g for g in GROUPS if durable[g].exists}, op
                buffered = {g: m.copy() for g, m in durable.items()}
                buffered_dropped = set(durable_dropped)
    finally:
        storage.abandon()


def test_preallocated_zeros_after_a_crash_are_not_a_torn_write(
    tmp_path: Path, opened: list[NodeStorage]
) -> None:
    storage = open_storage(opened, tmp_path)
    storage.append(1, HardState(1, 1, 0), entries(1, 5, 1))
    storage.sync()
    storage.abandon()  # a crash: the segment still ends in preallocated zeros
    (segment,) = segments(tmp_path)
    assert segment.read_bytes().endswith(bytes(1024))
    reopened = open_storage(opened, tmp_path)
    assert reopened.stats.torn_bytes_cut == 0
    assert indexes(reopened.load(1)) == [(i, 1) for i in range(1, 6)]
    reopened.append(1, None, entries(6, 6, 1))
    reopened.sync()
    reopened.abandon()
    assert indexes(open_storage(opened, tmp_path).load(1)) == [(i, 1) for i in range(1, 7)]


# -- a full disk -----------------------------------------------------------------------


def test_a_full_disk_fails_the_wal_write_as_disk_full_and_loses_nothing_acknowledged(
    tmp_path: Path, opened: list[NodeStorage], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC on the WAL: the batch is not durable, so the caller must not acknowledge it;
    the storage refuses more writes (the node then exits), and a reopen once space is
    back has every entry synced before, and appends again."""
    from ringlock.storage import node as node_module

    storage = open_storage(opened, tmp_path)
    storage.append(1, HardState(1, 1, 0), entries(1, 3, 1))
    storage.sync()

    def disk_full(fd: int, data: bytes, offset: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(node_module, "write_all_at", disk_full)
    storage.append(1, None, entries(4, 4, 1))
    with pytest.raises(StorageError, match=r"WAL write failed: disk full \(.*No space left"):
        storage.sync()
    with pytest.raises(StorageError, match="reopen"):
        storage.append(1, None, entries(5, 5, 1))
    monkeypatch.undo()
    storage.abandon()
    reopened = open_storage(opened, tmp_path)
    assert indexes(reopened.load(1)) == [(1, 1), (2, 1), (3, 1)]
    reopened.append(1, None, entries(4, 4, 1))
    reopened.sync()
    assert indexes(open_storage_again(opened, reopened, tmp_path).load(1))[-1] == (4, 1)


def open_storage_again(opened: list[NodeStorage], storage: NodeStorage,
                       directory: Path) -> NodeStorage:
    storage.close()
    return open_storage(opened, directory)


def test_a_full_disk_during_a_snapshot_write_says_disk_full_and_leaves_no_temp_file(
    tmp_path: Path, opened: list[NodeStorage], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ringlock.storage import snapfiles

    storage = open_storage(opened, tmp_path)
    storage.append(1, HardState(1, 1, 5), entries(1, 5, 1))
    storage.sync()

    def disk_full(fd: int, data: bytes) -> None:
        os.write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(snapfiles, "write_all", disk_full)
    with pytest.raises(StorageError, match="cannot write snapshot 5 of group 1: disk full"):
        storage.save_snapshot(1, snapshot(5, 1))
    assert list((tmp_path / "snapshots").glob("*.tmp")) == []
    monkeypatch.undo()
    storage.abandon()
    state = open_storage(opened, tmp_path).load(1)
    assert state.snapshot is None
    assert indexes(state) == [(i, 1) for i in range(1, 6)]
