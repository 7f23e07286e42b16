"""Frames on the wire: length-prefixed, versioned, size-checked msgpack (never pickle)."""

from ringlock.codec.frames import (
    FRAME_VERSION,
    MAX_FRAME_BYTES,
    FrameDecoder,
    FrameError,
    FrameTooLarge,
    encode_frame,
)

__all__ = [
    "FRAME_VERSION",
    "MAX_FRAME_BYTES",
    "FrameDecoder",
    "FrameError",
    "FrameTooLarge",
    "encode_frame",
]
