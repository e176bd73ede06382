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
from rcds.mount.inodes import FUSE_ROOT, Node, entry_stat
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
        self._records: dict[tuple[str, str, bool], tuple[list[Listed], list[bytes]]] = {}
        """Per listing (and kind: ``READDIR`` or ``READDIRPLUS``) its packed records."""

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
            return self._pack(node, self._top(), offset, size, plus, keep=False)
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
        """The visible entries of a directory in the mounted revision (kept per revision).

        Made straight from the catalog rows (:meth:`RepoMount.listing`: one inode number, one
        ``stat_result`` and one :class:`Node` per entry, no intermediate objects; a listing
        makes thousands per second during a scan)."""
        rows, revision = guarded(mount, mount.listing, path)
        space_of, owner, fqrn = mount.space.of, mount.owner, mount.fqrn
        listed: list[Listed] = []
        for c in rows:
            e = c.entry
            ino = space_of(e, c.catalog.mountpoint)
            child = Node(ino, fqrn, e.path, e, entry_stat(e, ino, owner), revision)
            listed.append((os.fsencode(e.name), child))
        key = (mount.fqrn, path)
        if len(self._cache) >= LISTING_CACHE_SIZE:
            oldest = next(iter(self._cache), None)
            if oldest is not None:
                self._cache.pop(oldest, None)
                self._names.pop(oldest, None)
        self._names[key] = dict(listed)
        self._cache[key] = (revision, listed)
        return listed

    def _pack(
        self, node: Node, children: list[Listed], offset: int, size: int, plus: bool, keep: bool = True
    ) -> bytes:
        """The records from ``offset`` on (0 and 1 are ``.`` and ``..``) that fit in ``size``;
        with ``plus``, each child sent counts as a lookup."""
        records = self._records_of(node, children, plus, keep)
        end = offset
        used = 0
        while end < len(records):
            used += len(records[end])
            if used > size:
                break
            end += 1
        if plus and end > 2:
            counted = children[max(offset, 2) - 2 : end - 2]
            ops = self.ops
            with ops.lock:
                table = ops.table
                for name, child in counted:
                    if table.get(child.ino) is None:  # the table's nodes change; the listing's must not
                        child = Node(
                            child.ino, child.fqrn, child.path, child.entry, child.stat, child.revision
                        )
                    table.looked_up(child, node.ino, name)
        return b"".join(records[offset:end])

    def _records_of(self, node: Node, children: list[Listed], plus: bool, keep: bool) -> list[bytes]:
        """Every record of a listing, packed once (``keep``: kept with the listing, so the
        ``READDIRPLUS`` requests that read a directory part by part pack nothing twice)."""
        key = (node.fqrn, node.path, plus)
        known = self._records.get(key) if keep else None
        if known is not None and known[0] is children:
            return known[1]
        parent_ino = FUSE_ROOT if node.path == "" else node.ino
        no_entry = p.negative_entry(0) if plus else b""
        dirent = p.dirent
        mode = node.stat.st_mode
        records = [no_entry + dirent(node.ino, 1, b".", mode), no_entry + dirent(parent_ino, 2, b"..", mode)]
        append = records.append
        if plus:
            sec, nsec = p.split_seconds(self.ops.kcache)
            head, attr = p.ENTRY_OUT_HEAD.pack, p.pack_attr
            for i, (name, child) in enumerate(children, 3):
                ino, st = child.ino, child.stat
                append(head(ino, 0, sec, sec, nsec, nsec) + attr(st) + dirent(ino, i, name, st.st_mode))
        else:
            for i, (name, child) in enumerate(children, 3):
                append(dirent(child.ino, i, name, child.stat.st_mode))
        if keep:
            if len(self._records) >= 2 * LISTING_CACHE_SIZE:
                self._records.clear()
            self._records[key] = (children, records)
        return records


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
