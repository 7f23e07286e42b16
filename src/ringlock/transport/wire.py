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


def _entry(raw: Any) -> Entry:
    if not isinstance(raw, list) or len(raw) != 4:
        raise FrameError(f"raft entry must be [index, term, kind, data], got {raw!r:.80}")
    index, term, kind, data = raw
    if kind not in _KINDS or not isinstance(data, bytes):
        raise FrameError(f"raft entry has a bad kind or data: {raw!r:.80}")
    return Entry(_int(index, "entry.index"), _int(term, "entry.term"), data, _KINDS[kind])


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


def decode_message(raw: Any) -> Message:
    if not isinstance(raw, list) or len(raw) != 14:
        raise FrameError(f"a raft message is a list of 14 fields, got {raw!r:.80}")
    (kind, to, frm, term, group, index, log_term, entries, commit, reject, reject_hint,
     context, snapshot, transfer) = raw
    if kind not in _TYPES:
        raise FrameError(f"unknown raft message type {kind!r}")
    if not isinstance(entries, list) or not isinstance(reject, bool) or not isinstance(
        transfer, bool
    ):
        raise FrameError("raft message has bad entries, reject or transfer fields")
    return Message(
        _TYPES[kind], to=_int(to, "to"), frm=_int(frm, "frm"), term=_int(term, "term"),
        group=_int(group, "group"), index=_int(index, "index"),
        log_term=_int(log_term, "log_term"), entries=tuple(_entry(e) for e in entries),
        commit=_int(commit, "commit"), reject=reject, reject_hint=_int(reject_hint, "hint"),
        context=_int(context, "context"), snapshot=_snapshot(snapshot), transfer=transfer,
    )
