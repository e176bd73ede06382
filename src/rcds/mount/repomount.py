"""One repository inside the mount: resolving paths to nodes, opening files, switching revisions.

Everything here blocks (catalog queries, downloads through the client's caches, proxies and
fail-over) and is called from worker threads by :mod:`rcds.mount.operations`; the client's
:class:`~rcds.client.repository.Repository` does the verified work, this module only turns its
answers into inode attributes.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from rcds.client.fetch.bulk import Wanted
from rcds.client.repository import Repository
from rcds.client.tree.files import Piece, RepoFile, pieces_of
from rcds.client.tree.mounted import Located
from rcds.errors import NotFoundError
from rcds.format.hashes import ObjectKind
from rcds.mount import bulkahead
from rcds.mount.bulkahead import BulkAhead
from rcds.mount.fetchprocs import FetchWorkers, configured_workers
from rcds.mount.inodes import InodeSpace, Node, entry_stat
from rcds.mount.prefetcher import WAIT, Prefetcher

log = logging.getLogger("rcds.mount")

PREFETCH_MAX_FILE = 1 << 20
PREFETCH_MAX_BYTES = 32 << 20
"""Directory prefetch (:meth:`RepoMount.prefetch_directory`) takes files of at most this size,
up to this many bytes in all."""
READ_AHEAD_CHUNKS = 2
"""A read that fetches a chunk of a chunked file queues this many of the following chunks."""
PLANNED_SIZE = 65536
"""Directories remembered as prefetched (forgotten all at once when full)."""
RECIPE_CACHE_SIZE = 65536
"""Files whose objects :meth:`RepoMount.open` remembers (cleared whole when full)."""


class StaleError(NotFoundError):
    """An inode that no longer exists in the mounted revision (answered with ``ESTALE``)."""


@dataclass(frozen=True)
class Resolved:
    """What a path is in one revision: its inode number and attributes (``entry`` None: absent)."""

    path: str
    ino: int
    stat: os.stat_result | None
    located: Located | None
    revision: int


def restamp(st: os.stat_result, ino: int, owner: tuple[int, int] | None) -> os.stat_result:
    """``st`` with inode ``ino`` and, if given, the (uid, gid) ``owner``."""
    uid, gid = owner if owner is not None else (st.st_uid, st.st_gid)
    return os.stat_result(
        (
            st.st_mode,
            ino,
            st.st_dev,
            st.st_nlink,
            uid,
            gid,
            st.st_size,
            st.st_atime,
            st.st_mtime,
            st.st_ctime,
        ),
        {
            "st_atime_ns": st.st_atime_ns,
            "st_mtime_ns": st.st_mtime_ns,
            "st_ctime_ns": st.st_ctime_ns,
            "st_blksize": st.st_blksize,
            "st_blocks": st.st_blocks,
        },
    )


class RepoMount:
    """A repository served by the mount (see the module docstring).

    ``owner`` is the (uid, gid) every entry is shown with (``CVMFS_CLAIM_OWNERSHIP``), or None
    for the catalog's own; ``auto_update`` False never switches revisions (``CVMFS_AUTO_UPDATE=no``).
    """

    def __init__(
        self,
        repo: Repository,
        space: InodeSpace,
        *,
        owner: tuple[int, int] | None,
        auto_update: bool = True,
        notification_server: str | None = None,
        workers: int | None = None,
    ) -> None:
        self.repo = repo
        self.notification_server = notification_server
        """The broker announcing new revisions (``CVMFS_NOTIFICATION_SERVER``), or None."""
        self.fqrn = repo.fqrn
        self.space = space
        self.owner = owner
        self.auto_update = auto_update
        self.started = time.time()
        self.applied = repo.revision
        """The revision the kernel's caches were brought in line with (``user.revision``)."""
        self.open_files = 0
        self.open_dirs = 0
        self.io_errors = 0
        self.last_io_error = 0.0
        self.prefetcher = Prefetcher(repo.source, workers=_start_workers(repo, workers))
        """Downloads ahead of reads (:meth:`prefetch_for`, :meth:`read_ahead`) and, with worker
        processes, every download of a file's objects (:meth:`wait_prefetched`)."""
        self.bulk = BulkAhead(repo, self.prefetcher, PREFETCH_MAX_FILE) if bulkahead.enabled() else None
        """Bulk prefetch ahead of a scan (:mod:`rcds.mount.bulkahead`), None if turned off."""
        self._planned: set[tuple[str, int]] = set()
        self._planned_lock = threading.Lock()
        self._recipes: dict[int, tuple[int, str, int, list[Piece], bool]] = {}
        """Per file inode: (revision, path, size, pieces, compressed) as :meth:`open` found them.
        A file's inode number depends on its content, so its pieces never change; the revision
        keeps the check that the file is still in the mounted revision (else ``ESTALE``)."""

    # -- resolution -----------------------------------------------------------------------------

    def _resolved(self, loc: Located, revision: int) -> Resolved:
        e = loc.entry
        ino = self.space.of(e, loc.catalog.mountpoint)
        st = entry_stat(e, ino, self.owner)  # restamp(make_stat(...)) in one stat_result
        return Resolved(e.path, ino, st, loc, revision)

    def resolve(self, path: str) -> Resolved:
        """The entry at the canonical ``path`` (``""`` = root) in the current revision, not following
        a final symlink; :class:`NotFoundError` if absent."""
        with self.repo.using() as m:
            loc = m.resolve(path or "/", follow=False)
            return self._resolved(loc, m.revision)

    def node(self, path: str) -> Node:
        """A new node for ``path`` (lookup count 0)."""
        r = self.resolve(path)
        assert r.stat is not None and r.located is not None
        return Node(r.ino, self.fqrn, r.path, r.located.entry, r.stat, r.revision)

    def node_if_local(self, path: str) -> Node | None:
        """Like :meth:`node` when it needs no download (the catalog of the parent directory is
        loaded in the current revision): a few SQLite queries, fine on the event loop; else None."""
        with self.repo.using() as m:
            parent = path.rpartition("/")[0]
            if m.known_directory(parent) is None:
                return None
            loc = m.resolve(path, follow=False)
            r = self._resolved(loc, m.revision)
        assert r.stat is not None
        return Node(r.ino, self.fqrn, r.path, loc.entry, r.stat, r.revision)

    def open_if_local(self, node: Node) -> RepoFile | None:
        """Like :meth:`open` when the node's catalog is loaded (same revision, directory known)."""
        revision = self.repo.revision
        if node.revision != revision:
            return None
        recipe = self._recipes.get(node.ino)
        if recipe is not None and recipe[0] == revision and recipe[1] == node.path:
            return self._file(node.path, recipe[2], recipe[3], recipe[4])
        e = node.entry
        if e is not None and e.is_regular and not e.is_chunked and not e.is_external and e.hash is not None:
            # resolved in this revision, one object: the entry is the whole recipe (no query)
            pieces = [Piece(0, e.size, e.hash, ObjectKind.FILE)] if e.size > 0 else []
            return self._file(node.path, e.size, pieces, e.compressed)
        with self.repo.using() as m:
            if m.revision != node.revision or m.known_directory(node.path.rpartition("/")[0]) is None:
                return None
        return self.open(node)

    def is_cached(self, piece: Piece) -> bool:
        """True if the object is in the local cache (reading it needs no download)."""
        return self.repo.source.is_cached(piece.hash, piece.kind)

    def listing(self, path: str) -> tuple[list[Located], int]:
        """The visible entries (sorted by name) of the directory at ``path``, and the revision
        they are of (catalog rows: the FUSE front end makes its nodes from them)."""
        with self.repo.using() as m:
            here = m.resolve(path or "/", follow=False)
            if not here.entry.is_dir:
                raise NotFoundError(f"{path or '/'} is not a directory")
            return m.listdir(here), m.revision

    def open(self, node: Node) -> RepoFile:
        """A file object for a regular file node; :class:`StaleError` if its content is gone."""
        with self.repo.using() as m:
            try:
                loc = m.resolve(node.path, follow=False)
            except NotFoundError:
                raise StaleError(f"{node.path} is gone from revision {m.revision}") from None
            if self.space.of(loc.entry, loc.catalog.mountpoint) != node.ino:
                raise StaleError(f"{node.path} changed in revision {m.revision}")
            pieces = pieces_of(loc.entry, loc.catalog)
            revision = m.revision
        e = loc.entry
        if len(self._recipes) >= RECIPE_CACHE_SIZE:
            self._recipes.clear()
        self._recipes[node.ino] = (revision, node.path, e.size, pieces, e.compressed)
        return self._file(node.path, e.size, pieces, e.compressed)

    def _file(self, path: str, size: int, pieces: list[Piece], compressed: bool) -> RepoFile:
        source = self.repo.source
        return RepoFile(
            path,
            size,
            pieces,
            lambda h, kind, size, compressed: source.open_object(h, kind, size=size, compressed=compressed),
            compressed=compressed,
        )

    def prefetch_for(self, path: str, f: RepoFile) -> int:
        """The trigger of directory prefetch: ``f`` (the file at ``path``) is about to be read;
        if its first object is not cached, queue the small files of its directory
        (:meth:`prefetch_directory`, once per directory and revision); how many objects were queued.

        Call it before the first read of a file, on any thread: it runs a catalog query (the
        directory's catalog is loaded, the file was just opened from it) and returns; the
        downloads run on the prefetcher's lanes.
        """
        directory, _, name = path.rpartition("/")
        key = (directory, self.repo.revision)
        if key in self._planned:
            return 0
        at = f.piece_at(0)
        if at is None or at[1] or self.is_cached(at[0]) or self.prefetcher.pending(at[0].hash, at[0].kind):
            return 0
        with self._planned_lock:
            if key in self._planned:
                return 0
            if len(self._planned) >= PLANNED_SIZE:
                self._planned.clear()
            # marked planned only once queued, under the lock: a neighbour read that comes
            # meanwhile waits here for the lock instead of fetching its object a second time
            queued = self.prefetch_directory(directory, name)
            self._planned.add(key)
        if self.bulk is not None and queued:
            self.bulk.planned(directory, queued)
        return queued

    def prefetch_directory(self, path: str, skip: str = "") -> int:
        """Queue the objects of the small regular files of the directory ``path`` for the
        prefetcher (:mod:`rcds.mount.prefetcher`); how many were queued.

        The bound: files of at most :data:`PREFETCH_MAX_FILE` bytes, at most
        :data:`PREFETCH_MAX_BYTES` in all, of this directory only (not its subdirectories), so
        reading one file never fetches more than that. ``skip`` (a name: the file about to be
        read) comes first, so that its reader takes it off the queue with the files after it
        in name order (one pipelined exchange, see :meth:`Prefetcher.wait`); then the rest of
        those after it (readers tend to go in name order), then those before it.
        """
        with self.repo.using() as m:
            here = m.resolve(path or "/", follow=False)
            first: list[Wanted] = []
            after: list[Wanted] = []
            before: list[Wanted] = []
            seen = False
            total = 0
            for loc in m.listdir(here):
                e = loc.entry
                if not e.is_regular or e.is_external or e.is_chunked or not e.size or e.hash is None:
                    seen = seen or e.name == skip
                    continue
                if e.size > PREFETCH_MAX_FILE:
                    seen = seen or e.name == skip
                    continue
                w = Wanted(e.hash, ObjectKind.FILE, e.size, e.compressed)
                if e.name == skip:  # read anyway: not counted in the bound
                    seen = True
                    first.append(w)
                    continue
                total += e.size
                if total > PREFETCH_MAX_BYTES:
                    break
                (after if seen else before).append(w)
        return self.prefetcher.want(first + after + before, tag=path)

    def wait_prefetched(self, piece: Piece, timeout: float = WAIT, compressed: bool = True) -> None:
        """A thread about to fetch ``piece``'s object calls this first: if the prefetcher has
        it queued it is taken off the queue (the caller fetches it now, or, with worker
        processes, a worker does), if a lane is downloading it the call waits until it is
        cached (at most ``timeout`` seconds); with worker processes, an object not cached is
        brought by a worker while the call waits."""
        self.prefetcher.wait(piece.hash, piece.kind, timeout, piece.size, compressed)

    def read_ahead(self, f: RepoFile, piece: Piece) -> int:
        """``piece`` of ``f`` is about to be fetched for a read: queue the next
        :data:`READ_AHEAD_CHUNKS` objects of the file (a chunked file read in order); how many."""
        pieces = f.pieces
        if len(pieces) < 2:
            return 0
        index = bisect.bisect_left([p.offset for p in pieces], piece.offset)
        ahead = [
            Wanted(p.hash, p.kind, p.size, f.compressed)
            for p in pieces[index + 1 : index + 1 + READ_AHEAD_CHUNKS]
            if not self.is_cached(p)
        ]
        return self.prefetcher.want(ahead)

    def chunks(self, path: str) -> list[tuple[str, int, int]]:
        """(hash, offset, size) of each object of a regular file."""
        with self.repo.using() as m:
            loc = m.resolve(path, follow=False)
            return [(p.hash.hex, p.offset, p.size) for p in pieces_of(loc.entry, loc.catalog)]

    # -- revisions ------------------------------------------------------------------------------

    def check(self, force: bool = False) -> bool:
        """Switch to a newer revision if the TTL expired (or ``force``); True if switched."""
        if not self.auto_update and not force:
            return False
        return self.repo.refresh(force=force)

    def reresolve(self, paths: Sequence[str]) -> dict[str, Resolved]:
        """What each path is now (``stat`` None when it is gone), all in one revision."""
        out: dict[str, Resolved] = {}
        with self.repo.using() as m:
            for path in paths:
                try:
                    loc = m.resolve(path or "/", follow=False)
                except NotFoundError:
                    out[path] = Resolved(path, 0, None, None, m.revision)
                    continue
                out[path] = self._resolved(loc, m.revision)
        return out

    def close(self) -> None:
        """Stop prefetching, close the repository (caches, connections)."""
        pf = self.prefetcher
        bulk = self.bulk
        if bulk is not None:
            bulk.close()
            first = bulk.first_walk
            log.info(
                "%s: bulk prefetch: %d walks, %d objects handed out, %d not brought; "
                "%d directories planned, the first walk %s",
                self.fqrn,
                bulk.walks,
                bulk.handed,
                bulk.failed,
                bulk.plans,
                "never" if first is None else f"{first[0]:.2f} s after the first, at the {first[1]}th",
            )
        pf.close()
        log.info(
            "%s: %d objects prefetched, %d taken by readers (%d runs), %d waits for one in flight, "
            "%d single reads by workers, %d failed, %d not queued (queue full); objects from: %s; "
            "sent to worker processes: %d",
            self.fqrn,
            pf.fetched,
            pf.taken,
            pf.runs,
            pf.waited,
            pf.singles,
            pf.failed,
            pf.refused,
            self.repo.source.stats,
            pf.workers.sent if pf.workers is not None else 0,
        )
        self.repo.close()


def _start_workers(repo: Repository, count: int | None) -> FetchWorkers | None:
    """The download worker processes of ``repo`` (``count``, else the configured number; see
    :mod:`rcds.mount.fetchprocs`), or None (none wanted, or they cannot be started: every
    download then runs in the daemon)."""
    count = configured_workers() if count is None else count
    if count <= 0:
        return None
    try:
        return FetchWorkers(repo.source, count)
    except OSError as exc:
        log.warning("%s: no download worker processes (%s); downloading in the daemon", repo.fqrn, exc)
        return None
