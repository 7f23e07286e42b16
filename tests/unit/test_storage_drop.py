"""NodeStorage.drop: a replica that left this node leaves nothing behind once the drop is
durable (state, snapshot files, pinned segments), a crash before that keeps it whole,
and the group can come back later as a fresh replica."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ringlock.raft.messages import Configuration, Entry, HardState, Snapshot, SnapshotMeta
from ringlock.storage import GroupState, NodeStorage, StorageError
from ringlock.storage import records as records_module

SMALL_SEGMENT = 256


def entries(first: int, last: int, term: int, tag: str = "") -> list[Entry]:
    return [
        Entry(index=i, term=term, data=f"{tag}{i}@{term}".encode())
        for i in range(first, last + 1)
    ]


def snapshot(index: int, term: int, data: bytes = b"state") -> Snapshot:
    configuration = Configuration(voters=frozenset({1, 2, 3}))
    return Snapshot(SnapshotMeta(index=index, term=term, configuration=configuration), data)


def segments(directory: Path) -> list[Path]:
    return sorted((directory / "wal").glob("*.wal"))


def snapshot_names(directory: Path) -> list[str]:
    return sorted(p.name for p in (directory / "snapshots").iterdir())


def snap_name(group: int, index: int) -> str:
    return f"g{group:05d}-{index:020d}.snap"


def fill(storage: NodeStorage, group: int, first: int, last: int, term: int = 1) -> None:
    """One small sync per entry, so a small segment_bytes rolls often."""
    for index in range(first, last + 1):
        storage.append(group, HardState(term, 1, index - 1), entries(index, index, term))
        storage.sync()


@pytest.fixture
def opened() -> Iterator[list[NodeStorage]]:
    made: list[NodeStorage] = []
    yield made
    for storage in made:
        storage.abandon()


def open_storage(
    opened: list[NodeStorage], directory: Path, *, segment_bytes: int = 64 * 1024 * 1024
) -> NodeStorage:
    storage = NodeStorage(directory, segment_bytes=segment_bytes)
    opened.append(storage)
    return storage


def old_replica(storage: NodeStorage, group: int) -> None:
    """A replica with a hard state, a snapshot at 200 and entries up to 300."""
    storage.append(group, HardState(4, 2, 250), entries(1, 300, 4, "old-"))
    storage.sync()
    storage.save_snapshot(group, snapshot(150, 4, b"old@150"))
    storage.save_snapshot(group, snapshot(200, 4, b"old@200"))
    storage.sync()


EMPTY = GroupState(None, None, [])


def test_a_synced_drop_forgets_the_group_across_reopen(
    tmp_path: Path, opened: list[NodeStorage]
) -> None:
    storage = open_storage(opened, tmp_path)
    old_replica(storage, 3)
    storage.append(5, HardState(1, 1, 2), entries(1, 4, 1, "g5-"))
    storage.drop(3)
    assert storage.groups() == {5}
    storage.sync()
    storage.close()

    reopened = open_storage(opened, tmp_path)
    assert reopened.groups() == {5}
    assert reopened.load(3) == EMPTY
    assert reopened.load(5) == GroupState(HardState(1, 1, 2), None, entries(1, 4, 1, "g5-"))


def test_a_drop_that_was_never_synced_is_lost_in_a_crash(
    tmp_path: Path, opened: list[NodeStorage]
) -> None:
    storage = open_storage(opened, tmp_path)
    old_replica(storage, 3)
    storage.drop(3)
    storage.abandon()

    reopened = open_storage(opened, tmp_path)
    assert reopened.groups() == {3}
    state = reopened.load(3)
    assert state.hard_state == HardState(4, 2, 250)
    assert state.snapshot == snapshot(200, 4, b"old@200")
    assert [e.index for e in state.entries] == list(range(201, 301))
    assert snapshot_names(tmp_path) == [snap_name(3, 150), snap_name(3, 200)]


def test_a_dropped_group_comes_back_as_a_fresh_replica(
    tmp_path: Path, opened: list[NodeStorage]
) -> None:
    storage = open_storage(opened, tmp_path)
    old_replica(storage, 3)
    storage.drop(3)
    storage.sync()
    # The new replica's log is empty: a snapshot below the old one is no step back, and
    # entries past it need the snapshot first.
    with pytest.raises(StorageError, match="log ends at 0"):
        storage.append(3, None, entries(101, 101, 7))
    storage.save_snapshot(3, snapshot(100, 7, b"new@100"))
    storage.append(3, HardState(7, 1, 105), entries(101, 110, 7, "new-"))
    storage.sync()
    assert storage.groups() == {3}
    storage.close()

    reopened = open_storage(opened, tmp_path)
    assert reopened.groups() == {3}
    assert reopened.load(3) == GroupState(
        HardState(7, 1, 105), snapshot(100, 7, b"new@100"), entries(101, 110, 7, "new-")
    )
    assert snapshot_names(tmp_path) == [snap_name(3, 100)]


def test_records_after_a_drop_in_the_same_batch_start_the_group_afresh(
    tmp_path: Path, opened: list[NodeStorage]
) -> None:
    storage = open_storage(opened, tmp_path)
    storage.append(3, HardState(4, 2, 9), entries(1, 10, 4, "old-"))
    storage.sync()
    storage.append(3, None, entries(11, 12, 4, "old-"))  # dropped with the rest
    storage.drop(3)
    storage.append(3, None, entries(1, 3, 9, "new-"))  # from 1: the log is empty
    storage.sync()
    storage.close()

    assert open_storage(opened, tmp_path).load(3) == GroupState(
        None, None, entries(1, 3, 9, "new-")
    )


def test_a_new_replica_snapshot_waits_until_the_drop_is_durable(
    tmp_path: Path, opened: list[NodeStorage]
) -> None:
    storage = open_storage(opened, tmp_path)
    old_replica(storage, 3)
    storage.drop(3)
    with pytest.raises(StorageError, match="not durable yet"):
        storage.save_snapshot(3, snapshot(200, 9, b"new@200"))  # would overwrite old@200
    assert snapshot_names(tmp_path) == [snap_name(3, 150), snap_name(3, 200)]
    storage.sync()
    storage.save_snapshot(3, snapshot(200, 9, b"new@200"))
    storage.sync()
    storage.close()
    assert open_storage(opened, tmp_path).load(3).snapshot == snapshot(200, 9, b"new@200")


def test_the_drop_deletes_the_snapshot_files_once_it_is_durable(
    tmp_path: Path, opened: list[NodeStorage]
) -> None:
    storage = open_storage(opened, tmp_path)
    old_replica(storage, 3)
    storage.save_snapshot(3, snapshot(250, 4, b"unsynced"))  # file only: marker buffered
    storage.save_snapshot(6, snapshot(5, 1))
    storage.drop(3)
    assert snap_name(3, 250) in snapshot_names(tmp_path)  # not durable: still needed
    storage.sync()
    assert snapshot_names(tmp_path) == [snap_name(6, 5)]


def test_snapshot_files_left_by_a_crash_during_the_drop_are_deleted_at_open(
    tmp_path: Path, opened: list[NodeStorage]
) -> None:
    storage = open_storage(opened, tmp_path)
    old_replica(storage, 3)
    saved = {p.name: p.read_bytes() for p in (tmp_path / "snapshots").iterdir()}
    storage.drop(3)
    storage.append(3, HardState(9, 0, 0), entries(1, 2, 9, "new-"))  # a new replica
    storage.sync()
    storage.abandon()
    for name, data in saved.items():  # their unlinks never reached the disk
        (tmp_path / "snapshots" / name).write_bytes(data)

    reopened = open_storage(opened, tmp_path)
    assert snapshot_names(tmp_path) == []  # not adopted into the new replica
    assert reopened.load(3) == GroupState(HardState(9, 0, 0), None, entries(1, 2, 9, "new-"))


def test_a_dropped_group_no_longer_holds_back_segment_deletion(
    tmp_path: Path, opened: list[NodeStorage]
) -> None:
    storage = open_storage(opened, tmp_path, segment_bytes=SMALL_SEGMENT)
    storage.append(9, HardState(1, 1, 0), entries(1, 3, 1, "pinned"))
    fill(storage, 1, 1, 30)
    storage.save_snapshot(1, snapshot(30, 1))
    storage.compact(1, 30)
    fill(storage, 1, 31, 40)
    assert storage.stats.segments_deleted == 0  # group 9 has no snapshot: it pins them
    first = segments(tmp_path)[0]

    storage.append(9, HardState(1, 1, 3), entries(4, 4, 1, "pinned"))  # dropped too
    storage.drop(9)
    storage.sync()
    fill(storage, 1, 41, 50)  # rolls: the release happens at the next segment
    assert storage.stats.segments_deleted > 0
    assert not first.exists()
    assert len(segments(tmp_path)) == storage.stats.segments
    storage.close()

    reopened = open_storage(opened, tmp_path, segment_bytes=SMALL_SEGMENT)
    assert reopened.groups() == {1}
    assert reopened.load(9) == EMPTY
    one = reopened.load(1)
    assert one.snapshot == snapshot(30, 1)
    assert [e.index for e in one.entries] == list(range(31, 51))


def test_segments_held_only_by_a_dropped_group_are_released_after_a_reopen_too(
    tmp_path: Path, opened: list[NodeStorage]
) -> None:
    storage = open_storage(opened, tmp_path, segment_bytes=SMALL_SEGMENT)
    storage.append(9, HardState(1, 1, 0), entries(1, 3, 1, "pinned"))
    fill(storage, 1, 1, 30)
    storage.drop(9)
    storage.save_snapshot(1, snapshot(30, 1))
    storage.close()
    first = segments(tmp_path)[0]

    reopened = open_storage(opened, tmp_path, segment_bytes=SMALL_SEGMENT)
    fill(reopened, 1, 31, 40)
    assert reopened.stats.segments_deleted > 0
    assert not first.exists()
    reopened.close()
    assert open_storage(opened, tmp_path, segment_bytes=SMALL_SEGMENT).groups() == {1}


def test_a_fresh_replica_survives_the_release_of_the_segments_holding_its_drop(
    tmp_path: Path, opened: list[NodeStorage]
) -> None:
    storage = open_storage(opened, tmp_path, segment_bytes=SMALL_SEGMENT)
    storage.append(9, HardState(2, 2, 40), entries(1, 50, 2, "old-"))
    storage.sync()
    storage.save_snapshot(9, snapshot(40, 2))
    fill(storage, 1, 1, 10)
    storage.drop(9)
    storage.sync()
    drop_segment = segments(tmp_path)[-1]
    storage.save_snapshot(9, snapshot(20, 5, b"new@20"))
    storage.append(9, HardState(5, 3, 20), [])
    storage.sync()
    fill(storage, 1, 11, 30)
    storage.save_snapshot(1, snapshot(30, 1))
    fill(storage, 1, 31, 45)
    # Only checkpoints now say that 9 was dropped and came back.
    assert not drop_segment.exists()
    storage.append(9, None, entries(21, 23, 5, "new-"))
    storage.close()

    reopened = open_storage(opened, tmp_path, segment_bytes=SMALL_SEGMENT)
    assert reopened.groups() == {1, 9}
    assert reopened.load(9) == GroupState(
        HardState(5, 3, 20), snapshot(20, 5, b"new@20"), entries(21, 23, 5, "new-")
    )
    assert sorted(n for n in snapshot_names(tmp_path) if n.startswith("g00009")) == [
        snap_name(9, 20)
    ]
    assert [e.index for e in reopened.load(1).entries] == list(range(31, 46))


def test_dropping_a_group_never_seen_is_harmless(
    tmp_path: Path, opened: list[NodeStorage]
) -> None:
    storage = open_storage(opened, tmp_path)
    storage.append(1, HardState(1, 1, 1), entries(1, 2, 1))
    storage.drop(42)
    storage.drop(42)
    storage.sync()
    storage.close()

    reopened = open_storage(opened, tmp_path)
    assert reopened.groups() == {1}
    assert reopened.load(42) == EMPTY
    assert reopened.load(1) == GroupState(HardState(1, 1, 1), None, entries(1, 2, 1))
    with pytest.raises(StorageError, match="non-negative"):
        reopened.drop(-1)


def test_a_torn_drop_record_is_cut_and_the_group_stays(
    tmp_path: Path, opened: list[NodeStorage]
) -> None:
    storage = open_storage(opened, tmp_path)
    storage.append(3, HardState(1, 1, 1), entries(1, 5, 1))
    storage.sync()
    storage.drop(3)
    storage.sync()
    storage.abandon()
    (segment,) = segments(tmp_path)
    data = bytearray(segment.read_bytes())
    record = records_module.encode_drop(3)
    at = data.rfind(record)
    assert at > 0
    data[at + len(record) - 1] ^= 0xFF  # the write tore inside the DROP record
    segment.write_bytes(bytes(data))

    reopened = open_storage(opened, tmp_path)
    assert reopened.stats.torn_bytes_cut > 0
    assert reopened.groups() == {3}
    assert reopened.load(3) == GroupState(HardState(1, 1, 1), None, entries(1, 5, 1))


def test_a_drop_before_the_group_is_loaded_hands_over_nothing(
    tmp_path: Path, opened: list[NodeStorage]
) -> None:
    storage = open_storage(opened, tmp_path)
    storage.append(3, HardState(1, 1, 1), entries(1, 5, 1))
    storage.close()
    reopened = open_storage(opened, tmp_path)
    reopened.drop(3)
    assert reopened.load(3) == EMPTY
    with pytest.raises(StorageError, match="cannot compact"):
        reopened.compact(3, 1)


def test_a_drop_is_refused_once_the_storage_is_closed(
    tmp_path: Path, opened: list[NodeStorage]
) -> None:
    storage = open_storage(opened, tmp_path)
    old_replica(storage, 3)
    storage.close()
    with pytest.raises(StorageError, match="closed"):
        storage.drop(3)
    assert open_storage(opened, tmp_path).groups() == {3}

