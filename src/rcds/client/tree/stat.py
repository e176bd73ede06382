"""``os.stat_result`` values for catalog entries, with stable inode numbers.

Stock numbers inodes per mounted catalog (an offset per catalog plus the row id), so its inode
numbers change between mounts. rcds derives them from a hash instead, which keeps them stable
across processes and revisions for as long as a path exists: the inode of an entry is a
64-bit BLAKE2b of its path, and every member of a hard-link group shares the inode of the
group (its catalog mount point plus the group number). The repository root has inode 256, as
in stock. ``st_dev`` is derived from the repository name.
"""

from __future__ import annotations

import hashlib
import os
import stat as stat_mod

from rcds.format.dirent import Dirent

ROOT_INODE = 256
_INODE_SPACE = (1 << 62) - ROOT_INODE - 1
BLOCK = 512


def _hash64(text: str) -> int:
    digest = hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def device_of(fqrn: str) -> int:
    """A stable ``st_dev`` for a repository (a 31-bit hash of its name)."""
    return _hash64("dev\0" + fqrn) & 0x7FFFFFFF


def inode_of(entry: Dirent, catalog_mountpoint: str) -> int:
    """The stable inode number of ``entry``, found in the catalog mounted at ``catalog_mountpoint``."""
    if entry.path == "":
        return ROOT_INODE
    group = entry.hardlink_group
    key = f"hl\0{catalog_mountpoint}\0{group}" if group else f"path\0{entry.path}"
    return ROOT_INODE + 1 + _hash64(key) % _INODE_SPACE


def make_stat(entry: Dirent, catalog_mountpoint: str, dev: int) -> os.stat_result:
    """An ``os.stat_result`` for a catalog entry (atime and ctime equal mtime)."""
    ns = entry.mtime * 1_000_000_000 + (entry.mtimens or 0)
    seconds = ns / 1e9
    mode = entry.mode
    if not stat_mod.S_IFMT(mode):  # defensive: a row without a type bit is shown as a file
        mode |= stat_mod.S_IFREG
    size = entry.size
    return os.stat_result(
        (
            mode,
            inode_of(entry, catalog_mountpoint),
            dev,
            max(1, entry.link_count),
            entry.uid,
            entry.gid,
            size,
            int(seconds),
            int(seconds),
            int(seconds),
        ),
        {
            "st_atime": seconds,
            "st_mtime": seconds,
            "st_ctime": seconds,
            "st_atime_ns": ns,
            "st_mtime_ns": ns,
            "st_ctime_ns": ns,
            "st_blksize": 4096,
            "st_blocks": (size + BLOCK - 1) // BLOCK,
        },
    )
