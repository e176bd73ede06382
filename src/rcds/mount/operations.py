"""The FUSE request handlers (inode based) over one or several repositories.

Handlers run on the session's reader threads (:mod:`rcds.mount.fuse.session`). Work that
needs no download (a lookup in a directory whose catalog is loaded, a listing already made, a
read of an object in the local cache) is answered at once; anything that may download returns
:class:`~rcds.mount.fuse.session.Later` and runs on the bounded worker pool, so many readers
are served at once and a slow download never holds up other requests.

The kernel is asked to cache as much as it can: names and attributes for the kernel cache
timeout, file pages (no-open mode: after the first ``OPEN`` is answered ``ENOSYS`` the kernel
never sends ``OPEN``/``RELEASE`` again, reads name the inode, pages are kept) and directory
listings (no-opendir mode: listings kept in the kernel's page cache until invalidated), and
symbolic links. New revisions invalidate what changed (:mod:`rcds.mount.revisions`). Writes
get ``EROFS``.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import os
import stat as stat_mod
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from rcds.client.tree.files import RepoFile
from rcds.errors import FuseReplyError, RcdsError
from rcds.mount import xattrs
from rcds.mount.directories import Listings
from rcds.mount.fuse import protocol as p
from rcds.mount.fuse.passthrough import CACHED, Backings, passthrough_allowed
from rcds.mount.fuse.protocol import InitFlag, Op
from rcds.mount.fuse.session import Connection, Handler, Later, Payload, Request, Session
from rcds.mount.inodes import FUSE_ROOT, Node, NodeTable
from rcds.mount.reading import DroppedError, Handle, OpenFiles, backing_fd, whole_if_local
from rcds.mount.readonly import guarded, refuse
from rcds.mount.repomount import RepoMount
from rcds.mount.revisions import RevisionKeeper

log = logging.getLogger("rcds.mount")

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT
DEFAULT_THREADS = 32
"""Worker threads serving blocking requests at once (catalog queries, downloads)."""
WANTED = (
    InitFlag.ASYNC_READ
    | InitFlag.BIG_WRITES
    | InitFlag.PARALLEL_DIROPS
    | InitFlag.DO_READDIRPLUS
    | InitFlag.CACHE_SYMLINKS
    | InitFlag.NO_OPEN_SUPPORT
    | InitFlag.NO_OPENDIR_SUPPORT
    | InitFlag.MAX_PAGES
)
"""Kernel capabilities asked for at INIT."""
GC_THRESHOLDS = (20_000, 20, 20)
"""The daemon's garbage collector: what start-up made (modules, catalogs) is frozen out of its
view once the mount is up (``gc.freeze``), and it runs 30 times less often than Python's
default (700, 10, 10). A scan of a tree makes ~10 objects per entry (nodes, attributes,
catalog rows) and almost no cycles; with the defaults the collections took ~0.28 of the
daemon's ~1.7 CPU-s of Python in ``bench/mount.py`` scenario (5), the full ones walking every
node and listing kept so far."""
_READ_AT = struct.Struct("<8xQI").unpack_from
"""The offset and size of a ``fuse_read_in`` (the start of :data:`~rcds.mount.fuse.protocol.READ_IN`)."""


def _top_stat(count: int, owner: tuple[int, int]) -> os.stat_result:
    now = int(time.time())
    return os.stat_result(
        (stat_mod.S_IFDIR | 0o755, FUSE_ROOT, 0, 2 + count, owner[0], owner[1], 4096, now, now, now),
        {
            "st_atime_ns": now * 10**9,
            "st_mtime_ns": now * 10**9,
            "st_ctime_ns": now * 10**9,
            "st_blksize": 4096,
            "st_blocks": 8,
        },
    )


class RcdsOperations:
    """Request handlers for one repository (``mounts`` holds it, ``opener`` is None) or, with an
    ``opener``, for a directory of repositories that appear on first lookup of their name.

    ``kcache`` is the kernel's entry/attribute cache lifetime in seconds; ``threads`` the
    worker pool's size; ``passthrough`` asks for FUSE passthrough where this process may use
    it (:func:`~rcds.mount.fuse.passthrough.passthrough_allowed`; else no-open mode stays).
    """

    def __init__(
        self,
        mounts: Sequence[RepoMount],
        *,
        opener: Callable[[str], RepoMount] | None = None,
        kcache: float = 60.0,
        threads: int = DEFAULT_THREADS,
        owner: tuple[int, int] = (0, 0),
        prefetch: bool = True,
        passthrough: bool = False,
    ) -> None:
        self.mounts: dict[str, RepoMount] = {m.fqrn: m for m in mounts}
        self.opener = opener
        self.kcache = kcache
        self.owner = owner
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rcds-mount-worker")
        self.table = NodeTable()
        self.lock = threading.Lock()
        """Guards the node table (lookup counts) against concurrent requests."""
        self.files = OpenFiles()
        self.listings = Listings(self)
        self.prefetch = prefetch
        """Fetch a directory's small files in one batch when one of them is first read cold."""
        self._opening: dict[str, threading.Lock] = {}
        self.session: Session | None = None
        self.conn: Connection | None = None
        self.passthrough = passthrough and passthrough_allowed()
        self.backings: Backings | None = None
        """Open files per inode in passthrough mode (set when the kernel grants it)."""
        self.revisions = RevisionKeeper(self.table, self.mounts, self.lock)
        for m in self.mounts.values():
            self.revisions.follow(m)
        if opener is None:
            if len(self.mounts) != 1:
                raise ValueError("one repository, or an opener for several")
            (only,) = self.mounts.values()
            self.table.nodes[FUSE_ROOT] = only.node("")
        else:
            self.table.nodes[FUSE_ROOT] = Node(FUSE_ROOT, "", "", None, _top_stat(0, owner), 0)
        self.table.nodes[FUSE_ROOT].lookups = 1 << 60  # the root is never forgotten

    # -- the session -----------------------------------------------------------------------------

    def wanted_flags(self, kernel: int) -> int:
        """Kernel capabilities asked for (see :data:`WANTED`). With passthrough (if wanted and
        the ``kernel`` has it) the kernel must send ``OPEN`` (answered with a backing file),
        so no-open mode is not asked for."""
        if self.passthrough and kernel & InitFlag.PASSTHROUGH:
            return (WANTED | InitFlag.PASSTHROUGH) & ~InitFlag.NO_OPEN_SUPPORT
        return WANTED

    def initialised(self, conn: Connection) -> None:
        """INIT is done: remember what the kernel granted, and quiet the garbage collector
        (:data:`GC_THRESHOLDS`)."""
        self.conn = conn
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        if conn.has(InitFlag.PASSTHROUGH) and self.session is not None:
            self.backings = Backings(self.session.fd)

    def attach(self, session: Session) -> None:
        """Serve ``session`` (its device gets the revision switches' invalidations)."""
        self.session = session
        self.revisions.session = session

    def request_counts(self) -> dict[str, int]:
        """Requests received so far, by opcode name (empty before the session starts)."""
        return dict(self.session.counts) if self.session is not None else {}

    def handlers(self) -> Mapping[int, Handler]:
        """Handler per opcode; others are answered ``ENOSYS`` by the session."""
        table: dict[int, Handler] = {op: refuse for op in p.WRITE_OPS}
        table.update(
            {
                Op.LOOKUP: self.lookup,
                Op.FORGET: self.forget,
                Op.BATCH_FORGET: self.batch_forget,
                Op.GETATTR: self.getattr,
                Op.READLINK: self.readlink,
                Op.ACCESS: self.access,
                Op.OPEN: self.open,
                Op.READ: self.read,
                Op.RELEASE: self.release,
                Op.OPENDIR: self.opendir,
                Op.READDIR: self.listings.readdir,
                Op.READDIRPLUS: self.listings.readdirplus,
                Op.RELEASEDIR: _empty,
                Op.STATFS: self.statfs,
                Op.GETXATTR: self.getxattr,
                Op.LISTXATTR: self.listxattr,
                Op.DESTROY: _empty,
            }
        )
        return table

    # -- helpers --------------------------------------------------------------------------------

    def node(self, ino: int) -> Node:
        """The node the kernel calls ``ino``; ``ENOENT`` if unknown."""
        node = self.table.get(ino)
        if node is None:
            raise FuseReplyError(errno.ENOENT)
        return node

    def mount_of(self, node: Node) -> RepoMount:
        """The repository of ``node``."""
        mount = self.mounts.get(node.fqrn)
        if mount is None:
            raise FuseReplyError(errno.ENOENT)
        return mount

    def is_top(self, node: Node) -> bool:
        """True for the directory of repositories (``--root``)."""
        return self.opener is not None and node.ino == FUSE_ROOT

    def entry(self, node: Node, parent: int, name: bytes) -> bytes:
        """Answer a lookup of ``name`` in ``parent`` with ``node`` (one more kernel reference)."""
        with self.lock:
            known = self.table.looked_up(node, parent, name)
            return p.entry_out(known.stat, self.kcache)

    def repository(self, name: str) -> RepoMount | None:
        """The repository ``name`` in a directory of repositories, opened on first use (blocks)."""
        found = self.mounts.get(name)
        if found is not None or self.opener is None:
            return found
        with self.lock:
            lock = self._opening.setdefault(name, threading.Lock())
        with lock:
            found = self.mounts.get(name)
            if found is None:
                try:
                    found = self.opener(name)
                except RcdsError as exc:
                    log.warning("cannot mount %s: %s", name, exc)
                    return None
                self.mounts[name] = found
                self.revisions.follow(found)
                log.info("mounted %s (revision %d)", name, found.repo.revision)
                self.table.nodes[FUSE_ROOT].stat = _top_stat(len(self.mounts), self.owner)
                self.listings.forget_top()
        return found

    # -- lookups and attributes -----------------------------------------------------------------

    def lookup(self, req: Request) -> Payload | Later:
        """The entry ``name`` in a directory (negative answers are cached by the kernel)."""
        name = p.cstring(req.body)
        parent = self.node(req.nodeid)
        if name == b".":
            return self.entry(parent, req.nodeid, name)
        if name == b"..":
            return Later(self._lookup_parent, parent)
        if self.is_top(parent):
            return Later(self._lookup_repository, req.nodeid, name)
        if not parent.is_dir:
            raise FuseReplyError(errno.ENOTDIR)
        mount = self.mount_of(parent)
        listed = self.listings.child(mount, parent.path, name, mount.repo.revision)
        if listed is not None:
            return self.entry(listed, req.nodeid, name)
        path = f"{parent.path}/{os.fsdecode(name)}"
        try:
            found = guarded(mount, mount.node_if_local, path)
        except FuseReplyError as exc:
            if exc.errno != errno.ENOENT:
                raise
            return self._negative(req.nodeid, name)
        if found is None:
            return Later(self._lookup_slow, mount, req.nodeid, name, path)
        return self.entry(found, req.nodeid, name)

    def _lookup_slow(self, mount: RepoMount, parent: int, name: bytes, path: str) -> Payload:
        try:
            found = guarded(mount, mount.node, path)
        except FuseReplyError as exc:
            if exc.errno != errno.ENOENT:
                raise
            return self._negative(parent, name)
        return self.entry(found, parent, name)

    def _negative(self, parent: int, name: bytes) -> bytes:
        with self.lock:
            self.table.add_negative(parent, name)
        return p.negative_entry(self.kcache)

    def _lookup_repository(self, parent: int, name: bytes) -> Payload:
        mount = self.repository(os.fsdecode(name))
        if mount is None:
            raise FuseReplyError(errno.ENOENT)
        root = self.table.get(mount.space.root)
        if root is None:
            root = guarded(mount, mount.node, "")
        return self.entry(root, parent, name)

    def _lookup_parent(self, node: Node) -> Payload:
        if node.ino == FUSE_ROOT or node.path == "":
            found = self.table.nodes[FUSE_ROOT]
        else:
            mount = self.mount_of(node)
            found = guarded(mount, mount.node, node.path.rpartition("/")[0])
        with self.lock:
            known = self.table.get(found.ino)
            if known is None:
                self.table.nodes[found.ino] = known = found
            known.lookups += 1
            return p.entry_out(known.stat, self.kcache)

    def forget(self, req: Request) -> None:
        """The kernel dropped references to one inode."""
        (count,) = p.FORGET_IN.unpack_from(req.body)
        self._forget(((req.nodeid, count),))

    def batch_forget(self, req: Request) -> None:
        """The kernel dropped references to several inodes."""
        (n, _) = p.BATCH_FORGET_IN.unpack_from(req.body)
        start = p.BATCH_FORGET_IN.size
        size = p.FORGET_ONE.size
        self._forget([p.FORGET_ONE.unpack_from(req.body, start + i * size) for i in range(n)])

    def _forget(self, items: Sequence[tuple[int, int]]) -> None:
        gone = []
        with self.lock:
            for ino, count in items:
                self.table.forget(ino, count)
                if ino not in self.table.nodes:
                    gone.append(ino)
        backings = self.backings
        for ino in gone:
            self.files.drop(ino)
            if backings is not None:
                backings.forget(ino)

    def getattr(self, req: Request) -> Payload:
        """Attributes of a known inode (no catalog query: kept up to date on revision switches)."""
        return p.attr_out(self.node(req.nodeid).stat, self.kcache)

    def readlink(self, req: Request) -> Payload:
        """A symbolic link's target, as stored."""
        node = self.node(req.nodeid)
        if node.entry is None or not node.entry.is_symlink:
            raise FuseReplyError(errno.EINVAL)
        return os.fsencode(node.entry.symlink)

    def access(self, req: Request) -> Payload:
        """Read-only: write access is refused with EROFS; the rest by the mode bits."""
        (mode, _) = p.ACCESS_IN.unpack_from(req.body)
        node = self.node(req.nodeid)
        if mode & os.W_OK:
            raise FuseReplyError(errno.EROFS)
        st = node.stat
        if req.uid == 0:
            ok = not (mode & os.X_OK) or bool(st.st_mode & 0o111) or node.is_dir
        else:
            if req.uid == st.st_uid:
                bits = (st.st_mode >> 6) & 7
            elif req.gid == st.st_gid:
                bits = (st.st_mode >> 3) & 7
            else:
                bits = st.st_mode & 7
            ok = (mode & 7) & ~bits == 0
        if not ok:
            raise FuseReplyError(errno.EACCES)
        return None

    # -- files ----------------------------------------------------------------------------------

    def open(self, req: Request) -> Payload:
        """Refused with ``ENOSYS`` when the kernel can do without (it then never asks again and
        keeps pages); else a handle-less answer with the pages kept."""
        (flags, _) = p.OPEN_IN.unpack_from(req.body)
        if flags & _WRITE_FLAGS:
            raise FuseReplyError(errno.EROFS)
        node = self.node(req.nodeid)
        if node.is_dir:
            raise FuseReplyError(errno.EISDIR)
        backings = self.backings
        if backings is not None:
            return self._open_passthrough(backings, node)
        if self.conn is not None and self.conn.has(InitFlag.NO_OPEN_SUPPORT):
            raise FuseReplyError(errno.ENOSYS)
        return p.OPEN_OUT.pack(0, p.OpenFlag.KEEP_CACHE, 0)

    def _open_passthrough(self, backings: Backings, node: Node) -> bytes:
        """Passthrough mode: a one-object file whose object is in the local cache is read by
        the kernel from the cache file; any other file the ordinary way (its pages kept)."""
        if stat_mod.S_ISREG(node.stat.st_mode):
            mount = self.mount_of(node)
            mode = backings.open(node.ino, lambda: guarded(mount, backing_fd, mount, node))
        else:
            mode = backings.open(node.ino, _no_backing)
        if mode == CACHED:
            return p.OPEN_OUT.pack(0, p.OpenFlag.KEEP_CACHE, 0)
        return p.OPEN_OUT.pack(0, p.OpenFlag.PASSTHROUGH, mode)

    def release(self, req: Request) -> None:
        """The kernel closed a file (sent only in passthrough mode: no-open mode has no opens)."""
        if self.backings is not None:
            self.backings.release(req.nodeid)

    def opendir(self, req: Request) -> Payload:
        """As :meth:`open`, for directories (listings cached by the kernel)."""
        if not self.node(req.nodeid).is_dir:
            raise FuseReplyError(errno.ENOTDIR)
        if self.conn is not None and self.conn.has(InitFlag.NO_OPENDIR_SUPPORT):
            raise FuseReplyError(errno.ENOSYS)
        return p.OPEN_OUT.pack(0, p.OpenFlag.KEEP_CACHE | p.OpenFlag.CACHE_DIR, 0)

    def read(self, req: Request) -> Payload | Later:
        """``size`` bytes at ``offset`` of the inode (fetched and verified on first use)."""
        offset, size = _READ_AT(req.body)
        h = self.files.get(req.nodeid)
        if h is None:
            node = self.node(req.nodeid)
            if not stat_mod.S_ISREG(node.stat.st_mode):
                raise FuseReplyError(errno.EINVAL)
            mount = self.mount_of(node)
            if offset == 0 and size >= node.stat.st_size:  # the whole file in one request
                data = guarded(mount, whole_if_local, mount, node)
                if data is not None:
                    return data
            f = guarded(mount, mount.open_if_local, node)
            if f is None:
                return Later(self._open_and_read, node, mount, offset, size)
            h = self.files.add(node.ino, f, mount)
            if self.prefetch and not _first_local(h):
                # planning a directory's prefetch is a catalog listing: on a worker, so the
                # session's readers of /dev/fuse keep answering cached requests meanwhile
                return Later(self._prefetch_and_read, h, node, offset, size)
        data = guarded(h.mount, h.read_if_local, offset, size)
        return data if data is not None else Later(self._read_later, h, req.nodeid, offset, size)

    def _read_later(self, h: Handle, ino: int, offset: int, size: int) -> Payload:
        """A read that may download; a handle dropped meanwhile (the kept files' bound) is opened
        again."""
        for _ in range(3):
            try:
                return guarded(h.mount, h.read, offset, size)
            except DroppedError:
                node = self.node(ino)
                found = self.files.get(ino)
                if found is None:
                    found = self._opened(node, h.mount, guarded(h.mount, h.mount.open, node))
                h = found
        raise FuseReplyError(errno.EIO)

    def _prefetch_and_read(self, h: Handle, node: Node, offset: int, size: int) -> Payload:
        self._maybe_prefetch(h.mount, node, h.file)
        return self._read_later(h, node.ino, offset, size)

    def _opened(self, node: Node, mount: RepoMount, f: RepoFile) -> Handle:
        h = self.files.add(node.ino, f, mount)
        if self.prefetch:
            self._maybe_prefetch(mount, node, f)
        return h

    def _open_and_read(self, node: Node, mount: RepoMount, offset: int, size: int) -> Payload:
        h = self.files.get(node.ino)
        if h is None:
            h = self._opened(node, mount, guarded(mount, mount.open, node))
        return self._read_later(h, node.ino, offset, size)

    def _maybe_prefetch(self, mount: RepoMount, node: Node, f: RepoFile) -> None:
        """Queue the directory's small files for download if ``f`` is not cached (once per
        directory and revision; see :meth:`RepoMount.prefetch_for`: a catalog query, no download)."""
        with contextlib.suppress(RcdsError, OSError):  # reads fetch on their own
            mount.prefetch_for(node.path, f)

    # -- file system ----------------------------------------------------------------------------

    def statfs(self, req: Request) -> Later:
        """Sizes of the local cache (total = quota) and the number of entries of the repositories."""

        def figures() -> Payload:
            used = quota = files = 0
            for m in list(self.mounts.values()):
                used = max(used, m.repo.cache.size())
                q = m.repo.cache.quota_bytes
                quota = max(quota, q if q is not None else 0)
                with m.repo.using() as mounted:
                    total = mounted.view.root_catalog().counters().total().values
                files += sum(total.get(k, 0) for k in ("regular", "dir", "symlink", "special"))
            total_bytes = max(quota, used)
            free = max(0, total_bytes - used) // 4096
            return p.statfs_out(total_bytes // 4096, free, free, files, 0, 4096, 255)

        return Later(guarded, None, figures)

    def getxattr(self, req: Request) -> Payload | Later:
        """A stock magic attribute, or one of the entry's own."""
        (size, _) = p.GETXATTR_IN.unpack_from(req.body)
        text = os.fsdecode(p.cstring(req.body, p.GETXATTR_IN.size))
        node = self.node(req.nodeid)
        if self.is_top(node) or text not in xattrs.names(node):  # e.g. security.capability at exec
            raise FuseReplyError(errno.ENODATA)
        mount = self.mount_of(node)

        def value() -> Payload:
            found = guarded(mount, xattrs.value, mount, node, text)
            if found is None:
                raise FuseReplyError(errno.ENODATA)
            return _sized(found, size)

        return Later(value)

    def listxattr(self, req: Request) -> Payload:
        """The attribute names of an entry."""
        (size, _) = p.GETXATTR_IN.unpack_from(req.body)
        node = self.node(req.nodeid)
        names = [] if self.is_top(node) else xattrs.names(node)
        return _sized(b"".join(os.fsencode(n) + b"\0" for n in names), size)

    # -- revisions ------------------------------------------------------------------------------

    def refresh(self, fqrn: str | None = None) -> None:
        """Ask for a revision check of ``fqrn`` (every repository if None) now, e.g. after a
        notification. Thread safe, returns at once (see :class:`~rcds.mount.revisions.RevisionKeeper`)."""
        self.revisions.refresh(fqrn)

    def close(self) -> None:
        """Stop the revision checks and the workers, close files and every repository."""
        self.revisions.close()
        if self.backings is not None:
            self.backings.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.files.close()
        for m in list(self.mounts.values()):
            m.close()


def _first_local(h: Handle) -> bool:
    """True if the file's first object is open or in the local cache (no prefetch to plan)."""
    at = h.file.piece_at(0)
    return at is None or at[1] or h.mount.is_cached(at[0])


def _no_backing() -> None:
    """No backing file (not a regular file)."""
    return None


def _empty(req: Request) -> None:
    """A request answered with success and nothing else (``RELEASE``, ``DESTROY``)."""
    return None


def _sized(value: bytes, size: int) -> bytes:
    """An xattr answer: the size alone when asked with size 0, ``ERANGE`` when it does not fit."""
    if size == 0:
        return p.GETXATTR_OUT.pack(len(value), 0)
    if len(value) > size:
        raise FuseReplyError(errno.ERANGE)
    return value
