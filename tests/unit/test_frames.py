"""Frames: round trips in any chunking, and every kind of bad input gets a typed error."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringlock.codec import FrameDecoder, FrameError, FrameTooLarge, encode_frame

scalars = st.one_of(
    st.integers(-(2**63), 2**64 - 1), st.binary(max_size=20), st.text(max_size=5)
)
bodies = st.dictionaries(st.text(max_size=5), scalars, max_size=5)


@given(st.lists(bodies, max_size=5), st.integers(1, 7))
def test_frames_round_trip_in_any_chunking(messages: list[dict[str, object]], step: int) -> None:
    wire = b"".join(encode_frame(m) for m in messages)
    decoder = FrameDecoder()
    received = []
    for start in range(0, len(wire), step):
        received += decoder.feed(wire[start : start + step])
    assert received == messages
    assert decoder.buffered_bytes == 0


def test_an_announced_length_above_the_limit_is_refused_before_the_body() -> None:
    decoder = FrameDecoder(max_frame_bytes=100)
    with pytest.raises(FrameTooLarge):
        decoder.feed(struct.pack(">I", 101))


def test_encoding_refuses_a_frame_above_the_limit() -> None:
    with pytest.raises(FrameTooLarge):
        encode_frame({"v": b"x" * 200}, max_frame_bytes=100)


@pytest.mark.parametrize(
    "wire",
    [
        struct.pack(">I", 0),
        struct.pack(">I", 2) + b"\x09" + msgpack.packb({}),  # unknown version
        struct.pack(">I", 3) + b"\x01\xc1\xc1",  # 0xc1 is never valid msgpack
        struct.pack(">I", 2) + b"\x01" + msgpack.packb(5),  # not a map or an array
        struct.pack(">I", 4) + b"\x01" + msgpack.packb(msgpack.ExtType(1, b"x")),
    ],
    ids=["zero-length", "version", "garbage", "scalar", "extension"],
)
def test_bad_frames_get_a_frame_error(wire: bytes) -> None:
    with pytest.raises(FrameError):
        FrameDecoder().feed(wire)


def test_a_body_msgpack_cannot_carry_is_refused_at_encoding() -> None:
    with pytest.raises(FrameError):
        encode_frame({"n": 2**70})
    with pytest.raises(FrameError):
        encode_frame({"o": object()})
