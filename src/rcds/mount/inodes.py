"""Inode numbers of the mount and the table of inodes the kernel knows.

The kernel names every file by its inode number (the FUSE node id, also shown as ``st_ino``).
Numbers come from the client's stable inodes (:func:`rcds.client.tree.stat.inode_of`: a hash of
the path, or of the hard-link group), with two changes:

* the root of a mounted repository is FUSE's root node 1 (one repository mounted), or a number
  derived from the repository name (``--root``, several repositories under one directory, whose
  other inode numbers are mixed with the name so that they do not collide);
* a regular file's number also depends on its content (hash and size). The kernel keeps file
  pages per inode, so a file whose content changes in a new revision must get a new inode:
  a process that still has the old file open keeps reading the old pages and content, and a
  new ``open`` reads the new content, never a mix. Within a revision, and across revisions for
  an unchanged file, the number is stable (hard links share theirs).
"""

from __future__ import annotations

import hashlib
import os
import stat as stat_mod
from dataclasses import dataclass, field

from rcds.client.tree.stat import BLOCK, inode_of
from rcds.format.dirent import Dirent

FUSE_ROOT = 1
_LOW = 1024
_SPACE = (1 << 63) - _LOW


def _mix(*parts: str) -> int:
    digest = hashlib.blake2b("\0".join(parts).encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return _LOW + int.from_bytes(digest, "little") % _SPACE


class InodeSpace:
    """Inode numbers of one repository in the mount (see the module docstring).

    ``shared``: several repositories share the mount (``--root``), so numbers are mixed with
    the repository name and the root is not node 1.
    """

    def __init__(self, fqrn: str, *, shared: bool) -> None:
        self.fqrn = fqrn
        self.shared = shared
        self.root = _mix("repo", fqrn) if shared else FUSE_ROOT

    def of(self, entry: Dirent, catalog_mountpoint: str) -> int:
        """The inode number of ``entry`` (found in the catalog mounted at ``catalog_mountpoint``)."""
        if entry.path == "":
            return self.root
        base = inode_of(entry, catalog_mountpoint)
        if (entry.mode & 0o170000) == stat_mod.S_IFREG:
            content = entry.hash.hex if entry.hash is not None else "-"
            return _mix("file", self.fqrn if self.shared else "", str(base), content, str(entry.size))
        return _mix("ino", self.fqrn, str(base)) if self.shared else base


def entry_stat(entry: Dirent, ino: int, owner: tuple[int, int] | None) -> os.stat_result:
    """The attributes the mount shows for ``entry``: inode ``ino``, owned by ``owner`` if given
    (else the catalog's uid/gid), ``st_dev`` 0. Equal to ``restamp(make_stat(...), ino, owner)``
    (:mod:`rcds.mount.repomount`) in one ``stat_result`` and without hashing the path (a listing
    makes one per entry)."""
    ns = entry.mtime * 1_000_000_000 + (entry.mtimens or 0)
    seconds = ns / 1e9
    mode = entry.mode
    if not stat_mod.S_IFMT(mode):  # as make_stat: a row without a type bit is shown as a file
        mode |= stat_mod.S_IFREG
    size = entry.size
    uid, gid = owner if owner is not None else (entry.uid, entry.gid)
    return os.stat_result(
        (mode, ino, 0, max(1, entry.link_count), uid, gid, size, seconds, seconds, seconds),
        {
            "st_atime_ns": ns,
            "st_mtime_ns": ns,
            "st_ctime_ns": ns,
            "st_blksize": 4096,
            "st_blocks": (size + BLOCK - 1) // BLOCK,
        },
    )


@dataclass(eq=False, slots=True)
class Node:
    """An inode the kernel holds: what it is, and under which names it looked it up.

    ``stat`` is the attributes when last resolved (kept for a node whose path vanished in a new
    revision, so ``fstat`` of a file opened before still answers); ``revision`` the revision of
    that resolution. ``links`` are the (parent inode, name) pairs the kernel may have cached.
    """

    ino: int
    fqrn: str
    path: str
    entry: Dirent | None
    stat: os.stat_result
    revision: int
    lookups: int = 0
    links: set[tuple[int, bytes]] = field(default_factory=set)
    stale: bool = False

    @property
    def is_dir(self) -> bool:
        """A directory."""
        return stat_mod.S_ISDIR(self.stat.st_mode)


class NodeTable:
    """The inodes the kernel knows, with FUSE lookup counts (forgotten at zero)."""

    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {}
        self.negative: dict[tuple[int, bytes], None] = {}
        self.negative_limit = 65536

    def get(self, ino: int) -> Node | None:
        """The node with inode ``ino``."""
        return self.nodes.get(ino)

    def looked_up(self, node: Node, parent: int, name: bytes) -> Node:
        """Record a successful lookup of ``name`` in ``parent`` answered with ``node``.

        An existing node with the same number is updated (new attributes, one more lookup).
        """
        known = self.nodes.get(node.ino)
        if known is None:
            known = self.nodes[node.ino] = node
        else:
            if node.revision >= known.revision:
                known.path, known.entry, known.stat, known.revision = (
                    node.path,
                    node.entry,
                    node.stat,
                    node.revision,
                )
                known.stale = False
        known.lookups += 1
        known.links.add((parent, name))
        self.negative.pop((parent, name), None)
        return known

    def add_negative(self, parent: int, name: bytes) -> None:
        """Record that ``name`` in ``parent`` was answered as absent (the kernel may cache that)."""
        if len(self.negative) >= self.negative_limit:
            self.negative.pop(next(iter(self.negative)))
        self.negative[(parent, name)] = None

    def forget(self, ino: int, count: int) -> None:
        """The kernel dropped ``count`` lookups of ``ino``."""
        node = self.nodes.get(ino)
        if node is None or ino == FUSE_ROOT:
            return
        node.lookups -= count
        if node.lookups <= 0:
            del self.nodes[ino]

    def of_repository(self, fqrn: str) -> list[Node]:
        """Every node of one repository."""
        return [n for n in self.nodes.values() if n.fqrn == fqrn]
