"""Storage errors, mapped onto the ringlock tree so callers catch one family."""

from __future__ import annotations

import errno

from ringlock.errors import RinglockError


def describe_os_error(error: OSError) -> str:
    """The error as an operator should read it: ENOSPC and EDQUOT say "disk full" first,
    so the log line that ends a node on a full disk says what to fix."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full ({error}); free space, then restart the node"
    return str(error)


class StorageError(RinglockError):
    """A storage operation was refused or failed; nothing it asked for is durable."""


class StorageCorruption(StorageError):
    """Stored bytes are damaged in a way a crash cannot explain.

    Carries the file and byte offset so an operator can inspect the damage; the
    node must not start from this directory, because replaying past the damage
    could make it forget entries or votes it already acknowledged.
    """

    def __init__(self, path: str, offset: int, reason: str, *, what: str = "WAL record") -> None:
        super().__init__(
            f"corrupt {what} in {path} at offset {offset}: {reason}; "
            "refusing to start (restore this node from a peer)"
        )
        self.path = path
        self.offset = offset
        self.reason = reason
