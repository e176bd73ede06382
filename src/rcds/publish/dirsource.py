"""Directory input: walk a local tree and yield members under the same policy as tarballs."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from rcds.errors import InputError
from rcds.publish.members import Kind, Member
from rcds.publish.policy import Limits, check_symlink, normalise_name, sanitise_mode


def _file_reader(path: str, opened: list[BinaryIO]) -> Callable[[int], bytes]:
    def read(n: int) -> bytes:
        if not opened:
            opened.append(open(path, "rb"))  # noqa: SIM115 - closed by iter_directory
        return opened[0].read(n)

    return read


def iter_directory(root: Path, limits: Limits | None = None) -> Iterator[Member]:
    """Yield the members of a directory tree, parents first, names sorted."""
    limits = limits or Limits()
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root} is not a directory", str(root))
    seen_inodes: dict[tuple[int, int], str] = {}
    total = 0
    count = 0
    stack = [""]
    while stack:
        rel = stack.pop()
        full = os.path.join(root, rel) if rel else str(root)
        st = os.lstat(full)
        member = _member(rel, full, st, limits, seen_inodes)
        count += 1
        if count > limits.max_members:
            raise InputError(f"the directory has more than {limits.max_members} entries", rel)
        opened: list[BinaryIO] = []
        if member.kind is Kind.FILE:
            total += member.size
            if total > limits.max_bytes:
                raise InputError(f"the directory holds more than {limits.max_bytes} bytes", rel)
            member.read = _file_reader(full, opened)
        try:
            yield member
        finally:
            for f in opened:
                f.close()
        if member.kind is Kind.DIR:
            names = sorted(os.listdir(full), key=os.fsencode, reverse=True)
            stack.extend(f"{rel}/{n}" if rel else n for n in names)


def _member(
    rel: str, full: str, st: os.stat_result, limits: Limits, seen: dict[tuple[int, int], str]
) -> Member:
    path = normalise_name(rel, limits) if rel else ""
    common = {
        "mode": sanitise_mode(st.st_mode),
        "mtime": int(st.st_mtime),
        "mtimens": st.st_mtime_ns % 1_000_000_000,
        "uid": st.st_uid,
        "gid": st.st_gid,
    }
    if stat.S_ISDIR(st.st_mode):
        return Member(path, Kind.DIR, **common)  # type: ignore[arg-type]
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(full)
        check_symlink(path, target)
        return Member(path, Kind.SYMLINK, target=target, **common)  # type: ignore[arg-type]
    if stat.S_ISREG(st.st_mode):
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in seen:
            return Member(path, Kind.HARDLINK, target=seen[key], **common)  # type: ignore[arg-type]
        if st.st_nlink > 1:
            seen[key] = path
        return Member(path, Kind.FILE, size=st.st_size, **common)  # type: ignore[arg-type]
    raise InputError(
        f"{full} is a device, FIFO or socket; only files, directories and links can be published", rel
    )
