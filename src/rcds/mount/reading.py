"""Reading files by inode: the client's file objects kept per inode, most recently read first.

The kernel never opens a file with us (no-open mode: it reads by inode, and keeps the pages),
so the file object for an inode is made on its first read and kept while the kernel holds the
inode (dropped on ``FORGET``) or until newer ones push it out. A file's inode number depends
on its content (:mod:`rcds.mount.inodes`), so a process that opened a file before a new
revision reads the old content through the old inode's file object.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from rcds.client.tree.files import RepoFile
from rcds.format.dirent import FLAG_CHUNKED, FLAG_EXTERNAL
from rcds.format.hashes import ObjectKind
from rcds.mount.inodes import Node
from rcds.mount.repomount import RepoMount

_NOT_PLAIN = FLAG_CHUNKED | FLAG_EXTERNAL
OPEN_FILES = 256
"""File objects kept (each may hold one open cache file)."""


def whole_if_local(mount: RepoMount, node: Node) -> bytes | None:
    """The whole content of a one-object file when its object is in the local cache (or queued
    for it) and the node is not stale; None otherwise (the slow path decides).

    The usual read of a small file: the kernel asks for all of it in one ``READ``, and this
    answers it with three system calls (open, read, close) and no file object or handle.
    """
    e = node.entry
    # a node not marked stale is in the mounted revision with this content (the revision
    # keeper marks the others when it switches), or in the one before while the switch is
    # applied: either way the content is the inode's own (it depends on it)
    if e is None or node.stale or e.flags & _NOT_PLAIN or e.hash is None:
        return None
    return mount.repo.source.read_cached(e.hash, ObjectKind.FILE, e.size)


def backing_fd(mount: RepoMount, node: Node) -> int | None:
    """A descriptor of the cache file holding the whole content of a one-object file (for
    FUSE passthrough; the caller closes it), or None if it is not in the local cache. The
    content is the node's own (its inode number depends on it), whatever the revision."""
    e = node.entry
    if e is None or e.flags & _NOT_PLAIN or e.hash is None:
        return None
    return mount.repo.source.cached_fd(e.hash, ObjectKind.FILE, e.size)


class DroppedError(Exception):
    """The handle was dropped and closed before this read got to it: open the file again."""


class Handle:
    """A file being read: the client's file object and a lock (the kernel reads in parallel)."""

    __slots__ = ("_dropped", "_readers", "file", "lock", "mount")

    def __init__(self, file: RepoFile, mount: RepoMount) -> None:
        self.file = file
        self.mount = mount
        self.lock = threading.Lock()
        self._readers = 0
        self._dropped = False

    def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` (may download: on a worker thread). A handle dropped
        while this read waits for its object is closed when the read is done, not under it."""
        with self.lock:
            if self.file.closed:
                raise DroppedError
            self._readers += 1
        try:
            at = self.file.piece_at(offset)
            if at is not None and not at[1]:
                self.mount.wait_prefetched(at[0], compressed=self.file.compressed)
                self.mount.read_ahead(self.file, at[0])
            with self.lock:
                self.file.seek(offset)
                return self.file.read(size)
        finally:
            with self.lock:
                self._readers -= 1
                if self._dropped and not self._readers:
                    self.file.close()

    def read_if_local(self, offset: int, size: int) -> bytes | None:
        """The bytes if they come from an object already open or in the local cache and nobody
        else is reading this file; None if a worker thread should do it (it may download)."""
        at = self.file.piece_at(offset)
        if at is None:
            return b""
        piece, loaded = at
        # the kernel reads whole pages: a read of the last object runs past the end of the file
        if min(offset + size, self.file.size) > piece.end or not (loaded or self.mount.is_cached(piece)):
            return None
        if not self.lock.acquire(blocking=False):
            return None
        try:
            if self.file.closed:  # dropped meanwhile: the slow path opens it again
                return None
            self.file.seek(offset)
            return self.file.read(size)
        finally:
            self.lock.release()

    def close(self) -> None:
        """Close the file object now, or when the last read in progress is done."""
        with self.lock:
            self._dropped = True
            if not self._readers:
                self.file.close()


class OpenFiles:
    """:class:`Handle` per inode, least recently read dropped first (thread safe)."""

    def __init__(self, limit: int = OPEN_FILES) -> None:
        self.limit = limit
        self._handles: OrderedDict[int, Handle] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, ino: int) -> Handle | None:
        """The handle of ``ino``, now the most recent."""
        if ino not in self._handles:  # the usual answer, without the lock (a dict lookup is atomic)
            return None
        with self._lock:
            h = self._handles.get(ino)
            if h is not None:
                self._handles.move_to_end(ino)
            return h

    def add(self, ino: int, file: RepoFile, mount: RepoMount) -> Handle:
        """Keep ``file`` for ``ino`` (another thread's, if it got there first, wins)."""
        dropped: list[Handle] = []
        with self._lock:
            h = self._handles.get(ino)
            if h is not None:
                dropped.append(Handle(file, mount))
            else:
                h = self._handles[ino] = Handle(file, mount)
                mount.open_files += 1
                while len(self._handles) > self.limit:
                    _, old = self._handles.popitem(last=False)
                    old.mount.open_files -= 1
                    dropped.append(old)
        for d in dropped:
            d.close()
        return h

    def drop(self, ino: int) -> None:
        """Forget the handle of ``ino`` (the kernel forgot the inode)."""
        with self._lock:
            h = self._handles.pop(ino, None)
            if h is not None:
                h.mount.open_files -= 1
        if h is not None:
            h.close()

    def close(self) -> None:
        """Close every file object."""
        with self._lock:
            handles = list(self._handles.values())
            self._handles.clear()
        for h in handles:
            h.mount.open_files -= 1
            h.close()
