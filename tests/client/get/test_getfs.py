"""getfs.write_file: in place when the name is free, atomic replacement otherwise, no leftovers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import pytest

from rcds.client.get.fs import write_file
from rcds.errors import IntegrityError, StorageError


class Attrs(NamedTuple):
    path: str
    mode: int
    size: int
    mtime: int
    mtimens: int | None = None


def _attrs(data: bytes, mode: int = 0o100644) -> Attrs:
    return Attrs("/repo/f", mode, len(data), 1_600_000_000, 5)


def _names(d: Path) -> list[str]:
    return sorted(os.listdir(d))


def test_a_free_name_is_written_in_place_with_mode_and_mtime(tmp_path: Path) -> None:
    final = tmp_path / "f"
    write_file(str(final), _attrs(b"hello", 0o100755), b"hello")
    st = os.stat(final)
    assert final.read_bytes() == b"hello" and st.st_mode & 0o777 == 0o755
    assert st.st_mtime_ns == 1_600_000_000 * 10**9 + 5
    assert _names(tmp_path) == ["f"]


def test_an_existing_file_is_replaced_atomically(tmp_path: Path) -> None:
    final = tmp_path / "f"
    final.write_bytes(b"old content")
    with open(final, "rb") as reader:  # a reader of the old file keeps its content
        write_file(str(final), _attrs(b"new"), b"new")
        assert reader.read() == b"old content"
    assert final.read_bytes() == b"new" and _names(tmp_path) == ["f"]


@pytest.mark.parametrize("what", ["dangling symlink", "symlink to a file", "empty directory"])
def test_what_is_in_the_way_is_replaced_never_followed(tmp_path: Path, what: str) -> None:
    final, target = tmp_path / "f", tmp_path / "target"
    if what == "dangling symlink":
        final.symlink_to(target)
    elif what == "symlink to a file":
        target.write_bytes(b"keep me")
        final.symlink_to(target)
    else:
        final.mkdir()
    write_file(str(final), _attrs(b"data"), b"data")
    assert not final.is_symlink() and final.read_bytes() == b"data"
    assert not target.exists() or target.read_bytes() == b"keep me"


@pytest.mark.parametrize("existing", [False, True])
def test_a_wrong_size_leaves_nothing_behind(tmp_path: Path, existing: bool) -> None:
    final = tmp_path / "f"
    if existing:
        final.write_bytes(b"old")
    with pytest.raises(IntegrityError, match="catalog says 10"):
        write_file(str(final), Attrs("/repo/f", 0o100644, 10, 0), b"short")
    assert _names(tmp_path) == (["f"] if existing else [])
    if existing:
        assert final.read_bytes() == b"old"


@pytest.mark.parametrize("existing", [False, True])
def test_a_failing_fill_leaves_nothing_behind(tmp_path: Path, existing: bool) -> None:
    final = tmp_path / "f"
    if existing:
        final.write_bytes(b"old")

    def fill(fd: int) -> int:
        os.write(fd, b"part")
        raise OSError(28, "No space left on device")

    with pytest.raises(StorageError, match="No space left"):
        write_file(str(final), _attrs(b"whole content"), fill=fill)
    assert _names(tmp_path) == (["f"] if existing else [])


def test_an_interrupt_leaves_nothing_behind(tmp_path: Path) -> None:
    def fill(fd: int) -> int:
        os.write(fd, b"part")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_file(str(tmp_path / "f"), _attrs(b"whole content"), fill=fill)
    assert _names(tmp_path) == []
