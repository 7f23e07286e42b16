"""Fuzzing the frame decoder and the Raft message decoder.

The design (codec/frames.py, docs/PROTOCOL.md): a malformed frame is the sender's fault;
the connection is answered with an error and closed, because its byte stream can no
longer be trusted to be in step. So there is no resynchronisation inside one stream:
after a FrameError the decoder is discarded. What must hold is that only FrameError (or
its FrameTooLarge) ever escapes `feed`, that the frames completed before the bad one
are still handed out (returned by earlier feeds, or carried by the error as
`FrameError.frames`, so the connection answers them before refusing the rest), and that
valid frames decode whatever the splits.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from ringlock.codec.frames import FRAME_VERSION, FrameDecoder, FrameError, encode_frame
from ringlock.raft.messages import Entry, EntryKind, Message, MessageType
from ringlock.transport.wire import decode_message, encode_message
from tests.fuzzing import Counter, fuzz_settings, msgpack_values, record

LIMIT = 4096
bodies = st.one_of(st.lists(msgpack_values, max_size=4),
                   st.dictionaries(st.text(max_size=4), msgpack_values, max_size=4))


def _feed_all(decoder: FrameDecoder, chunks: list[bytes]) -> tuple[list[Any], bool]:
    """Feed chunk by chunk; (bodies decoded, whether a FrameError ended it)."""
    out: list[Any] = []
    for chunk in chunks:
        try:
            out.extend(decoder.feed(chunk))
        except FrameError as error:  # FrameTooLarge included
            out.extend(error.frames)
            return out, True
    return out, False


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def test_random_bytes_raise_only_frame_errors() -> None:
    counter = Counter()

    @fuzz_settings(500)
    @given(st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=6))
    def run(data: bytes, cuts: list[int]) -> None:
        counter.inputs += 1
        _feed_all(FrameDecoder(max_frame_bytes=LIMIT), _split(data, cuts))

    run()
    record("FrameDecoder random bytes", counter.inputs)
    assert counter.inputs >= 400


def test_valid_frames_decode_whatever_the_splits() -> None:
    counter = Counter()

    @fuzz_settings(300)
    @given(st.lists(bodies, min_size=1, max_size=5), st.lists(st.integers(0, 10**6),
                                                               max_size=12))
    def run(frames: list[Any], cuts: list[int]) -> None:
        counter.inputs += 1
        stream = b"".join(encode_frame(body, max_frame_bytes=1 << 20) for body in frames)
        decoder = FrameDecoder(max_frame_bytes=1 << 20)
        decoded, failed = _feed_all(decoder, _split(stream, cuts))
        assert not failed
        assert msgpack.packb(decoded) == msgpack.packb(frames)  # (NaN != NaN)
        assert decoder.buffered_bytes == 0

    run()
    record("FrameDecoder valid frames, random splits", counter.inputs)
    assert counter.inputs >= 250


@st.composite
def mutated_streams(draw: st.DrawFn) -> tuple[list[Any], bytes, int]:
    """(good frames, stream, the byte offset where the bad frame starts): good frames,
    then one frame with its length, version or body mutated (truncated, oversized,
    zero, flipped bytes), then more good frames that must never be decoded."""
    good = draw(st.lists(bodies, max_size=3))
    prefix = b"".join(encode_frame(body) for body in good)
    frame = bytearray(encode_frame(draw(bodies)))
    how = draw(st.sampled_from(["length", "zero", "huge", "version", "flip", "body"]))
    if how == "length":
        struct.pack_into(">I", frame, 0, draw(st.integers(0, 2**32 - 1)))
    elif how == "zero":
        struct.pack_into(">I", frame, 0, 0)
    elif how == "huge":
        struct.pack_into(">I", frame, 0, draw(st.integers(LIMIT + 1, 2**32 - 1)))
    elif how == "version":
        frame[4] = draw(st.integers(0, 255).filter(lambda v: v != FRAME_VERSION))
    elif how == "flip":
        for _ in range(draw(st.integers(1, 4))):
            position = draw(st.integers(0, len(frame) - 1))
            frame[position] ^= draw(st.integers(1, 255))
    else:
        body = draw(st.binary(min_size=1, max_size=40))
        frame = bytearray(struct.pack(">I", len(body) + 1) + bytes([FRAME_VERSION]) + body)
    tail = b"".join(encode_frame(body) for body in draw(st.lists(bodies, max_size=2)))
    return good, prefix + bytes(frame) + tail, len(prefix)


def test_mutated_frames_raise_only_frame_errors_after_the_good_ones() -> None:
    counter = Counter()
    refused = Counter()

    @fuzz_settings(500)
    @given(mutated_streams(), st.lists(st.integers(0, 10**5), max_size=6))
    def run(case: tuple[list[Any], bytes, int], cuts: list[int]) -> None:
        counter.inputs += 1
        good, stream, _ = case
        decoded, failed = _feed_all(FrameDecoder(max_frame_bytes=LIMIT), _split(stream, cuts))
        refused.inputs += failed
        # The frames before the mutated one always come out, in order (a mutation can
        # leave the frame valid, or shorten it into the next: more may follow).
        assert msgpack.packb(decoded[:len(good)]) == msgpack.packb(good)
        assert all(isinstance(body, dict | list) for body in decoded)

    run()
    record("FrameDecoder mutated frames", counter.inputs)
    print(f"  of which refused with a FrameError: {refused.inputs}")
    assert counter.inputs >= 400


def test_oversized_length_is_refused_from_the_header_alone() -> None:
    decoder = FrameDecoder(max_frame_bytes=LIMIT)
    try:
        decoder.feed(struct.pack(">I", LIMIT + 1))
    except FrameError as error:
        assert "exceeds" in str(error)
    else:
        raise AssertionError("an oversized header was not refused")


# ------------------------------------------------------------------ raft messages

def _valid_message() -> Message:
    return Message(MessageType.APPEND, to=2, frm=1, term=3, group=0, index=5, log_term=2,
                   entries=(Entry(6, 3, b"x", EntryKind.NORMAL),), commit=4)


def test_decode_message_of_random_structures_raises_only_frame_errors() -> None:
    counter = Counter()
    template = encode_message(_valid_message())

    @fuzz_settings(600)
    @given(st.one_of(
        msgpack_values,
        # near misses: a valid message with one field replaced by junk
        st.tuples(st.integers(0, 13), msgpack_values).map(
            lambda t: [*template[:t[0]], t[1], *template[t[0] + 1:]]),
        # junk inside an entry
        st.tuples(st.integers(0, 3), msgpack_values).map(
            lambda t: [*template[:7], [[*template[7][0][:t[0]], t[1],
                                       *template[7][0][t[0] + 1:]]], *template[8:]]),
    ))
    def run(raw: Any) -> None:
        counter.inputs += 1
        try:
            message = decode_message(raw)
        except FrameError:
            return
        assert isinstance(message, Message)

    run()
    record("wire.decode_message random structures", counter.inputs)
    assert counter.inputs >= 500


def test_regression_unhashable_message_type_or_entry_kind_is_a_frame_error() -> None:
    template = encode_message(_valid_message())
    for raw in ([[1], *template[1:]],
                [*template[:7], [[6, 3, [0], b"x"]], *template[8:]],
                [*template[:7], [[6, 3, {"a": 1}, b"x"]], *template[8:]]):
        try:
            decode_message(raw)
        except FrameError:
            continue
        raise AssertionError(f"{raw!r} was accepted")


def test_regression_frames_before_a_bad_one_in_the_same_read_are_kept() -> None:
    good = encode_frame({"id": 1, "op": "get"})
    try:
        FrameDecoder().feed(good + struct.pack(">I", 0))
    except FrameError as error:
        assert error.frames == [{"id": 1, "op": "get"}]
    else:
        raise AssertionError("a zero-length frame was accepted")
