"""Length-prefixed msgpack frames, sans-I/O (feed bytes in, take frames out).

Layout of one frame:

    4 bytes  big-endian length N of what follows (version byte + body)
    1 byte   format version (FRAME_VERSION)
    N-1      msgpack body: a map or an array, never an extension type

Every buffer is capped: a length above `max_frame_bytes` is refused before any of the
body is read, so a peer cannot make us allocate without bound. Errors say whose fault
it was: a `FrameError` is the remote side's (bad version, malformed body), and the
connection that sent it should be answered and closed; we keep serving others.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from ringlock.errors import RinglockError

FRAME_VERSION = 1
MAX_FRAME_BYTES = 4 * 1024 * 1024
"""Default cap on one frame: a 1 MiB value plus its key and envelope fits with room."""
_HEADER = struct.Struct(">I")


class FrameError(RinglockError):
    """The remote side sent bytes that are not a valid frame.

    `frames`: the bodies of the valid frames the same `feed` decoded before the bad
    one, in order; the connection answers them before it refuses the rest."""

    frames: list[Any] = []


class FrameTooLarge(FrameError):
    """A frame's announced length exceeds the limit."""


def encode_frame(body: Any, *, max_frame_bytes: int = MAX_FRAME_BYTES) -> bytes:
    try:
        payload: bytes = msgpack.packb(body, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as error:
        raise FrameError(f"cannot encode a frame body: {error}") from error
    length = len(payload) + 1
    if length > max_frame_bytes:
        raise FrameTooLarge(f"frame of {length} bytes exceeds max_frame_bytes={max_frame_bytes}")
    return _HEADER.pack(length) + bytes([FRAME_VERSION]) + payload


class FrameDecoder:
    """Feed received bytes with `feed`; take complete frames from `frames()`."""

    def __init__(self, *, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        """Add bytes; return the bodies of the frames they completed, in order.

        Frames are parsed at an advancing offset and the consumed prefix is dropped once,
        so a read carrying many small pipelined frames costs linear time, not quadratic;
        and a large frame (a snapshot) arriving over many reads is appended to, not
        copied whole at every read.
        """
        buffered = bool(self._buffer)
        if buffered:
            self._buffer += data
            view = memoryview(self._buffer)
        else:
            view = memoryview(data)
        bodies = []
        offset = 0
        size = len(view)
        try:
            while size - offset >= _HEADER.size:
                (length,) = _HEADER.unpack_from(view, offset)
                if length < 1:
                    raise FrameError("frame of length 0 has no version byte")
                if length > self.max_frame_bytes:
                    raise FrameTooLarge(
                        f"frame of {length} bytes exceeds max_frame_bytes={self.max_frame_bytes}"
                    )
                end = offset + _HEADER.size + length
                if size < end:
                    break
                version = view[offset + _HEADER.size]
                payload = view[offset + _HEADER.size + 1 : end]
                offset = end
                if version != FRAME_VERSION:
                    raise FrameError(f"frame version {version} is not {FRAME_VERSION}")
                bodies.append(_decode_body(payload))
        except FrameError as error:
            error.frames = bodies
            raise
        finally:
            if offset == 0 and buffered:
                view.release()  # a large frame still arriving: keep growing, no copy
            else:
                rest = bytes(view[offset:]) if offset < size else b""
                view.release()
                self._buffer = bytearray(rest)
        return bodies

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)


def _decode_body(payload: memoryview) -> Any:
    try:
        body = msgpack.unpackb(payload, raw=False, strict_map_key=False,
                               ext_hook=_refuse_extension)
    except FrameError:
        raise
    except Exception as error:  # msgpack raises several types for bad input
        raise FrameError(f"malformed frame body: {error}") from error
    if not isinstance(body, dict | list):
        raise FrameError(f"frame body must be a map or an array, not {type(body)}")
    return body


def _refuse_extension(code: int, data: bytes) -> Any:
    raise FrameError(f"msgpack extension type {code} is not allowed")
