"""Raft messages to and from plain msgpack-able lists, checked on the way in.

A peer is part of the cluster, but its bytes still cross a network: `decode_message`
checks every field's type and range and raises `FrameError` rather than handing the
Raft core something it would trip over. Lists, not maps: a busy node sends tens of
thousands of these a second, and positional fields halve the bytes and the time.
"""

from __future__ import annotations

from typing import Any

from ringlock.codec.frames import FrameError
from ringlock.raft.messages import (
    Configuration,
    Entry,
    EntryKind,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)

_TYPES = {int(t): t for t in MessageType}
_KINDS = {int(k): k for k in EntryKind}


def encode_message(m: Message) -> list[Any]:
    snapshot = None
    if m.snapshot is not None:
        meta = m.snapshot.meta
        snapshot = [meta.index, meta.term, sorted(meta.configuration.voters),
                    sorted(meta.configuration.learners), m.snapshot.data]
    return [int(m.type), m.to, m.frm, m.term, m.group, m.index, m.log_term,
            [[e.index, e.term, int(e.kind), e.data] for e in m.entries],
            m.commit, m.reject, m.reject_hint, m.context, snapshot, m.transfer]


def _int(value: Any, name: str) -> int:
    if type(value) is not int or value < 0:
        raise FrameError(f"raft message field {name} must be a non-negative int, got {value!r}")
    return value


def _entries(raw: Any) -> tuple[Entry, ...]:
    if type(raw) is not list:
        raise FrameError("raft message entries must be a list")
    entries = []
    for item in raw:  # the hot path of a busy follower: checks inline, no calls
        if (type(item) is not list or len(item) != 4 or type(item[0]) is not int
                or type(item[1]) is not int or item[0] < 0 or item[1] < 0
                or type(item[2]) is not int or item[2] not in _KINDS
                or type(item[3]) is not bytes):
            raise FrameError(f"raft entry must be [index, term, kind, data], got {item!r:.80}")
        entries.append(Entry(item[0], item[1], item[3], _KINDS[item[2]]))
    return tuple(entries)


def _snapshot(raw: Any) -> Snapshot | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or len(raw) != 5:
        raise FrameError("raft snapshot must be [index, term, voters, learners, data]")
    index, term, voters, learners, data = raw
    if not isinstance(voters, list) or not isinstance(learners, list) or not isinstance(
        data, bytes
    ):
        raise FrameError("raft snapshot has bad members or data")
    configuration = Configuration(
        frozenset(_int(v, "voter") for v in voters),
        frozenset(_int(v, "learner") for v in learners),
    )
    meta = SnapshotMeta(_int(index, "snapshot.index"), _int(term, "snapshot.term"), configuration)
    return Snapshot(meta, data)


_INT_FIELDS = (1, 2, 3, 4, 5, 6, 8, 10, 11)
_NAMES = ("type", "to", "frm", "term", "group", "index", "log_term", "entries", "commit",
          "reject", "reject_hint", "context", "snapshot", "transfer")


def decode_message(raw: Any) -> Message:
    if type(raw) is not list or len(raw) != 14:
        raise FrameError(f"a raft message is a list of 14 fields, got {raw!r:.80}")
    for position in _INT_FIELDS:
        value = raw[position]
        if type(value) is not int or value < 0:
            raise FrameError(f"raft message field {_NAMES[position]} must be a non-negative "
                             f"int, got {value!r:.40}")
    (kind, to, frm, term, group, index, log_term, entries, commit, reject, reject_hint,
     context, snapshot, transfer) = raw
    if type(kind) is not int or kind not in _TYPES:  # an unhashable kind: TypeError
        raise FrameError(f"unknown raft message type {kind!r}")
    if type(reject) is not bool or type(transfer) is not bool:
        raise FrameError("raft message fields reject and transfer must be booleans")
    return Message(
        _TYPES[kind], to, frm, term, group, index, log_term,
        () if type(entries) is list and not entries else _entries(entries), commit,
        reject, reject_hint, context,
        None if snapshot is None else _snapshot(snapshot), transfer,
    )
