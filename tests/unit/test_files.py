"""`write_atomically`: a file is replaced whole or not at all, a private one is never
readable by others, and a link planted at its temporary name is not followed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ringlock import files
from ringlock.files import write_atomically


def test_a_file_is_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "map.json"
    write_atomically(path, b"old")
    write_atomically(path, b"new" * 100_000, durable=False)
    assert path.read_bytes() == b"new" * 100_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "identity.json"
    write_atomically(path, b"old")

    def disk_full(fd: int, data: bytes | bytearray) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files, "write_all", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_atomically(path, b"new")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["identity.json"]


def test_a_private_file_is_0600_whatever_the_umask_and_a_public_one_follows_it(
        tmp_path: Path) -> None:
    old_umask = os.umask(0)
    try:
        write_atomically(tmp_path / "key.pem", b"secret", private=True)
        write_atomically(tmp_path / "open.json", b"{}")
        os.umask(0o077)
        write_atomically(tmp_path / "closed.json", b"{}")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "open.json").stat().st_mode) == 0o666
    assert stat.S_IMODE((tmp_path / "closed.json").stat().st_mode) == 0o600


def test_a_link_planted_at_the_temporary_name_is_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"untouched")
    (tmp_path / "secret.tmp").symlink_to(elsewhere)
    write_atomically(tmp_path / "secret", b"s3cret", private=True)
    assert elsewhere.read_bytes() == b"untouched"
    assert (tmp_path / "secret").read_bytes() == b"s3cret"
