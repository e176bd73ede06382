"""Downloads ahead of reads for one mounted repository: a queue of objects and a few lanes.

A cold read in a directory makes :class:`~rcds.mount.repomount.RepoMount` queue the objects of
the directory's other small files (:meth:`Prefetcher.want`), and a read of a chunk of a large
file queues the next chunks. :data:`LANES` long-lived threads take the queue in order, many
objects at a time, and download each group in one pipelined exchange
(:func:`rcds.client.fetch.bulk.fetch_objects`: verified, then handed to the local cache's
background inserter), so directories asked for by several readers at once share batches, and no
thread is started per directory.

A read that needs an object first asks :meth:`Prefetcher.wait`: an object still in the queue
is taken off it (the reader fetches it itself, at once, rather than queue behind others); one a
lane is downloading is waited for, until it arrives (each object has its own event: the reader
wakes when its object is in the cache, not when the whole batch is) or :data:`WAIT` seconds
pass. Nothing here ever fails a read: a lane that cannot download (server gone, bad data)
logs it and releases the readers waiting for its objects, which then fetch through the usual
path (fail-over, timeouts, ``EIO``).

Bounded: at most :data:`MAX_QUEUED_BYTES` of plain bytes wait in the queue (more is not
queued), and what is queued is decided by the callers' own bounds (a directory's small files,
a few chunks ahead).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable

from rcds.client.cache.source import CachedSource
from rcds.client.fetch.bulk import Wanted, fetch_objects
from rcds.errors import RcdsError
from rcds.format.hashes import ContentHash, ObjectKind
from rcds.net.failures import FetchError

log = logging.getLogger("rcds.mount")

LANES = 2
"""Download threads per repository (each one pipelined exchange at a time)."""
BATCH_OBJECTS = 128
BATCH_BYTES = 16 << 20
"""A lane takes at most this many objects / plain bytes off the queue at a time."""
MAX_QUEUED_BYTES = 64 << 20
"""Plain bytes waiting in the queue at most; objects beyond are not queued."""
WAIT = 2.0
"""Seconds a read waits at most for an object a lane is downloading, then fetches it itself."""

Key = tuple[ContentHash, ObjectKind]


class Prefetcher:
    """The download queue of one repository and its lanes (see the module docstring). Thread safe."""

    def __init__(self, source: CachedSource, lanes: int = LANES) -> None:
        self.source = source
        self.lanes = lanes
        self._cv = threading.Condition()
        self._queued: OrderedDict[Key, Wanted] = OrderedDict()
        self._queued_bytes = 0
        self._pending: dict[Key, threading.Event | None] = {}
        """Objects queued or being downloaded, with the event set when each is done with (made
        when a reader first waits for it: most objects are never waited for)."""
        self._threads: list[threading.Thread] = []
        self._closed = False
        self.fetched = 0
        """Objects the lanes brought into the cache."""
        self.failed = 0
        """Objects a lane could not bring (its batch failed); readers fetch them themselves."""
        self.refused = 0
        """Objects not queued because the queue was full."""
        self.taken = 0
        """Objects a reader took off the queue to fetch itself (:meth:`wait`)."""

    def want(self, items: Iterable[Wanted]) -> int:
        """Queue objects for download (not those queued or in flight already); how many were queued."""
        n = 0
        with self._cv:
            if self._closed:
                return 0
            for w in items:
                key = (w.hash, w.kind)
                if key in self._pending or w.size <= 0:
                    continue
                if self._queued_bytes + w.size > MAX_QUEUED_BYTES:
                    self.refused += 1
                    continue
                self._queued[key] = w
                self._queued_bytes += w.size
                self._pending[key] = None
                n += 1
            if n:
                while len(self._threads) < self.lanes:
                    t = threading.Thread(target=self._lane, name="rcds-mount-prefetch", daemon=True)
                    self._threads.append(t)
                    t.start()
                self._cv.notify_all()
        return n

    def pending(self, h: ContentHash, kind: ObjectKind) -> bool:
        """True if the object is queued or being downloaded."""
        return (h, kind) in self._pending

    def wait(self, h: ContentHash, kind: ObjectKind, timeout: float = WAIT) -> None:
        """Before a read fetches an object: take it off the queue if it is still there, or wait
        (at most ``timeout`` seconds) for the lane downloading it (see the module docstring)."""
        key = (h, kind)
        if key not in self._pending:
            return
        with self._cv:
            if key not in self._pending:
                return
            w = self._queued.pop(key, None)
            if w is not None:
                self._queued_bytes -= w.size
                self.taken += 1
                event = self._pending.pop(key)
                if event is not None:
                    event.set()
                return
            event = self._pending[key]
            if event is None:
                event = self._pending[key] = threading.Event()
        event.wait(timeout)

    def _lane(self) -> None:
        while True:
            with self._cv:
                while not self._queued and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                batch: list[Wanted] = []
                size = 0
                while self._queued and len(batch) < BATCH_OBJECTS and size < BATCH_BYTES:
                    _, w = self._queued.popitem(last=False)
                    self._queued_bytes -= w.size
                    batch.append(w)
                    size += w.size
            self._download(batch)

    def _download(self, batch: list[Wanted]) -> None:
        """Fetch ``batch`` (what the cache lacks) into the local cache; release every waiter."""
        is_cached = self.source.is_cached
        todo = []
        for w in batch:
            if is_cached(w.hash, w.kind):
                self._done(w)
            else:
                todo.append(w)
        done = [False] * len(todo)
        try:
            for i, _ in fetch_objects(self.source, todo, keep=True):
                done[i] = True
                self.fetched += 1
                self._done(todo[i])
        except (RcdsError, FetchError, OSError) as exc:
            missing = done.count(False)
            self.failed += missing
            log.info("prefetch of %d objects stopped (reads fetch them themselves): %s", missing, exc)
        except BaseException:  # a bug: never leave a reader waiting on it
            log.exception("prefetch lane failed")
            raise
        finally:
            for w, ok in zip(todo, done, strict=True):
                if not ok:
                    self._done(w)

    def _done(self, w: Wanted) -> None:
        key = (w.hash, w.kind)
        with self._cv:
            event = self._pending.pop(key, None)
        if event is not None:
            event.set()

    def close(self, timeout: float = 1.0) -> None:
        """Stop the lanes: drop the queue, release every waiter (a download in progress may
        finish in the background, its thread is a daemon)."""
        with self._cv:
            self._closed = True
            self._queued.clear()
            self._queued_bytes = 0
            events = [e for e in self._pending.values() if e is not None]
            self._pending.clear()
            self._cv.notify_all()
            threads = list(self._threads)
        for e in events:
            e.set()
        for t in threads:
            t.join(timeout)
