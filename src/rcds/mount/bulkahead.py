"""Bulk prefetch ahead of a scan: the rest of a tree being read whole, handed out in batches.

Directory prefetch (:meth:`RepoMount.prefetch_for <rcds.mount.repomount.RepoMount.prefetch_for>`)
queues a directory's small files when the first of them is read cold; the readers then take
runs of them and wait for the rest, a directory at a time, in the daemon. A job that reads a
whole tree (``find | xargs cat``, a copy, a checksum, a scan with many threads) goes from one
directory to the next in walk order, and each directory's download starts only when a reader
gets there. :class:`BulkAhead` recognises such a *scan* and fetches the directories that come
next in walk order before the readers get there:

* **The signal.** The prefetcher counts, per planned directory, the reads that came for its
  objects while they were still queued or in flight (:attr:`Prefetcher.demand
  <rcds.mount.prefetcher.Prefetcher.demand>`). A directory is *scanned* when at least
  :data:`SCAN_MIN` of its files, and :data:`SCAN_SHARE` of those queued, were demanded that
  way: many readers at once, or one that reads everything. When :data:`SCAN_DIRS` of the last
  :data:`RECENT` planned directories were scanned, a *walk* starts from the directory planned
  last; a single directory where :data:`SCAN_ALONE` reads (and :data:`SCAN_ALONE_SHARE` of
  those queued) came that way starts one from it at once (:meth:`BulkAhead.scanning`), while the
  readers are still in it, and the worker processes start at the first scanned directory
  (both with ``RCDS_MOUNT_BULK_EARLY=1`` only: off by default, not shown faster). A
  single read, or an import that reads a few modules of a directory while the lanes bring the
  rest, gives no signal: the mount stays lazy.
* **The walk.** What a top-down walk (``os.walk``) reads after that directory: its
  subdirectories, then its later siblings' subtrees, then its parent's later siblings', up to
  the repository's root; small files only (:data:`~rcds.mount.repomount.PREFETCH_MAX_FILE`),
  at most :data:`WALK_BYTES` of plain bytes per walk (and :data:`QUOTA_SHARE` of the cache's
  quota, if it has one; never more, even within a directory). A later signal starts another
  walk where the readers are then, skipping directories walked already; readers reaching the
  directory where a walk stopped at its bound let the next walk go on from there.
* **The hand-out.** Batches of :data:`BATCH_OBJECTS` objects go to worker processes
  (:class:`~rcds.mount.fetchprocs.FetchWorkers`, started at the first walk; the same download,
  verification and cache writes as the daemon's) with at most :data:`OUTSTANDING` objects
  handed out and not yet reported, so that a reader reaching an object handed out waits
  little (:meth:`Prefetcher.claim <rcds.mount.prefetcher.Prefetcher.claim>`: it waits for the
  worker's report, never downloads it a second time, or after
  :data:`~rcds.mount.prefetcher.WAIT` seconds fetches it itself). Objects not handed out yet
  are not pending: a reader that overtakes the walk plans the directory as usual, and the walk
  skips what is pending. With ``RCDS_MOUNT_BULK_PROCESSES=0`` the batches go to the daemon's
  own lanes instead (:meth:`Prefetcher.want <rcds.mount.prefetcher.Prefetcher.want>`).

Nothing here fails a read: a walk that cannot list a directory stops, a worker that cannot
bring objects reports them (readers fetch them themselves) and ends the walk.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import suppress

from rcds.client.fetch.bulk import Wanted
from rcds.client.repository import Repository
from rcds.errors import RcdsError
from rcds.format.hashes import ObjectKind
from rcds.mount.fetchprocs import FetchWorkers
from rcds.mount.prefetcher import Prefetcher
from rcds.workerproc import configured_count

log = logging.getLogger("rcds.mount")

ENV_BULK = "RCDS_MOUNT_BULK"
"""Environment variable: ``0`` turns bulk prefetch off."""
ENV_EARLY = "RCDS_MOUNT_BULK_EARLY"
"""Environment variable: ``1`` turns on the early start of walks and workers (off by default)."""
ENV_PROCESSES = "RCDS_MOUNT_BULK_PROCESSES"
"""Environment variable: worker processes for bulk prefetch (``0``: the daemon's lanes)."""
PROCESSES = 2
"""Worker processes per repository unless ``RCDS_MOUNT_BULK_PROCESSES`` says otherwise."""
SCAN_MIN = 2
SCAN_SHARE = 0.5
"""A planned directory is scanned when reads demanded at least this many of its queued objects,
and at least this share of them, before they were in the cache."""
SCAN_ALONE = 16
SCAN_ALONE_SHARE = 0.25
"""A directory is a scan on its own when reads demanded this many of its queued objects, and
this share of them, while they were being downloaded (:meth:`BulkAhead.scanning`; only with
``RCDS_MOUNT_BULK_EARLY=1``)."""
RECENT = 3
SCAN_DIRS = 2
"""A walk starts when this many of the last :data:`RECENT` planned directories were scanned."""
WALK_BYTES = 192 << 20
"""Plain bytes one walk hands out at most."""
BATCH_OBJECTS = 128
BATCH_BYTES = 8 << 20
"""A batch handed to a worker: at most this many objects / plain bytes."""
OUTSTANDING = 768
"""Objects handed out and not yet reported, at most (a reader waits for at most that many)."""
QUOTA_SHARE = 0.25
"""With a cache quota, a walk hands out at most this share of it."""
TROUBLE_SECONDS = 10.0
"""After a worker could not bring objects (servers failing), no walk for this long."""
WALKED_SIZE = 65536
"""Directories remembered as walked (forgotten all at once when full)."""


_Resume = tuple[str, list[Wanted], Iterator[tuple[str, list[Wanted]]]]
"""Where a walk stopped at its bound: directory, its files not handed out, the directories after."""


def configured_processes() -> int:
    """Worker processes for bulk prefetch: ``RCDS_MOUNT_BULK_PROCESSES``, else :data:`PROCESSES`."""
    if os.environ.get(ENV_PROCESSES, "").strip():
        return configured_count(ENV_PROCESSES)
    return PROCESSES


def early_enabled() -> bool:
    """True if ``RCDS_MOUNT_BULK_EARLY=1`` (see :attr:`BulkAhead.early`)."""
    return os.environ.get(ENV_EARLY, "").strip() == "1"


def enabled() -> bool:
    """False if ``RCDS_MOUNT_BULK=0``."""
    return os.environ.get(ENV_BULK, "1").strip() != "0"


class BulkAhead:
    """Bulk prefetch of one repository (see the module docstring). Thread safe."""

    def __init__(
        self,
        repo: Repository,
        prefetcher: Prefetcher,
        max_file: int,
        processes: int | None = None,
        walk_bytes: int = WALK_BYTES,
        early: bool | None = None,
    ) -> None:
        self.repo = repo
        self.prefetcher = prefetcher
        self.max_file = max_file
        self.processes = configured_processes() if processes is None else processes
        quota = repo.source.cache.quota_bytes
        self.walk_bytes = walk_bytes if quota is None else min(walk_bytes, int(quota * QUOTA_SHARE))
        """Plain bytes one walk hands out at most: never more than a share of the cache's quota,
        so that a walk does not evict what readers brought."""
        self._lock = threading.Condition()
        self._recent: deque[tuple[str, int]] = deque(maxlen=RECENT)
        self._walked: set[str] = set()
        self._walking = False
        self._closed = False
        self._workers: FetchWorkers | None = None
        self._starting = False
        self._resume: _Resume | None = None
        """Where the last walk stopped at its bound: the directory, the rest of its files, the
        walk's generator (the directories after it)."""
        self._outstanding = 0
        self._trouble_until = 0.0
        self._thread: threading.Thread | None = None
        self.early = early_enabled() if early is None else early
        """A directory read whole starts a walk at once, and the first scanned directory starts
        the workers (``RCDS_MOUNT_BULK_EARLY=1``; off by default: not shown faster)."""
        if self.early:
            prefetcher.watch_scans(self.scanning, SCAN_ALONE, SCAN_ALONE_SHARE)
        self.walks = 0
        """Walks started."""
        self.handed = 0
        """Objects handed out (to workers or lanes)."""
        self.failed = 0
        """Objects the workers could not bring."""
        self.handed_bytes = 0
        """Plain bytes of the objects the walks handed out (pending or cached ones included)."""
        self.plans = 0
        """Directories planned (cold reads that queued a directory's files)."""
        self._first_plan = 0.0
        self.first_walk: tuple[float, int] | None = None
        """When the first walk started: seconds after the first planned directory, and how many
        directories had been planned by then (what a scan costs before the walk helps)."""

    def planned(self, directory: str, queued: int) -> bool:
        """Directory prefetch just queued ``queued`` objects of ``directory``: start a walk from
        it if the directories planned before were scanned; True if one started."""
        demand = self.prefetcher.demand
        with self._lock:
            if self._closed:
                return False
            scanned = sum(1 for d, n in self._recent if demand.get(d, 0) >= max(SCAN_MIN, SCAN_SHARE * n))
            self._recent.append((directory, queued))
            self.plans += 1
            if self.plans == 1:
                self._first_plan = time.monotonic()
            if scanned and self.early:
                self._start_workers_locked()
            if self._walking or time.monotonic() < self._trouble_until:
                return False
            if self._resume is not None and directory == self._resume[0]:
                # the readers reached the directory where the last walk stopped at its bound
                # (they read what it handed out): go on from there, without waiting for a signal
                resume, self._resume = self._resume, None
                t = self._start_walk_locked(directory, resume)
            elif scanned < SCAN_DIRS or directory in self._walked:
                return False
            else:
                t = self._start_walk_locked(directory, None)
        t.start()
        return True

    def scanning(self, directory: str) -> None:
        """Reads demanded :data:`SCAN_ALONE` (and :data:`SCAN_ALONE_SHARE`) of the objects queued for
        ``directory`` while it is still being downloaded (:meth:`Prefetcher.watch_scans
        <rcds.mount.prefetcher.Prefetcher.watch_scans>`): one directory read whole by many
        readers is a scan on its own; start a walk from it now, before the readers finish it."""
        with self._lock:
            if self._closed or self._walking or directory in self._walked:
                return
            if time.monotonic() < self._trouble_until:
                return
            self._start_workers_locked()
            t = self._start_walk_locked(directory, None)
        t.start()

    def _start_workers_locked(self) -> None:
        """A directory was scanned: start the workers now (a fresh interpreter takes ~0.2 CPU-s
        of imports), so that they are ready when a walk starts."""
        if self._workers is None and self.processes > 0 and not self._starting:
            self._starting = True
            threading.Thread(target=self._started, name="rcds-mount-bulk-start", daemon=True).start()

    def _start_walk_locked(self, directory: str, resume: _Resume | None) -> threading.Thread:
        """Under the lock: a walk from ``directory`` (or going on with ``resume``), not started."""
        if resume is None:
            self._resume = None  # a new walk starts where the readers are now
        self._walking = True
        self.walks += 1
        since = time.monotonic() - self._first_plan
        if self.first_walk is None:
            self.first_walk = (since, self.plans)
        log.info(
            "bulk prefetch: walk %d %s %s, %.2f s after the first plan, at the %dth",
            self.walks,
            "from" if resume is None else "goes on in",
            directory,
            since,
            self.plans,
        )
        t = threading.Thread(target=self._walk, args=(directory, resume), name="rcds-mount-bulk", daemon=True)
        self._thread = t
        return t

    # -- the walk -------------------------------------------------------------------------------

    def _directories(self, start: str) -> Iterator[tuple[str, list[Wanted]]]:
        """The small files' objects of each directory a top-down walk reads after ``start``'s
        own files (see the module docstring), a directory at a time."""
        with self.repo.using() as m:
            here = m.resolve(start or "/", follow=False)
            subdirs = [c.entry.path for c in m.listdir(here) if c.entry.is_dir]
        stack: list[str] = list(reversed(subdirs))
        path = start
        while path:  # the later siblings of each ancestor, nearest first, pushed below
            parent, _, name = path.rpartition("/")
            with self.repo.using() as m:
                siblings = [c.entry for c in m.listdir(m.resolve(parent or "/", follow=False))]
            later = [e.path for e in siblings if e.is_dir and e.name > name]
            stack[:0] = list(reversed(later))
            path = parent
        while stack:
            path = stack.pop()
            if path in self._walked:
                continue
            if len(self._walked) >= WALKED_SIZE:
                self._walked.clear()
            self._walked.add(path)
            files: list[Wanted] = []
            dirs: list[str] = []
            with self.repo.using() as m:
                for loc in m.listdir(m.resolve(path, follow=False)):
                    e = loc.entry
                    if e.is_dir:
                        dirs.append(e.path)
                    elif (
                        e.is_regular
                        and not e.is_external
                        and not e.is_chunked
                        and 0 < e.size <= self.max_file
                        and e.hash is not None
                    ):
                        files.append(Wanted(e.hash, ObjectKind.FILE, e.size, e.compressed))
            stack.extend(reversed(dirs))
            yield path, files

    def _walk(self, start: str, resume: _Resume | None = None) -> None:
        """Hand out what a walk from ``start`` reads (see the module docstring), or, with
        ``resume``, go on where the last walk stopped; at most :attr:`walk_bytes`."""
        sent = 0
        try:
            if resume is None:
                with self._lock:
                    self._walked.add(start)
                rest: tuple[str, list[Wanted]] | None = None
                directories = self._directories(start)
            else:
                rest = (resume[0], resume[1])
                directories = resume[2]
            batch: list[Wanted] = []
            size = 0
            full = False
            for path, files in itertools.chain([rest] if rest else [], directories):
                for k, w in enumerate(files):
                    if sent + size + w.size > self.walk_bytes:
                        full = True  # the walk's bound, never exceeded; the readers' arrival
                        with self._lock:  # in this directory lets the next walk go on
                            self._resume = (path, files[k:], directories)
                        break
                    batch.append(w)
                    size += w.size
                    if len(batch) >= BATCH_OBJECTS or size >= BATCH_BYTES:
                        if not self._hand_out(batch):
                            return
                        sent += size
                        self.handed_bytes += size
                        batch, size = [], 0
                if full or self._closed:
                    break
            if batch and self._hand_out(batch):
                self.handed_bytes += size
        except (RcdsError, OSError) as exc:
            log.info("bulk prefetch stopped (reads fetch on their own): %s", exc)
        except BaseException:
            log.exception("bulk prefetch failed")
            raise
        finally:
            with self._lock:
                self._walking = False
            log.info(
                "bulk prefetch: walk %d over %.2f s after the first plan, %d plain bytes handed out in all",
                self.walks,
                time.monotonic() - self._first_plan,
                self.handed_bytes,
            )

    def _hand_out(self, batch: list[Wanted]) -> bool:
        """Hand ``batch`` out once fewer than :data:`OUTSTANDING` objects are; False: stop."""
        with self._lock:
            while self._outstanding >= OUTSTANDING and not self._closed:
                self._lock.wait(1.0)
            if self._closed or time.monotonic() < self._trouble_until:
                return False
        if self.processes <= 0:
            return self._to_lanes(batch)
        workers = self._started()
        if workers is None:
            return False
        items = self.prefetcher.claim(batch)
        if not items:
            return True
        with self._lock:
            self._outstanding += len(items)
            self.handed += len(items)
        if not workers.submit(items, self._reported(len(items))):
            self.prefetcher.finished(items, False)
            with self._lock:
                self._outstanding -= len(items)
            return False
        return True

    def _reported(self, n: int) -> Callable[[list[Wanted], bool], None]:
        def reported(items: list[Wanted], ok: bool) -> None:
            self.prefetcher.finished(items, ok)
            with self._lock:
                self._outstanding -= len(items)
                if not ok:
                    self.failed += len(items)
                    self._trouble_until = time.monotonic() + TROUBLE_SECONDS
                self._lock.notify_all()

        return reported

    def _to_lanes(self, batch: list[Wanted]) -> bool:
        """The in-process variant: queue ``batch`` for the lanes once few objects are queued."""
        pf = self.prefetcher
        with self._lock:
            while pf.queued_objects() >= OUTSTANDING and not self._closed:
                self._lock.wait(0.005)
            if self._closed:
                return False
        n = pf.want(batch)
        with self._lock:
            self.handed += n
        return True

    def _started(self) -> FetchWorkers | None:
        with self._lock:
            if self._workers is None and not self._closed:
                try:
                    self._workers = FetchWorkers(self.repo.source, self.processes)
                except OSError as exc:
                    log.warning("%s: no bulk prefetch workers (%s)", self.repo.fqrn, exc)
                    self.processes = 0
            return self._workers

    def close(self) -> None:
        """Stop walking; stop the workers (what they hold is reported not brought)."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
            workers = self._workers
            thread = self._thread
        if workers is not None:
            workers.close()
        if thread is not None:
            with suppress(RuntimeError):
                thread.join(2.0)
