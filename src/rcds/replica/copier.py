"""Pieces of a snapshot: a source that remembers what it handed out, and a pool that copies objects.

Objects are copied as their *raw stored bytes* (hash-verified, never re-compressed), so the replica
is byte-identical to the upstream for every object it holds.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import itertools
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from rcds.errors import IntegrityError, NotFoundError, StorageError
from rcds.format.hashes import ContentHash, ObjectKind
from rcds.repo.source import Source
from rcds.storage.base import Store

T = TypeVar("T")

_temp_counter = itertools.count()


class RecordingSource(Source):
    """Wraps a source and keeps the exact bytes of every root file and object it returned.

    Used around :func:`rcds.repo.view.establish_trust` so that the replica receives byte-identical
    copies of the manifest, whitelist and certificate that were verified (not a second download).
    An object the replica ``local`` holds already (the certificate, usually) is read from there,
    checked the same way, and fetched from upstream only if the local copy fails the check.
    """

    def __init__(self, inner: Source, local: Store | None = None) -> None:
        self.inner = inner
        self.local = local
        self.location = inner.location
        self.root_files: dict[str, bytes] = {}
        self.objects: dict[str, bytes] = {}

    def root_file(self, name: str) -> bytes:
        """Fetch a root file through the wrapped source and remember it."""
        data = self.inner.root_file(name)
        self.root_files[name] = data
        return data

    def fetch_checked(self, name: str, check: Callable[[bytes], T]) -> T:
        """Fetch and check an object through the wrapped source; remember the raw bytes that passed."""

        def remember(raw: bytes) -> T:
            out = check(raw)
            self.objects[name] = raw
            return out

        if self.local is not None and self.local.has(name):
            try:
                return remember(self.local.get(name))
            except (IntegrityError, NotFoundError, StorageError):
                pass  # a damaged local copy: take the upstream's
        return self.inner.fetch_checked(name, remember)


def temp_name(store: Store, kind: str) -> Path:
    """A fresh file name in the store's staging directory (thread safe naming)."""
    return store.staging_dir() / f"{kind}.{os.getpid()}.{threading.get_ident()}.{next(_temp_counter)}"


def write_temp(store: Store, data: bytes) -> Path:
    """Write ``data`` to a fresh temp file in the store's staging directory (``data/txn`` locally)."""
    tmp = temp_name(store, "snap")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StorageError(f"cannot write {tmp}: {exc.strerror}; check free space and permissions") from None
    return tmp


def fetch_raw(source: Source, h: ContentHash, kind: ObjectKind, referrer: str) -> bytes:
    """The verified raw bytes of an object; a missing object is an incomplete upstream (IntegrityError)."""
    try:
        return source.raw_object(h, kind)
    except NotFoundError as exc:
        name = h.object_name(kind)
        raise IntegrityError(
            f"{name}, referenced by {referrer}, is missing on the upstream {source.location}; "
            "the upstream repository is incomplete (ask its operators to check it)",
            name,
        ) from exc


class Batch:
    """The copies one catalog waits for before it may be stored (a counter, not a list of futures)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending = 0
        self._error: BaseException | None = None

    def _add(self) -> None:
        with self._cond:
            self._pending += 1

    def _finish(self, error: BaseException | None) -> None:
        with self._cond:
            self._pending -= 1
            if error is not None and self._error is None:
                self._error = error
            self._cond.notify_all()

    def wait(self) -> None:
        """Block until every copy of the batch is done; raise the first failure."""
        with self._cond:
            while self._pending and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise self._error


class ObjectCopier:
    """Copies objects from ``source`` to ``dest`` on a pool of threads.

    :meth:`enqueue` adds a copy to a :class:`Batch`; an object already queued for another catalog
    is not copied twice, but counts in both batches, so every catalog waits for *all* its
    objects. Objects already in ``dest`` are skipped by the workers. At most ``8 * workers``
    copies are queued at once (memory stays flat for huge catalogs); after the first failure
    further :meth:`enqueue` calls raise it.
    """

    def __init__(self, source: Source, dest: Store, workers: int) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.source = source
        self.dest = dest
        self.fetched = 0
        self.present = 0
        self.bytes = 0
        self._dirty = False  # something was written since the last sync
        self._pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rcds-snapshot")
        self._slots = threading.BoundedSemaphore(8 * workers)
        self._lock = threading.Lock()
        self._inflight: dict[str, list[Batch]] = {}
        self._error: BaseException | None = None

    def enqueue(self, h: ContentHash, kind: ObjectKind, referrer: str, batch: Batch) -> None:
        """Schedule the copy of one object (unless it is already scheduled) as part of ``batch``."""
        name = h.object_name(kind)
        with self._lock:
            if self._error is not None:
                raise self._error
            batch._add()
            waiting = self._inflight.get(name)
            if waiting is not None:
                waiting.append(batch)
                return
            self._inflight[name] = [batch]
        self._slots.acquire()
        try:
            self._pool.submit(self._run, h, kind, referrer, name)
        except BaseException as exc:
            self._finish(name, exc)
            raise

    def _run(self, h: ContentHash, kind: ObjectKind, referrer: str, name: str) -> None:
        error: BaseException | None = None
        try:
            self._copy(h, kind, name, referrer)
        except BaseException as exc:
            error = exc
        self._finish(name, error)

    def _finish(self, name: str, error: BaseException | None) -> None:
        with self._lock:
            batches = self._inflight.pop(name, [])
            if error is not None and self._error is None:
                self._error = error
        for b in batches:
            b._finish(error)
        self._slots.release()

    def _copy(self, h: ContentHash, kind: ObjectKind, name: str, referrer: str) -> None:
        if self.dest.has(name):
            with self._lock:
                self.present += 1
            return
        raw = fetch_raw(self.source, h, kind, referrer)
        self.dest.put(name, raw)  # atomic: a temp file and a rename locally, one PUT on S3
        with self._lock:
            self.fetched += 1
            self.bytes += len(raw)
            self._dirty = True

    def mark_dirty(self) -> None:
        """Note a write made outside the pool (a stored catalog) for :meth:`sync_if_dirty`."""
        with self._lock:
            self._dirty = True

    def sync_if_dirty(self) -> None:
        """Make everything written so far durable (before a catalog that refers to it is stored)."""
        with self._lock:
            dirty, self._dirty = self._dirty, False
        if dirty:
            self.dest.sync()

    def close(self) -> None:
        """Cancel what is still queued and wait for running copies."""
        self._pool.shutdown(wait=True, cancel_futures=True)
