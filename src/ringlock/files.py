"""The few raw file-system calls ringlock makes (the log, snapshots, keys, the cluster
map), kept in one place so that each is written once and carefully."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write_all(fd: int, data: bytes | bytearray) -> None:
    """One os.write in practice; loops only because POSIX allows short writes."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_all_at(fd: int, data: bytes | bytearray, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        offset += written
        view = view[written:]


def fsync_path(path: Path) -> None:
    """Sync a file, or a directory: a created, renamed or truncated name is durable only
    once its directory is synced (fsync on the file alone does not persist the entry
    that points to it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes, *, private: bool = False,
                     durable: bool = True) -> None:
    """Replace `path` with `data`, whole or not at all: written in full to a temporary
    file, then renamed over it. `private`: mode 0600 from the file's creation, so a key
    is never readable by others, not even for an instant; otherwise the umask decides.
    `durable`: synced, name included, before this returns; False suits a cache an older
    copy serves as well."""
    tmp = path.with_name(path.name + ".tmp")
    # A stale temporary file (or a link planted in a shared directory) is removed, not
    # followed: the data goes only to a file made here, for us alone.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                 0o600 if private else 0o666)  # the umask narrows a public one
    try:
        try:
            if private:
                os.fchmod(fd, 0o600)  # whatever the umask
            write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # the old file, if any, is as it was
        raise
    if durable:
        fsync_path(path.parent)
