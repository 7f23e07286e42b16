"""Coverage-guided fuzzing (atheris, libFuzzer) of the decoders a remote party or an
operator reaches: the frame decoder, the Raft message decoder, the shard state
machine's command decoder (apply), and the config loader. Each target holds the same
rule as the hypothesis tests: only the typed error comes out, and an erring command
changes no state. Not part of the test suite (atheris is not a dependency); run by
hand, bounded, one target at a time:

    pip install atheris
    PYTHONPATH=src python tests/atheris/fuzz_decoders.py frames -runs=200000
    PYTHONPATH=src python tests/atheris/fuzz_decoders.py wire -runs=200000
    PYTHONPATH=src python tests/atheris/fuzz_decoders.py apply -runs=100000
    PYTHONPATH=src python tests/atheris/fuzz_decoders.py config -runs=50000

docs/RELIABILITY.md records the last runs.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable

import atheris

with atheris.instrument_imports():
    import msgpack

    from ringlock.codec.frames import FrameDecoder, FrameError
    from ringlock.errors import ConfigError
    from ringlock.server.config import build_config, load_toml
    from ringlock.statemachine.kv import ShardStateMachine, encode
    from ringlock.transport.wire import decode_message

_machine = ShardStateMachine()
_index = 0
for _command in (encode("lease_grant", 1, 1, 7, 5000), encode("put", 1, 2, b"a", b"1", 0, False),
                 encode("lock_acquire", 2, 1, b"lk", 7, 11)):
    _index += 1
    assert not isinstance(_machine.apply(_index, _command), Exception)
_config_dir = tempfile.mkdtemp(prefix="rl-atheris-")
_config_path = os.path.join(_config_dir, "node.toml")


def frames(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    decoder = FrameDecoder(max_frame_bytes=4096)
    try:
        while provider.remaining_bytes():
            decoder.feed(provider.ConsumeBytes(provider.ConsumeIntInRange(1, 64)))
    except FrameError:
        pass  # FrameTooLarge is a FrameError


def wire(data: bytes) -> None:
    try:
        raw = msgpack.unpackb(data, strict_map_key=False)
    except Exception:
        return  # not msgpack: the frame decoder refuses it before decode_message
    with contextlib.suppress(FrameError):
        decode_message(raw)


OPS = ("put", "delete", "cas", "lease_grant", "lease_revoke", "lock_acquire", "lock_release",
       "lock_cancel", "session_end", "nosuch")


def _value(provider: atheris.FuzzedDataProvider, depth: int = 0) -> object:
    kind = provider.ConsumeIntInRange(0, 7 if depth < 2 else 5)
    if kind == 0:
        return provider.ConsumeIntInRange(-3, 20)
    if kind == 1:
        return provider.ConsumeInt(9)  # a wide int, also past 64 bits' range
    if kind == 2:
        return provider.ConsumeBytes(provider.ConsumeIntInRange(0, 8))
    if kind == 3:
        return provider.ConsumeUnicodeNoSurrogates(provider.ConsumeIntInRange(0, 8))
    if kind == 4:
        return provider.ConsumeBool()
    if kind == 5:
        return None
    if kind == 6:
        return [_value(provider, depth + 1) for _ in range(provider.ConsumeIntInRange(0, 3))]
    return {b"k": _value(provider, depth + 1)}


def _command(data: bytes) -> bytes:
    """Half the inputs as raw bytes; half a command built from them: a known op (or
    not), small client ids and seqs (dedup records meet), then arguments of any type."""
    provider = atheris.FuzzedDataProvider(data)
    if provider.ConsumeBool():
        return provider.ConsumeBytes(len(data))
    op = OPS[provider.ConsumeIntInRange(0, len(OPS) - 1)]
    args = [_value(provider) for _ in range(provider.ConsumeIntInRange(0, 8))]
    try:
        return encode(op, provider.ConsumeIntInRange(0, 3), provider.ConsumeIntInRange(0, 9),
                      *args)
    except (OverflowError, ValueError):  # msgpack cannot pack an int past 64 bits
        return b""


def apply(data: bytes) -> None:
    global _index
    command = _command(data)
    before = _machine.snapshot()
    _index += 1
    result = _machine.apply(_index, command)  # must not raise
    if isinstance(result, Exception):
        after = msgpack.unpackb(_machine.snapshot(), strict_map_key=False)
        was = msgpack.unpackb(before, strict_map_key=False)
        # applied index and dedup records may move; keys, leases and locks may not
        if (after[1], after[3], after[4], after[6]) != (was[1], was[3], was[4], was[6]):
            raise AssertionError(f"{command!r} erred ({result}) and changed state")


def config(data: bytes) -> None:
    with open(_config_path, "wb") as file:
        file.write(data)
    try:
        settings = load_toml(_config_path, {"node_id": 1, "listen": "127.0.0.1:7101",
                                            "data_dir": _config_dir})
        build_config(settings)
    except ConfigError:
        pass


TARGETS: dict[str, Callable[[bytes], None]] = {"frames": frames, "wire": wire,
                                              "apply": apply, "config": config}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: fuzz_decoders.py {{{','.join(TARGETS)}}} [libFuzzer flags]")
    target = TARGETS[sys.argv.pop(1)]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()
