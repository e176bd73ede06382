"""What an input (tarball or directory) yields: one normalised member at a time."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum


class Kind(Enum):
    """Member types rcds accepts."""

    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"


@dataclass(slots=True)
class Member:
    """A normalised input member.

    ``path`` is relative to the ingest target, ``/``-separated, without ``.``/``..``/empty parts;
    ``""`` is the target directory itself. ``target`` is a symlink's target or a hard link's
    normalised member path. ``read(n)`` returns up to ``n`` bytes of a file's content.
    """

    path: str
    kind: Kind
    mode: int
    mtime: int
    size: int = 0
    target: str = ""
    uid: int = 0
    gid: int = 0
    mtimens: int | None = None
    read: Callable[[int], bytes] | None = None

    @property
    def display(self) -> str:
        """The member's name for messages."""
        return self.path or "."


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A regular file an input is read from by offset (a plain tarball on disk).

    ``path`` opens the same file in another process, which checks ``identity`` (device, inode,
    size, modification time in ns: a file replaced or changed since the ingest began is refused);
    ``fd`` is the ingest process's own descriptor, read with ``pread`` (its offset untouched).
    """

    path: str
    identity: tuple[int, int, int, int]
    fd: int


def file_identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """Device, inode, size and modification time (ns) of a file: what changes if it is replaced
    or written to."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class FileRange:
    """A file member's data as a byte range of a :class:`SourceFile`; called like ``read(n)``.

    Worker processes read such a range themselves (no data crosses a pipe); the ingest process
    reads it with ``pread`` when it keeps the content (large files, no workers).
    """

    __slots__ = ("_done", "name", "offset", "size", "source")

    def __init__(self, source: SourceFile, offset: int, size: int, name: str) -> None:
        self.source = source
        self.offset = offset
        self.size = size
        self.name = name
        self._done = 0

    def __call__(self, n: int) -> bytes:
        n = min(n, self.size - self._done)
        if n <= 0:
            return b""
        data = os.pread(self.source.fd, n, self.offset + self._done)
        self._done += len(data)
        return data
