"""Background insertion of verified objects into the local cache, in batches.

Committing one object costs a file lock and a database transaction. Readers should not wait for
that: they hand the verified plain bytes to a :class:`BackgroundInserter` and go on; one thread
commits what accumulated with :meth:`~rcds.client.cache.LocalCache.insert_many` (one lock, one
transaction per batch). Until an object is committed, :meth:`BackgroundInserter.get` serves it
from memory. The bytes waiting are bounded; producers block when the bound is reached.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

from rcds.client.cache import LocalCache
from rcds.errors import StorageError
from rcds.format.hashes import ContentHash, ObjectKind

log = logging.getLogger("rcds.client")

Key = tuple[ContentHash, ObjectKind]

MAX_PENDING_BYTES = 64 << 20
BATCH_OBJECTS = 256
BATCH_BYTES = 16 << 20


class BackgroundInserter:
    """Queues verified objects for the local cache; a daemon thread commits them in batches."""

    def __init__(self, cache: LocalCache, max_pending: int = MAX_PENDING_BYTES) -> None:
        self.cache = cache
        self.max_pending = max_pending
        self._cv = threading.Condition()
        self._queue: deque[Key] = deque()
        self._pending: dict[Key, bytes] = {}
        self._pending_bytes = 0
        self._busy = 0
        self._closed = False
        self._thread: threading.Thread | None = None
        self.errors = 0

    def get(self, h: ContentHash, kind: ObjectKind) -> bytes | None:
        """The bytes of an object still waiting to be committed, or None."""
        with self._cv:
            return self._pending.get((h, kind))

    def put(self, h: ContentHash, kind: ObjectKind, plain: bytes) -> None:
        """Queue verified plain bytes (blocks while too many bytes are waiting)."""
        key = (h, kind)
        with self._cv:
            if self._closed or key in self._pending:
                return
            while self._pending_bytes > self.max_pending and self._pending:
                self._cv.wait(1.0)
            self._pending[key] = plain
            self._pending_bytes += len(plain)
            self._queue.append(key)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="rcds-cache-insert", daemon=True)
                self._thread.start()
            self._cv.notify_all()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    self._cv.wait()
                if not self._queue:
                    return
                batch: list[Key] = []
                size = 0
                while self._queue and len(batch) < BATCH_OBJECTS and size < BATCH_BYTES:
                    key = self._queue.popleft()
                    batch.append(key)
                    size += len(self._pending[key])
                items = [(h, k, self._pending[(h, k)]) for h, k in batch]
                self._busy += 1
            try:
                self.cache.insert_many(items)
            except (StorageError, OSError) as exc:
                self.errors += 1
                log.warning("could not add %d objects to the cache %s: %s", len(items), self.cache.dir, exc)
            finally:
                with self._cv:
                    for key in batch:
                        self._pending_bytes -= len(self._pending.pop(key))
                    self._busy -= 1
                    self._cv.notify_all()

    def flush(self, timeout: float = 60.0) -> None:
        """Wait (bounded) until everything queued so far is committed."""
        with self._cv:
            self._cv.wait_for(lambda: not self._queue and not self._busy, timeout)

    def close(self, timeout: float = 60.0) -> None:
        """Commit what is queued, then stop the thread."""
        self.flush(timeout)
        with self._cv:
            self._closed = True
            self._cv.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
