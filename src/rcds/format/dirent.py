"""Catalog rows: flag bits and the directory entry record."""

from __future__ import annotations

import stat
from typing import Any, NamedTuple

from rcds.format.hashes import Algorithm, ContentHash
from rcds.record import SlotRecord

FLAG_DIR = 1
FLAG_NESTED_MOUNTPOINT = 2
FLAG_FILE = 4
FLAG_LINK = 8
FLAG_SPECIAL = 16
FLAG_NESTED_ROOT = 32
FLAG_CHUNKED = 64
FLAG_EXTERNAL = 128
FLAG_BIND_MOUNTPOINT = 0x4000
FLAG_HIDDEN = 0x8000
FLAG_DIRECT_IO = 0x10000
_ALGO_SHIFT = 8
_COMPRESSION_SHIFT = 11
_S_IFMT = 0o170000
_S_IFDIR = stat.S_IFDIR
_S_IFREG = stat.S_IFREG
_S_IFLNK = stat.S_IFLNK

COMPRESSION_ZLIB = 0
COMPRESSION_NONE = 1


def file_flags(algorithm: Algorithm, *, chunked: bool = False, compression: int = COMPRESSION_ZLIB) -> int:
    """Flags of a regular file row, composed as the stock writer does."""
    flags = FLAG_FILE | (compression << _COMPRESSION_SHIFT) | (algorithm.flag_value << _ALGO_SHIFT)
    return flags | FLAG_CHUNKED if chunked else flags


ALGORITHM_OF_FLAG_VALUE: tuple[Algorithm | None, ...] = tuple(
    next((a for a in Algorithm if a.flag_value == v), None) for v in range(8)
)
"""The algorithm of each value of flag bits 8-10 (``(flags >> 8) & 7``); None if unknown."""


def algorithm_of_flags(flags: int) -> Algorithm:
    """The content-hash algorithm encoded in flag bits 8-10 (IntegrityError if unknown)."""
    algo = ALGORITHM_OF_FLAG_VALUE[(flags >> _ALGO_SHIFT) & 7]
    return Algorithm.from_flag_value((flags >> _ALGO_SHIFT) & 7) if algo is None else algo


def link_count_field(count: int, group: int = 0) -> int:
    """The ``hardlinks`` column: ``(group << 32) + linkcount``."""
    return (group << 32) | count


class Dirent(SlotRecord):
    """One row of the ``catalog`` table, with the full path it was found under.

    A mutable record (compared field by field, unhashable); :meth:`replace` makes a changed copy.
    """

    __match_args__ = (
        "path",
        "name",
        "mode",
        "size",
        "mtime",
        "flags",
        "hardlinks",
        "hash",
        "symlink",
        "uid",
        "gid",
        "mtimens",
        "xattr",
    )
    __slots__ = __match_args__

    path: str
    name: str
    mode: int
    size: int
    mtime: int
    flags: int
    hardlinks: int
    hash: ContentHash | None
    symlink: str
    uid: int
    gid: int
    mtimens: int | None
    xattr: bytes | None

    def __init__(
        self,
        path: str,
        name: str,
        mode: int,
        size: int,
        mtime: int,
        flags: int,
        hardlinks: int = 1,
        hash: ContentHash | None = None,
        symlink: str = "",
        uid: int = 0,
        gid: int = 0,
        mtimens: int | None = None,
        xattr: bytes | None = None,
    ) -> None:
        self.path = path
        self.name = name
        self.mode = mode
        self.size = size
        self.mtime = mtime
        self.flags = flags
        self.hardlinks = hardlinks
        self.hash = hash
        self.symlink = symlink
        self.uid = uid
        self.gid = gid
        self.mtimens = mtimens
        self.xattr = xattr

    def _values(self) -> tuple[Any, ...]:  # the fields in order, faster than the generic loop
        return (
            self.path,
            self.name,
            self.mode,
            self.size,
            self.mtime,
            self.flags,
            self.hardlinks,
            self.hash,
            self.symlink,
            self.uid,
            self.gid,
            self.mtimens,
            self.xattr,
        )

    def replace(self, **changes: Any) -> Dirent:
        """A copy with some fields changed (as ``dataclasses.replace`` makes one)."""
        values = dict(zip(self.__match_args__, self._values(), strict=True))
        values.update(changes)
        return self.__class__(**values)

    @property
    def is_dir(self) -> bool:
        """A directory (type from ``mode``, as the client decides)."""
        return (self.mode & _S_IFMT) == _S_IFDIR

    @property
    def is_regular(self) -> bool:
        """A regular file."""
        return (self.mode & _S_IFMT) == _S_IFREG

    @property
    def is_symlink(self) -> bool:
        """A symbolic link."""
        return (self.mode & _S_IFMT) == _S_IFLNK

    @property
    def is_chunked(self) -> bool:
        """A regular file stored as chunks (see the ``chunks`` table)."""
        return bool(self.flags & FLAG_CHUNKED)

    @property
    def is_nested_mountpoint(self) -> bool:
        """The row in a parent catalog where a nested catalog is mounted."""
        return bool(self.flags & FLAG_NESTED_MOUNTPOINT)

    @property
    def is_nested_root(self) -> bool:
        """The root row of a nested catalog."""
        return bool(self.flags & FLAG_NESTED_ROOT)

    @property
    def is_hidden(self) -> bool:
        """Not shown in listings."""
        return bool(self.flags & FLAG_HIDDEN)

    @property
    def is_external(self) -> bool:
        """Content lives outside the repository."""
        return bool(self.flags & FLAG_EXTERNAL)

    @property
    def algorithm(self) -> Algorithm:
        """The content-hash algorithm from flag bits 8-10."""
        return algorithm_of_flags(self.flags)

    @property
    def compressed(self) -> bool:
        """True unless the compression bits say 'none'."""
        return ((self.flags >> _COMPRESSION_SHIFT) & 7) == COMPRESSION_ZLIB

    @property
    def link_count(self) -> int:
        """st_nlink (lower 32 bits of ``hardlinks``)."""
        return self.hardlinks & 0xFFFFFFFF

    @property
    def hardlink_group(self) -> int:
        """Hard-link group id (upper 32 bits of ``hardlinks``); 0 = none."""
        return self.hardlinks >> 32


class Chunk(NamedTuple):
    """One piece of a chunked file: uncompressed offset and size, and its ``P`` object hash."""

    offset: int
    size: int
    hash: ContentHash
