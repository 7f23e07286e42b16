"""Raft messages on the wire: round trips, and bad fields refused before the core sees them."""

from __future__ import annotations

import pytest

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
from ringlock.transport.wire import decode_message, encode_message


def sample() -> Message:
    snapshot = Snapshot(SnapshotMeta(7, 2, Configuration(frozenset({1, 2, 3}),
                                                         frozenset({4}))), b"state")
    return Message(MessageType.APPEND, to=2, frm=1, term=3, group=17, index=7, log_term=2,
                   entries=(Entry(8, 3, b"x"), Entry(9, 3, b"1;", EntryKind.CONF)),
                   commit=7, reject=False, reject_hint=0, context=5, snapshot=snapshot,
                   transfer=True)


def test_every_field_survives_a_round_trip() -> None:
    assert decode_message(encode_message(sample())) == sample()


@pytest.mark.parametrize("position, bad", [
    (0, 99),            # unknown message type
    (1, -1),            # negative node id
    (3, "3"),           # term as a string
    (3, True),          # a bool is not an int here
    (7, [[1, 1, 7, b""]]),  # unknown entry kind
    (7, [[1, 1, 0, "s"]]),  # entry data not bytes
    (7, "entries"),
    (9, 1),             # reject must be a bool
    (12, [1, 1, [1], [], "data"]),  # snapshot data not bytes
])
def test_a_bad_field_raises_frame_error(position: int, bad: object) -> None:
    raw = encode_message(sample())
    raw[position] = bad
    with pytest.raises(FrameError):
        decode_message(raw)


@pytest.mark.parametrize("raw", [None, [], [1] * 13, {"type": 1}, "APPEND"])
def test_a_malformed_message_raises_frame_error(raw: object) -> None:
    with pytest.raises(FrameError):
        decode_message(raw)
