"""Directory listings for ``READDIR``/``READDIRPLUS``, made once per directory and revision.

The kernel keeps what we send in its own cache (no-opendir mode), so a directory is normally
listed once per revision; the listings are also kept here, so a listing the kernel dropped (or
one read in several parts) needs no catalog query. With ``READDIRPLUS`` every entry but ``.``
and ``..`` comes with its attributes and counts as a lookup (one kernel reference).
"""

from __future__ import annotations

import errno
import os
from typing import TYPE_CHECKING

from rcds.errors import FuseReplyError
from rcds.format.dirent import FLAG_BIND_MOUNTPOINT, FLAG_NESTED_MOUNTPOINT
from rcds.mount.fuse import notify
from rcds.mount.fuse import protocol as p
from rcds.mount.fuse.session import Later, Payload, Request, Session
from rcds.mount.inodes import FUSE_ROOT, Node
from rcds.mount.readonly import guarded
from rcds.mount.repomount import RepoMount

if TYPE_CHECKING:
    from rcds.mount.operations import RcdsOperations

LISTING_CACHE_SIZE = 4096
"""Directory listings kept (oldest dropped first)."""
Listed = tuple[bytes, Node]


class Listings:
    """The listing handlers of ``ops`` (see the module docstring)."""

    def __init__(self, ops: RcdsOperations) -> None:
        self.ops = ops
        self._cache: dict[tuple[str, str], tuple[int, list[Listed]]] = {}
        self._names: dict[tuple[str, str], dict[bytes, Node]] = {}
        """The same listings by name (for lookups)."""

    def forget_top(self) -> None:
        """The directory of repositories changed (a repository appeared): the kernel's copy of
        its listing is dropped (from a worker thread: not inside a request on it)."""
        session = self.ops.session
        if session is not None:
            self.ops.pool.submit(_inval_top, session)

    def child(self, mount: RepoMount, path: str, name: bytes, revision: int) -> Node | None:
        """A new node for the entry ``name`` of the directory ``path`` if that directory was
        listed in ``revision`` (a lookup after a listing then needs no catalog query); None
        if not listed, or not listed there (the caller asks the catalog)."""
        key = (mount.fqrn, path)
        known = self._cache.get(key)
        if known is None or known[0] != revision:
            return None
        found = self._names.get(key, {}).get(name)
        if found is None:
            return None
        return Node(found.ino, found.fqrn, found.path, found.entry, found.stat, found.revision)

    def readdir(self, req: Request) -> Payload | Later:
        """Names, inode numbers and types from an offset on."""
        return self._answer(req, plus=False)

    def readdirplus(self, req: Request) -> Payload | Later:
        """Like :meth:`readdir`, each entry with its attributes (and one more reference)."""
        return self._answer(req, plus=True)

    def _answer(self, req: Request, plus: bool) -> Payload | Later:
        _, offset, size, *_ = p.READ_IN.unpack_from(req.body)
        node = self.ops.node(req.nodeid)
        if not node.is_dir:
            raise FuseReplyError(errno.ENOTDIR)
        if self.ops.is_top(node):
            return self._pack(node, self._top(), offset, size, plus)
        mount = self.ops.mount_of(node)
        known = self._cache.get((mount.fqrn, node.path))
        if known is not None and known[0] == mount.repo.revision:
            return self._pack(node, known[1], offset, size, plus)
        if _catalog_loaded(mount, node):  # a few catalog queries: no thread hop for them
            return self._slow(node, mount, offset, size, plus)
        return Later(self._slow, node, mount, offset, size, plus)

    def _slow(self, node: Node, mount: RepoMount, offset: int, size: int, plus: bool) -> Payload:
        return self._pack(node, self._children(mount, node.path), offset, size, plus)

    def _top(self) -> list[Listed]:
        ops = self.ops
        out: list[Listed] = []
        for name in sorted(ops.mounts):
            root = ops.table.get(ops.mounts[name].space.root)
            if root is not None:
                out.append((os.fsencode(name), root))
        return out

    def _children(self, mount: RepoMount, path: str) -> list[Listed]:
        """The visible entries of a directory in the mounted revision (kept per revision)."""
        here, children = guarded(mount, mount.listing, path)
        listed: list[Listed] = []
        for c in children:
            if c.stat is not None and c.located is not None:
                child = Node(c.ino, mount.fqrn, c.path, c.located.entry, c.stat, c.revision)
                listed.append((os.fsencode(c.path.rpartition("/")[2]), child))
        key = (mount.fqrn, path)
        if len(self._cache) >= LISTING_CACHE_SIZE:
            oldest = next(iter(self._cache), None)
            if oldest is not None:
                self._cache.pop(oldest, None)
                self._names.pop(oldest, None)
        self._names[key] = dict(listed)
        self._cache[key] = (here.revision, listed)
        return listed

    def _pack(self, node: Node, children: list[Listed], offset: int, size: int, plus: bool) -> bytes:
        """The records from ``offset`` on (0 and 1 are ``.`` and ``..``) that fit in ``size``."""
        ops = self.ops
        parent_ino = FUSE_ROOT if node.path == "" else 0
        records: list[bytes] = []
        used = 0
        counted: list[Listed] = []
        no_entry = p.negative_entry(0) if plus else b""
        sec, nsec = p.split_seconds(ops.kcache)
        head, attr, dirent = p.ENTRY_OUT_HEAD.pack, p.pack_attr, p.dirent
        for i in range(offset, len(children) + 2):
            if i == 0:
                name, ino, mode, entry = b".", node.ino, node.stat.st_mode, no_entry
            elif i == 1:
                name, ino, mode, entry = b"..", parent_ino or node.ino, node.stat.st_mode, no_entry
            else:
                name, child = children[i - 2]
                ino, mode = child.ino, child.stat.st_mode
                entry = head(ino, 0, sec, sec, nsec, nsec) + attr(child.stat) if plus else b""
            record = entry + dirent(ino, i + 1, name, mode)
            if used + len(record) > size:
                break
            records.append(record)
            used += len(record)
            if plus and i >= 2:
                counted.append(children[i - 2])
        if counted:
            with ops.lock:
                table = ops.table
                for name, child in counted:
                    if table.get(child.ino) is None:  # the table's nodes change; the listing's must not
                        child = Node(
                            child.ino, child.fqrn, child.path, child.entry, child.stat, child.revision
                        )
                    table.looked_up(child, node.ino, name)
        return b"".join(records)


def _catalog_loaded(mount: RepoMount, node: Node) -> bool:
    """True if listing the directory ``node`` needs no download: it was found recently in the
    mounted revision, or its parent was and it is no nested catalog's mount point (so it is
    in its parent's catalog, which is loaded)."""
    path = node.path
    with mount.repo.using() as m:
        if m.revision != node.revision:
            return False
        if m.known_directory(path) is not None:
            return True
        e = node.entry
        if e is None or e.flags & (FLAG_NESTED_MOUNTPOINT | FLAG_BIND_MOUNTPOINT) or not path:
            return False
        return m.known_directory(path.rpartition("/")[0]) is not None


def _inval_top(session: Session) -> None:
    notify.inval_inode(session, FUSE_ROOT)
