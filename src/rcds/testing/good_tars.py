"""Well-formed tarballs an ingest engine must accept, with the listing it must produce.

One rich tree (non-ASCII names, relative and absolute symlinks, hard links in one
directory and across directories, an empty file, an executable, a 0600 file, an empty
directory, a path longer than 100 bytes, distinct mtimes) is written in each compression
(plain, gzip, bzip2, xz, zstd) and in the three tar dialects (pax, GNU, ustar).
"""

from __future__ import annotations

import random
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from rcds.testing.tarbuild import MTIME, Compression, Expected, compress, member, sha1, tar

TarDialect = Literal["pax", "gnu", "ustar"]

_DIALECTS: Final[dict[TarDialect, int]] = {
    "pax": tarfile.PAX_FORMAT,
    "gnu": tarfile.GNU_FORMAT,
    "ustar": tarfile.USTAR_FORMAT,
}
_VARIANTS: Final[list[tuple[Compression, TarDialect]]] = [
    ("none", "pax"),
    ("gzip", "gnu"),
    ("bzip2", "ustar"),
    ("xz", "pax"),
    ("zstd", "gnu"),
]
LONG_DIR: Final = "deep/" + "x" * 90
LONG_FILE: Final = LONG_DIR + "/" + "y" * 90 + ".txt"


@dataclass(frozen=True, slots=True)
class GoodTarball:
    """A valid archive: ``data`` in ``compression`` and ``dialect``, and its ``listing``.

    Hard-link members are stored with their target's mode and mtime, as tar writes them.
    """

    name: str
    compression: Compression
    dialect: TarDialect
    data: bytes
    listing: Mapping[str, Expected]


class _Tree:
    def __init__(self) -> None:
        self.members: list[tuple[tarfile.TarInfo, bytes]] = []
        self.listing: dict[str, Expected] = {}

    def _mtime(self) -> int:
        return MTIME + 1000 * len(self.members)

    def dir(self, path: str, mode: int = 0o755) -> None:
        mtime = self._mtime()
        self.members.append(member(path, kind=tarfile.DIRTYPE, mode=mode, mtime=mtime))
        self.listing[path] = Expected("dir", mode, mtime=mtime)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        mtime = self._mtime()
        self.members.append(member(path, data, mode=mode, mtime=mtime))
        self.listing[path] = Expected("file", mode, len(data), sha1(data), mtime=mtime)

    def symlink(self, path: str, target: str) -> None:
        mtime = self._mtime()
        self.members.append(member(path, kind=tarfile.SYMTYPE, mode=0o777, linkname=target, mtime=mtime))
        self.listing[path] = Expected("symlink", 0o777, target=target, mtime=mtime)

    def hardlink(self, path: str, target: str) -> None:
        t = self.listing[target]
        self.members.append(member(path, kind=tarfile.LNKTYPE, mode=t.mode, linkname=target, mtime=t.mtime))
        self.listing[path] = Expected("hardlink", t.mode, t.size, t.sha1, target, t.mtime)


def _tree() -> _Tree:
    t = _Tree()
    t.dir("bin")
    t.file("bin/tool", b"#!/bin/sh\necho tool\n", 0o755)
    t.hardlink("bin/tool-alias", "bin/tool")
    t.symlink("bin/run", "tool")
    t.dir("lib")
    t.file("lib/data.bin", random.Random(7).randbytes(3000))
    t.dir("share")
    t.hardlink("share/data-copy.bin", "lib/data.bin")
    t.symlink("share/current", "../lib/data.bin")
    t.symlink("etc-link", "/cvmfs/config-osg.opensciencegrid.org/etc")
    t.file("empty.txt", b"")
    t.file("secret.cfg", b"token=none\n", 0o600)
    t.dir("emptydir")
    t.dir("données")
    t.file("données/été.txt", "ça va\n".encode())
    t.file("日本語.txt", "こんにちは\n".encode())
    t.dir("deep")
    t.dir(LONG_DIR)
    t.file(LONG_FILE, b"long path\n")
    return t


def good_tarballs() -> list[GoodTarball]:
    """The well-formed archives, one per (compression, dialect) variant."""
    tree = _tree()
    out = []
    for comp, dialect in _VARIANTS:
        data = compress(tar(tree.members, _DIALECTS[dialect]), comp)
        out.append(GoodTarball(f"{comp}-{dialect}", comp, dialect, data, dict(tree.listing)))
    return out
