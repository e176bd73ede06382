"""Background insertion of verified objects into the local cache, in batches.

Committing one object costs a file lock and a database transaction. Readers should not wait for
that: they hand the verified plain bytes to a :class:`BackgroundInserter` and go on; one thread
commits what accumulated with :meth:`~rcds.client.cache.local.LocalCache.insert_many` (one lock, one
transaction per batch). Until an object is committed, :meth:`BackgroundInserter.get` serves it
from memory. The bytes waiting are bounded; producers block when the bound is reached.

Objects put with ``keep`` (read-ahead: :meth:`Repository.prefetch
<rcds.client.repository.Repository.prefetch>`) stay in memory after their commit too, until
their first read (:meth:`BackgroundInserter.take`), so that reading what was just prefetched
opens no file. They share the bound with the waiting bytes, and the oldest are dropped first
when room is needed.

The thread is not woken for every object: it commits when a batch is full, when the first
object of a batch has waited :data:`BATCH_DELAY` seconds, or when asked to (:meth:`flush`,
:meth:`close`, producers blocked by the bound). Fewer, larger batches cost less (one lock, one
transaction, one thread switch each), and waking a thread per object would take the GIL from
the producer every time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from rcds.client.cache.local import LocalCache
from rcds.errors import StorageError
from rcds.format.hashes import ContentHash, ObjectKind

log = logging.getLogger("rcds.client")

Key = tuple[ContentHash, ObjectKind]

MAX_PENDING_BYTES = 64 << 20
BATCH_OBJECTS = 256
BATCH_BYTES = 16 << 20
BATCH_DELAY = 0.02
"""Seconds a queued object waits at most for its batch to fill up."""


class BackgroundInserter:
    """Queues verified objects for the local cache; a daemon thread commits them in batches."""

    def __init__(self, cache: LocalCache, max_pending: int = MAX_PENDING_BYTES) -> None:
        self.cache = cache
        self.max_pending = max_pending
        self._cv = threading.Condition()
        self._queue: deque[Key] = deque()
        self._queued_bytes = 0
        self._pending: dict[Key, bytes] = {}
        self._pending_bytes = 0
        self._keep: set[Key] = set()
        self._kept: dict[Key, bytes] = {}  # committed, held until read; oldest first
        self._kept_bytes = 0
        self._busy = 0
        self._urgent = 0
        self._idle = False
        self._closed = False
        self._parking = False
        self._thread: threading.Thread | None = None
        self.errors = 0

    def get(self, h: ContentHash, kind: ObjectKind) -> bytes | None:
        """The bytes of an object still waiting to be committed (or kept), or None."""
        key = (h, kind)
        found = self._pending.get(key)  # dict lookups are atomic: no lock needed
        return self._kept.get(key) if found is None else found

    def take(self, h: ContentHash, kind: ObjectKind) -> tuple[bytes, bool] | None:
        """Like :meth:`get` for a read: ``(bytes, committed)``; a kept object is handed out once."""
        key = (h, kind)
        found = self._pending.get(key)
        if found is not None:
            return found, False
        if key not in self._kept:
            return None
        with self._cv:
            found = self._kept.pop(key, None)
            if found is None:
                return None
            self._kept_bytes -= len(found)
        return found, True

    def put(self, h: ContentHash, kind: ObjectKind, plain: bytes, *, keep: bool = False) -> None:
        """Queue verified plain bytes (blocks while too many bytes are waiting).

        ``keep`` holds them in memory after the commit too, until read once (see the module).
        """
        key = (h, kind)
        with self._cv:
            if self._closed or key in self._pending or key in self._kept:
                return
            self._drop_kept(len(plain))
            if self._pending_bytes > self.max_pending:
                self._urgent += 1
                self._cv.notify_all()
                try:
                    while self._pending_bytes > self.max_pending and self._pending:
                        self._cv.wait(1.0)
                finally:
                    self._urgent -= 1
                if self._closed or key in self._pending or key in self._kept:
                    return  # another thread put the same object while this one waited for room
            self._pending[key] = plain
            self._pending_bytes += len(plain)
            if keep:
                self._keep.add(key)
            self._queue.append(key)
            self._queued_bytes += len(plain)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="rcds-cache-insert", daemon=True)
                self._thread.start()
            elif self._idle and (
                len(self._queue) == 1
                or len(self._queue) >= BATCH_OBJECTS
                or self._queued_bytes >= BATCH_BYTES
            ):  # the first of a batch starts the thread's delay, a full batch ends it
                self._cv.notify_all()

    def commit(self, items: list[tuple[ContentHash, ObjectKind, bytes]], *, keep: bool = False) -> None:
        """Commit verified objects now, on the calling thread (one lock, one transaction).

        With ``keep`` they are readable from memory (:meth:`get`, :meth:`take`) from before the
        commit until their first read, as for :meth:`put`. A cache failure is logged, as in the
        background.
        """
        if keep:
            with self._cv:
                if not self._closed:
                    self._drop_kept(sum(len(plain) for _, _, plain in items))
                    for h, kind, plain in items:
                        if (h, kind) not in self._kept:
                            self._kept[(h, kind)] = plain
                            self._kept_bytes += len(plain)
        try:
            self.cache.insert_many(items)
        except (StorageError, OSError) as exc:
            self.errors += 1
            log.warning("could not add %d objects to the cache %s: %s", len(items), self.cache.dir, exc)

    def _drop_kept(self, room: int) -> None:
        """Under the lock: forget the oldest kept objects until ``room`` more bytes fit the bound."""
        while self._kept and self._pending_bytes + self._kept_bytes + room > self.max_pending:
            self._kept_bytes -= len(self._kept.pop(next(iter(self._kept))))

    def _next_batch(self) -> list[tuple[ContentHash, ObjectKind, bytes]] | None:
        """Under the lock: wait for a batch worth committing; None when closed and drained."""
        first = None
        while True:
            if self._queue:
                if first is None:
                    first = time.monotonic()
                full = len(self._queue) >= BATCH_OBJECTS or self._queued_bytes >= BATCH_BYTES
                left = first + BATCH_DELAY - time.monotonic()
                if full or left <= 0 or self._urgent or self._closed:
                    break
            elif self._closed or self._parking:
                return None
            else:
                first, left = None, 0.0
            self._idle = True
            self._cv.wait(left if self._queue else None)
            self._idle = False
        items: list[tuple[ContentHash, ObjectKind, bytes]] = []
        size = 0
        while self._queue and len(items) < BATCH_OBJECTS and size < BATCH_BYTES:
            h, kind = self._queue.popleft()
            plain = self._pending[(h, kind)]
            items.append((h, kind, plain))
            size += len(plain)
        self._queued_bytes -= size
        self._busy += 1
        return items

    def _run(self) -> None:
        while True:
            with self._cv:
                items = self._next_batch()
            if items is None:
                return
            try:
                self.cache.insert_many(items)
            except (StorageError, OSError) as exc:
                self.errors += 1
                log.warning("could not add %d objects to the cache %s: %s", len(items), self.cache.dir, exc)
            except Exception:  # a bug: log it, but never leave this thread dead with writers blocked in put()
                self.errors += 1
                log.exception("could not add %d objects to the cache %s", len(items), self.cache.dir)
            finally:
                with self._cv:
                    for h, kind, plain in items:
                        key = (h, kind)
                        if key in self._keep:  # kept before it leaves _pending: readers see no gap
                            self._keep.discard(key)
                            self._kept[key] = plain
                            self._kept_bytes += len(plain)
                        del self._pending[key]
                        self._pending_bytes -= len(plain)
                    self._drop_kept(0)
                    self._busy -= 1
                    self._cv.notify_all()

    def flush(self, timeout: float = 60.0) -> None:
        """Wait (bounded) until everything queued so far is committed."""
        with self._cv:
            self._urgent += 1
            self._cv.notify_all()
            try:
                self._cv.wait_for(lambda: not self._queue and not self._busy, timeout)
            finally:
                self._urgent -= 1

    def park(self, timeout: float = 60.0) -> None:
        """Commit what is queued and stop the thread for now (the next :meth:`put` starts another):
        e.g. before a ``fork``, which must not copy a thread holding a lock."""
        self.flush(timeout)
        with self._cv:
            thread, self._thread = self._thread, None
            self._parking = True
            self._cv.notify_all()
        try:
            if thread is not None:
                thread.join(timeout)
        finally:
            with self._cv:
                self._parking = False

    def close(self, timeout: float = 60.0) -> None:
        """Commit what is queued, then stop the thread."""
        self.flush(timeout)
        with self._cv:
            self._closed = True
            self._kept.clear()
            self._kept_bytes = 0
            self._cv.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
