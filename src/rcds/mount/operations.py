"""The FUSE request handlers (pyfuse3, low level, inode based) over one or several repositories.

Handlers run as trio tasks. Work that needs no download (a lookup in a directory whose catalog is
loaded, opening such a file, reading an object already in the local cache) runs on the event
loop, where it costs less than a thread hop; anything that may download goes to worker threads
through one capacity limiter, so many readers are served at once and a slow download never
holds up other requests. ``getattr`` is answered from the node table. Writes get ``EROFS``
(:mod:`rcds.mount.readonly`); new revisions are applied by :mod:`rcds.mount.revisions`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat as stat_mod
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pyfuse3
import trio

from rcds.client.tree.files import RepoFile
from rcds.errors import NotFoundError, RcdsError
from rcds.mount import xattrs
from rcds.mount.inodes import FUSE_ROOT, Node, NodeTable
from rcds.mount.readonly import ReadOnlyOperations, entry_attributes, handler
from rcds.mount.repomount import RepoMount, StaleError
from rcds.mount.revisions import RevisionKeeper

log = logging.getLogger("rcds.mount")

T = TypeVar("T")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT
DEFAULT_THREADS = 32
"""Worker threads serving blocking requests at once (catalog queries, downloads)."""
LISTING_CACHE_SIZE = 4096
"""Directory listings kept for ``opendir`` (oldest dropped first)."""
_Listed = tuple[bytes, Node, pyfuse3.EntryAttributes]


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


class _Handle:
    """An open file: the client's file object and a lock (the kernel may read in parallel)."""

    __slots__ = ("file", "lock", "mount")

    def __init__(self, file: RepoFile, mount: RepoMount) -> None:
        self.file = file
        self.mount = mount
        self.lock = threading.Lock()

    def read(self, offset: int, size: int) -> bytes:
        at = self.file.piece_at(offset)
        if at is not None and not at[1]:
            self.mount.wait_prefetched(at[0])
            self.mount.read_ahead(self.file, at[0])
        with self.lock:
            self.file.seek(offset)
            return self.file.read(size)

    def read_if_local(self, offset: int, size: int) -> bytes | None:
        """The bytes if they come from an object already open or in the local cache and nobody
        else is reading this file; None if a worker thread should do it (it may download)."""
        at = self.file.piece_at(offset)
        if at is None:
            return b""
        piece, loaded = at
        if offset + size > piece.end or not (loaded or self.mount.is_cached(piece)):
            return None
        if not self.lock.acquire(blocking=False):
            return None
        try:
            self.file.seek(offset)
            return self.file.read(size)
        finally:
            self.lock.release()


class RcdsOperations(ReadOnlyOperations):
    """Request handlers for one repository (``mounts`` holds it, ``opener`` is None) or, with an
    ``opener``, for a directory of repositories that appear on first lookup of their name.

    ``kcache`` is the kernel's entry/attribute cache lifetime in seconds.
    """

    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(
        self,
        mounts: Sequence[RepoMount],
        *,
        opener: Callable[[str], RepoMount] | None = None,
        kcache: float = 60.0,
        threads: int = DEFAULT_THREADS,
        owner: tuple[int, int] = (0, 0),
        prefetch: bool = True,
    ) -> None:
        super().__init__()
        self.mounts: dict[str, RepoMount] = {m.fqrn: m for m in mounts}
        self.opener = opener
        self.kcache = kcache
        self.owner = owner
        self.limiter = trio.CapacityLimiter(threads)
        self.table = NodeTable()
        self._handles: dict[int, _Handle] = {}
        self._dirs: dict[int, tuple[int, list[_Listed], RepoMount | None]] = {}
        self._listings: dict[tuple[str, str], tuple[int, list[_Listed]]] = {}
        self._prefetched: set[tuple[str, str, int]] = set()
        self.prefetch = prefetch
        """Fetch a directory's small files in one batch when one of them is first opened."""
        self._next_fh = 1
        self._opening: dict[str, trio.Lock] = {}
        self.revisions = RevisionKeeper(self.table, self.mounts, self.limiter)
        for m in self.mounts.values():
            self.revisions.follow(m)
        if opener is None:
            if len(self.mounts) != 1:
                raise ValueError("one repository, or an opener for several")
            (only,) = self.mounts.values()
            self.table.nodes[FUSE_ROOT] = only.node("")
        else:
            self.table.nodes[FUSE_ROOT] = self._top()
        self.table.nodes[FUSE_ROOT].lookups = 1 << 60  # the root is never forgotten

    def _top(self) -> Node:
        return Node(FUSE_ROOT, "", "", None, _top_stat(len(self.mounts), self.owner), 0)

    # -- helpers --------------------------------------------------------------------------------

    async def _run(self, mount: RepoMount | None, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a worker thread; rcds errors become FUSE errors."""
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)
        except StaleError:
            raise pyfuse3.FUSEError(errno.ESTALE) from None
        except NotFoundError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        except pyfuse3.FUSEError:
            raise
        except (RcdsError, OSError) as exc:
            log.warning("%s", exc)
            if mount is not None:
                mount.io_errors += 1
                mount.last_io_error = time.time()
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            log.exception("unexpected error in a request")
            raise pyfuse3.FUSEError(errno.EIO) from None

    def _now(self, mount: RepoMount | None, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the event loop (for work that needs no download: a thread hop costs
        more than the work); rcds errors become FUSE errors as in :meth:`_run`."""
        try:
            return fn(*args)
        except StaleError:
            raise pyfuse3.FUSEError(errno.ESTALE) from None
        except NotFoundError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        except (RcdsError, OSError) as exc:
            log.warning("%s", exc)
            if mount is not None:
                mount.io_errors += 1
                mount.last_io_error = time.time()
            raise pyfuse3.FUSEError(errno.EIO) from None

    def _node(self, ino: int) -> Node:
        node = self.table.get(ino)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _mount_of(self, node: Node) -> RepoMount:
        mount = self.mounts.get(node.fqrn)
        if mount is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return mount

    def _attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        return entry_attributes(node.stat, self.kcache)

    def _is_top(self, node: Node) -> bool:
        return self.opener is not None and node.ino == FUSE_ROOT

    async def _repository(self, name: str) -> RepoMount | None:
        """The repository ``name`` in a directory of repositories, opened on first use."""
        found = self.mounts.get(name)
        if found is not None or self.opener is None:
            return found
        lock = self._opening.setdefault(name, trio.Lock())
        async with lock:
            found = self.mounts.get(name)
            if found is None:
                opener = self.opener
                try:
                    found = await trio.to_thread.run_sync(opener, name, limiter=self.limiter)
                except RcdsError as exc:
                    log.warning("cannot mount %s: %s", name, exc)
                    return None
                self.mounts[name] = found
                self.revisions.follow(found)
                log.info("mounted %s (revision %d)", name, found.repo.revision)
                top = self.table.nodes[FUSE_ROOT]
                top.stat = _top_stat(len(self.mounts), self.owner)
        return found

    # -- lookups and attributes -----------------------------------------------------------------

    @handler
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        """The entry ``name`` in a directory (negative answers are cached by the kernel)."""
        parent = self._node(parent_inode)
        if name == b".":
            parent.lookups += 1
            return self._attrs(parent)
        if name == b"..":
            return await self._lookup_parent(parent)
        if self._is_top(parent):
            mount = await self._repository(os.fsdecode(name))
            if mount is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            root = self.table.get(mount.space.root)
            if root is None:
                root = await self._run(mount, mount.node, "")
            node = self.table.looked_up(root, parent_inode, name)
            return self._attrs(node)
        if not parent.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        mount = self._mount_of(parent)
        path = f"{parent.path}/{os.fsdecode(name)}"
        try:
            found = self._now(mount, mount.node_if_local, path)
            if found is None:
                found = await self._run(mount, mount.node, path)
        except pyfuse3.FUSEError as exc:
            if exc.errno != errno.ENOENT:
                raise
            self.table.add_negative(parent_inode, name)
            absent = pyfuse3.EntryAttributes()
            absent.st_ino = 0
            absent.entry_timeout = self.kcache
            return absent
        return self._attrs(self.table.looked_up(found, parent_inode, name))

    async def _lookup_parent(self, node: Node) -> pyfuse3.EntryAttributes:
        if node.ino == FUSE_ROOT:
            node.lookups += 1
            return self._attrs(node)
        mount = self._mount_of(node)
        if node.path == "":
            top = self.table.nodes[FUSE_ROOT]
            top.lookups += 1
            return self._attrs(top)
        parent_path = node.path.rpartition("/")[0]
        found = await self._run(mount, mount.node, parent_path)
        known = self.table.get(found.ino)
        if known is None:
            self.table.nodes[found.ino] = known = found
        known.lookups += 1
        return self._attrs(known)

    @handler
    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        """The kernel dropped inodes."""
        for ino, count in inode_list:
            self.table.forget(ino, count)

    @handler
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        """Attributes of a known inode (no catalog query: kept up to date on revision switches)."""
        return self._attrs(self._node(inode))

    @handler
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        """A symbolic link's target, as stored."""
        node = self._node(inode)
        if node.entry is None or not node.entry.is_symlink:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(node.entry.symlink)

    @handler
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        """Read-only: write access is refused with EROFS; the rest by the mode bits."""
        node = self._node(inode)
        if mode & os.W_OK:
            raise pyfuse3.FUSEError(errno.EROFS)
        st = node.stat
        if ctx.uid == 0:
            return not (mode & os.X_OK) or bool(st.st_mode & 0o111) or node.is_dir
        if ctx.uid == st.st_uid:
            bits = (st.st_mode >> 6) & 7
        elif ctx.gid == st.st_gid:
            bits = (st.st_mode >> 3) & 7
        else:
            bits = st.st_mode & 7
        return (mode & 7) & ~bits == 0

    # -- directories ----------------------------------------------------------------------------

    @handler
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        """List the directory (``.`` and ``..`` first); readdir serves from that list.

        Listings are kept per directory and revision, so listing a directory again (``find``,
        ``ls``, Python's import system) needs no catalog query and no thread hop.
        """
        node = self._node(inode)
        if not node.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        entries: list[_Listed] = [(b".", node, self._attrs(node)), (b"..", node, self._attrs(node))]
        mount: RepoMount | None = None
        if self._is_top(node):
            for name in sorted(self.mounts):
                root = self.table.get(self.mounts[name].space.root)
                if root is not None:
                    entries.append((os.fsencode(name), root, self._attrs(root)))
        else:
            mount = self._mount_of(node)
            if node.path == "" and self.opener is not None:
                top = self.table.nodes[FUSE_ROOT]
                entries[1] = (b"..", top, self._attrs(top))
            entries += await self._children(mount, node.path)
            mount.open_dirs += 1
        fh = self._next_fh
        self._next_fh += 1
        self._dirs[fh] = (inode, entries, mount)
        return fh

    async def _children(self, mount: RepoMount, path: str) -> list[_Listed]:
        """The visible entries of a directory in the mounted revision (kept per revision)."""
        key = (mount.fqrn, path)
        known = self._listings.get(key)
        if known is not None and known[0] == mount.repo.revision:
            return known[1]
        here, children = await self._run(mount, mount.listing, path)
        listed: list[_Listed] = []
        for c in children:
            if c.stat is not None and c.located is not None:
                child = Node(c.ino, mount.fqrn, c.path, c.located.entry, c.stat, c.revision)
                listed.append((os.fsencode(c.path.rpartition("/")[2]), child, self._attrs(child)))
        if len(self._listings) >= LISTING_CACHE_SIZE:
            del self._listings[next(iter(self._listings))]
        self._listings[key] = (here.revision, listed)
        return listed

    @handler
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """Entries from ``start_id`` on (pyfuse3 answers READDIRPLUS: each entry but ``.`` and
        ``..`` counts as a lookup)."""
        inode, entries, _ = self._dirs.get(fh, (0, [], None))
        table = self.table
        for i in range(start_id, len(entries)):
            name, node, attrs = entries[i]
            if not pyfuse3.readdir_reply(token, name, attrs, i + 1):
                break
            if i >= 2:
                if table.get(node.ino) is None:  # the table's nodes change; the listing's must not
                    node = Node(node.ino, node.fqrn, node.path, node.entry, node.stat, node.revision)
                table.looked_up(node, inode, name)

    @handler
    async def releasedir(self, fh: int) -> None:
        """Drop a directory listing."""
        _, _, mount = self._dirs.pop(fh, (0, [], None))
        if mount is not None:
            mount.open_dirs -= 1

    # -- files ----------------------------------------------------------------------------------

    @handler
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        """Open a regular file read-only; its pages stay in the kernel's cache (same inode, same
        content)."""
        if flags & _WRITE_FLAGS:
            raise pyfuse3.FUSEError(errno.EROFS)
        node = self._node(inode)
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if not stat_mod.S_ISREG(node.stat.st_mode):
            raise pyfuse3.FUSEError(errno.EINVAL)
        mount = self._mount_of(node)
        f = self._now(mount, mount.open_if_local, node)
        if f is None:
            f = await self._run(mount, mount.open, node)
        if self.prefetch:
            self._maybe_prefetch(mount, node, f)
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = _Handle(f, mount)
        mount.open_files += 1
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    def _maybe_prefetch(self, mount: RepoMount, node: Node, f: RepoFile) -> None:
        """Queue the directory's small files for download if ``f`` is not cached (once per
        directory and revision; see :meth:`RepoMount.prefetch_for`: a catalog query, no download)."""
        with contextlib.suppress(RcdsError, OSError):  # reads fetch on their own
            mount.prefetch_for(node.path, f)

    @handler
    async def read(self, fh: int, off: int, size: int) -> bytes:
        """``size`` bytes at ``off`` (fetched and verified on first use)."""
        h = self._handles.get(fh)
        if h is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        data = self._now(h.mount, h.read_if_local, off, size)
        return data if data is not None else await self._run(h.mount, h.read, off, size)

    @handler
    async def release(self, fh: int) -> None:
        """Close a file."""
        h = self._handles.pop(fh, None)
        if h is not None:
            h.mount.open_files -= 1
            h.file.close()

    # -- file system ----------------------------------------------------------------------------

    @handler
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        """Sizes of the local cache (total = quota) and the number of entries of the repositories."""

        def figures() -> tuple[int, int, int]:
            used = quota = files = 0
            for m in list(self.mounts.values()):
                used = max(used, m.repo.cache.size())
                q = m.repo.cache.quota_bytes
                quota = max(quota, q if q is not None else 0)
                with m.repo.using() as mounted:
                    total = mounted.view.root_catalog().counters().total().values
                files += sum(total.get(k, 0) for k in ("regular", "dir", "symlink", "special"))
            return used, max(quota, used), files

        used, total, files = await self._run(None, figures)
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = total // 4096
        s.f_bfree = s.f_bavail = max(0, total - used) // 4096
        s.f_files = files
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    @handler
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        """A stock magic attribute, or one of the entry's own."""
        node = self._node(inode)
        text = os.fsdecode(name)
        if self._is_top(node) or text not in xattrs.names(node):  # e.g. security.capability at exec
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        mount = self._mount_of(node)
        found = await self._run(mount, xattrs.value, mount, node, text)
        if found is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return found

    @handler
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        """The attribute names of an entry."""
        node = self._node(inode)
        if self._is_top(node):
            return []
        return [os.fsencode(n) for n in xattrs.names(node)]

    # -- revisions ------------------------------------------------------------------------------

    def refresh(self, fqrn: str | None = None) -> None:
        """Ask for a revision check of ``fqrn`` (every repository if None) now, e.g. after a
        notification. Thread safe, returns at once (see :class:`~rcds.mount.revisions.RevisionKeeper`)."""
        self.revisions.refresh(fqrn)

    async def revision_loop(self, interval: float = 1.0) -> None:
        """Check the repositories for new revisions and apply them, until cancelled."""
        await self.revisions.loop(interval)

    def close(self) -> None:
        """Close open files and every repository."""
        self.revisions.close()
        for h in self._handles.values():
            h.file.close()
        self._handles.clear()
        for m in self.mounts.values():
            m.close()
