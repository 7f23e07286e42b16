"""Durable state for every Raft group on a node: one shared write-ahead log plus
snapshot files.

One WAL per node, not per group, because what costs is the fsync: a node hosting
hundreds of groups makes one write and one fsync per `sync()` for all of them (group
commit), however many groups had work.

Directory layout::

    {directory}/wal/{seq:016d}.wal                  WAL segments, seq = 1, 2, ...
    {directory}/snapshots/g{group:05d}-{index:020d}.snap
                                                    one file per saved snapshot

WAL record (all integers big-endian)::

    2 bytes   magic 0x524C ("RL"), so a scan can find record starts after damage
    1 byte    record type
    4 bytes   body length N (at most MAX_RECORD_BYTES)
    4 bytes   CRC32 of the 7 bytes above followed by the body
    N bytes   msgpack body (an array; bytes as bin, never pickle)

Record types and bodies::

    CHECKPOINT  1  [base_seq, [[group, [term, vote, commit] | nil, [index, term] | nil], ...]]
    ENTRIES     2  [group, [[index, term, kind, data], ...]]    indexes consecutive
    HARD_STATE  3  [group, term, vote, commit]
    SNAPSHOT    4  [group, index, term, keep_tail]              marker for a snapshot file
    DROP        5  [group]                                      the group left this node

Every segment opens with CHECKPOINT records repeating each group's durable hard state
and snapshot marker, so replay may start at any segment; `base_seq` names the oldest
segment still needed when it was written (older ones found at open are leftovers of an
interrupted deletion). A segment is closed when it reaches `segment_bytes`; the sync
that opens the next one deletes the longest prefix of segments in which every entry,
per group (tracked as the highest index per group per segment), is at or below that
group's durable snapshot index.

Replay applies records in order, per group: ENTRIES replace stored entries from their
first index on; HARD_STATE replaces; a SNAPSHOT marker drops entries up to its index
and, unless `keep_tail`, every later entry too. `keep_tail` records the Ready rule
("entries after a snapshot survive only if the stored entry at its index has its
term"), decided when the marker is buffered from a cheap in-memory picture of each
log's terms: storing the decision is what lets replay start after released segments,
which may have held the entry the rule would look at. A checkpoint's marker always
keeps the tail (it repeats the current snapshot). DROP forgets the group (its replica
was removed from it): records after it start the group from nothing, and its entries
stop counting against any segment's deletion. Its snapshot files are deleted by the
sync that makes the DROP durable, or at open when replay ends with the group dropped.
A bad record at the very end of the newest segment, with nothing valid after it, is a
torn write and is cut off (logged); any other bad record raises StorageCorruption
naming the file and offset.

Snapshot file::

    8 bytes   magic b"RLSNAP01"
    8 bytes   body length
    4 bytes   CRC32 of the body
    body      msgpack {group, index, term, voters, learners, data}

Written to a temporary name, fsynced, renamed, directory fsynced; the newest
KEEP_SNAPSHOTS files per group are kept. At open a group's snapshot is its newest file:
if that is newer than the WAL's last marker (a crash came between the file and the next
sync), it is installed as though its marker were the last record, and the marker is
written at once. A newest file that is unreadable raises StorageCorruption naming it.

Threading: append, save_snapshot, compact, drop and pending from one (event-loop) thread;
sync() from at most one other thread at a time. A record appended while a sync runs
lands in the next batch; everything appended before sync() was called is durable when
it returns. With fsync=False nothing is fsynced: fast, and unsafe against power loss
or a kernel crash (a process crash still loses only the unsynced batch).

Storage never reads the clock.
"""

from ringlock.storage.errors import StorageCorruption, StorageError
from ringlock.storage.node import DEFAULT_SEGMENT_BYTES, GroupState, NodeStorage, StorageStats
from ringlock.storage.records import MAX_RECORD_BYTES
from ringlock.storage.snapfiles import KEEP_SNAPSHOTS, MAX_SNAPSHOT_BYTES

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "KEEP_SNAPSHOTS",
    "MAX_RECORD_BYTES",
    "MAX_SNAPSHOT_BYTES",
    "GroupState",
    "NodeStorage",
    "StorageCorruption",
    "StorageError",
    "StorageStats",
]
