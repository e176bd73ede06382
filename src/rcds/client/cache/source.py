"""A :class:`~rcds.repo.source.Source` that reads through the client caches.

Lookup order for an object: the local cache (plain bytes, verified before they were inserted),
then the alien cache (raw stored bytes, re-verified on every read), then the network through a
:class:`~rcds.net.fetcher.Fetcher` (verified inside the fetcher's validation, so a corrupt object
is re-fetched without caches and then from another host). What came from the alien cache or the
network is inserted into the local cache (catalogs pinned, at once; other objects in batches by a
background thread, see :mod:`rcds.client.cache.inserter`) and, raw, into the alien cache.
Nothing unverified is ever cached or returned.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeVar

from rcds.client.cache.inserter import BackgroundInserter
from rcds.client.cache.listing import CacheListing
from rcds.client.cache.local import LocalCache, object_name
from rcds.errors import IntegrityError, StorageError
from rcds.format.compression import StreamVerifier, verify_object
from rcds.format.hashes import ContentHash, ObjectKind
from rcds.net.failures import FetchError
from rcds.net.fetcher import Fetcher
from rcds.repo.catalog import Catalog
from rcds.repo.http_source import HttpSource, translate

if TYPE_CHECKING:
    from rcds.client.cache.alien import AlienCache

log = logging.getLogger("rcds.client")

T = TypeVar("T")

STREAM_THRESHOLD = 64 << 20
"""Objects whose plain size is above this are streamed into the cache file instead of memory."""

READ_WHOLE_MAX = 64 << 20
"""Objects up to this plain size are read by :meth:`CachedSource.read_object` in one system call."""
_READ = os.O_RDONLY | os.O_CLOEXEC

TOUCH_BATCH = 512
TOUCH_EVERY = 2.0


class CachedSource(HttpSource):
    """Objects from local cache -> alien cache -> network; see the module docstring.

    ``stats`` counts where objects came from (``local``, ``alien``, ``network``). Thread safe.
    """

    def __init__(self, fetcher: Fetcher, cache: LocalCache, alien: AlienCache | None = None) -> None:
        super().__init__(fetcher)
        self.cache = cache
        self.alien = alien
        self._lock = threading.Lock()
        self.stats = {"local": 0, "alien": 0, "network": 0}
        self._dir = str(cache.dir)
        self._read_flags = _READ | os.O_NOATIME
        self._touches: list[tuple[ContentHash, ObjectKind]] = []
        self._last_flush = time.monotonic()
        self.inserter = BackgroundInserter(cache)

    def count(self, where: str, n: int = 1) -> None:
        """Count ``n`` objects served from ``where`` (``local``, ``alien`` or ``network``)."""
        with self._lock:
            self.stats[where] += n

    def cached(self, h: ContentHash, kind: ObjectKind, size: int | None = None) -> BinaryIO | None:
        """The object from the local cache (or still queued for it) as a readable file, else None."""
        f = self._open_cached(h, kind, size, False)
        if f is None:
            queued = self.inserter.get(h, kind)
            if queued is None:
                return None
            f = io.BytesIO(queued)
        self.count("local")
        return f

    def read_object(self, h: ContentHash, kind: ObjectKind, size: int, compressed: bool = True) -> bytes:
        """An object's whole verified plain content (``size`` bytes), through the caches.

        An object still queued for the cache, or prefetched and not read yet, is served from
        memory; a cached one is read with three system calls (open, read, close).
        """
        found = self.inserter.take(h, kind)
        if found is not None and len(found[0]) == size:
            self.count("local")
            if found[1]:  # committed already: a cache hit, for the LRU order
                self._touched(h, kind)
            return found[0]
        fd = -1
        if size < READ_WHOLE_MAX:
            with suppress(FileNotFoundError):
                fd = os.open(os.path.join(self._dir, object_name(h, kind)), _READ)
        if fd >= 0:
            try:
                data = os.read(fd, size + 1)
            finally:
                os.close(fd)
            if len(data) == size:  # else: open_object() checks the size and quarantines the file
                self.count("local")
                self._touched(h, kind)
                return data
        with self.open_object(h, kind, size=size, compressed=compressed) as f:
            return f.read()

    def read_cached(self, h: ContentHash, kind: ObjectKind, size: int) -> bytes | None:
        """An object's whole plain content (``size`` bytes) if it is in the local cache or still
        queued for it, else None: never a download (the mount answers such reads on the thread
        that read the request). A cache file of another size also gives None (the caller's
        slow path, :meth:`open_object`, quarantines it)."""
        found = self.inserter.take(h, kind)
        if found is not None and len(found[0]) == size:
            if found[1]:
                self._touched(h, kind)
            self.count("local")
            return found[0]
        fd = self._open_cache_file(f"{self._dir}/{object_name(h, kind)}")
        if fd is None:
            return None
        try:
            data = os.read(fd, size + 1)
        finally:
            os.close(fd)
        if len(data) != size:
            return None
        self._hit(h, kind)
        return data

    def cached_fd(self, h: ContentHash, kind: ObjectKind, size: int) -> int | None:
        """A read-only descriptor of the object's file in the local cache if it is there with
        ``size`` bytes (an LRU hit), else None (also while it is only queued for the cache); the
        caller closes it. The mount hands it to the kernel as a passthrough backing file."""
        fd = self._open_cache_file(f"{self._dir}/{object_name(h, kind)}")
        if fd is None:
            return None
        try:
            found = os.fstat(fd).st_size
        except OSError:
            found = -1
        if found != size:
            os.close(fd)
            return None
        self._hit(h, kind)
        return fd

    def is_cached(self, h: ContentHash, kind: ObjectKind) -> bool:
        """True if the object is in the local cache or queued for it (no LRU update, no size check)."""
        if self.inserter.get(h, kind) is not None:
            return True
        try:
            os.stat(f"{self._dir}/{object_name(h, kind)}")
        except OSError:
            return False
        return True

    def presence(self) -> Callable[[ContentHash, ObjectKind], bool]:
        """:meth:`is_cached` for many objects in a row: each cache directory is listed once.

        The answers are a snapshot (see :mod:`rcds.client.cache.listing`).
        """
        listing = CacheListing(self._dir)
        queued = self.inserter.get

        empty = listing.bucket_is_empty

        def has(h: ContentHash, kind: ObjectKind) -> bool:
            if queued(h, kind) is not None:
                return True
            return not empty(h.digest[0]) and object_name(h, kind) in listing

        return has

    # -- Source API -----------------------------------------------------------------------------

    def object(
        self,
        h: ContentHash,
        kind: ObjectKind = ObjectKind.FILE,
        *,
        size: int | None = None,
        compressed: bool = True,
    ) -> bytes:
        """An object's verified plain content, through the caches."""
        with self.open_object(h, kind, size=size, compressed=compressed) as f:
            return f.read()

    # -- cache-aware API ------------------------------------------------------------------------

    def open_object(
        self,
        h: ContentHash,
        kind: ObjectKind = ObjectKind.FILE,
        *,
        size: int | None = None,
        compressed: bool = True,
        pin: bool = False,
        keep: bool = True,
    ) -> BinaryIO:
        """A readable file with the object's verified plain content (usually the cache file).

        ``pin`` protects the object from eviction (catalogs of mounted revisions); with
        ``keep`` false an object that is not cached yet is not added to the local cache.
        """
        f = self._open_cached(h, kind, size, pin)
        if f is not None:
            self.count("local")
            return f
        queued = None if pin else self.inserter.get(h, kind)
        if queued is not None:
            self.count("local")
            return io.BytesIO(queued)
        if self.alien is not None:
            plain = self.alien.get_verified(h, kind, size, compressed=compressed)
            if plain is not None:
                self.count("alien")
                return self._keep(h, kind, plain, pin) if keep else io.BytesIO(plain)
        self.count("network")
        name = h.object_name(kind)
        if keep and self.alien is None and size is not None and size > STREAM_THRESHOLD:
            return self._stream(h, kind, size, compressed, pin)
        raw, plain = self.fetch_checked(
            name, lambda raw: (raw, verify_object(raw, h, compressed=compressed, size=size, what=name))
        )
        if self.alien is not None:
            try:
                self.alien.put_raw(h, kind, raw, verify=False)
            except (StorageError, OSError) as exc:
                log.warning("cannot add %s to the alien cache: %s", name, exc)
        return self._keep(h, kind, plain, pin) if keep else io.BytesIO(plain)

    def _open_cached(self, h: ContentHash, kind: ObjectKind, size: int | None, pin: bool) -> BinaryIO | None:
        try:
            f: BinaryIO = open(os.path.join(self._dir, object_name(h, kind)), "rb")  # noqa: SIM115
        except FileNotFoundError:
            return None
        if size is not None and os.fstat(f.fileno()).st_size != size:
            f.close()
            self.cache.quarantine(h, kind, f"size differs from the expected {size} bytes")
            log.warning("cache object %s had a wrong size; quarantined", h.object_name(kind))
            return None
        if pin:
            self.cache.pin(h, kind)
        self._touched(h, kind)
        return f

    def _touched(self, h: ContentHash, kind: ObjectKind, *, local: bool = False) -> None:
        """Record a cache hit (and count it as ``local`` if asked: one lock for both); the LRU
        database is updated in batches (it is advisory)."""
        now = time.monotonic()
        with self._lock:
            if local:
                self.stats["local"] += 1
            self._touches.append((h, kind))
            if len(self._touches) < TOUCH_BATCH and now - self._last_flush < TOUCH_EVERY:
                return
            batch, self._touches, self._last_flush = self._touches, [], now
        self.cache.touch_many(batch)

    def _open_cache_file(self, path: str) -> int | None:
        """A read-only descriptor of a cache file, None if it is not there. Opened with
        ``O_NOATIME`` where allowed (the cache's owner): the first read of a file after it was
        written would otherwise update its access time (``relatime``), one inode write per
        object; the cache's LRU order is its own database, not the access times."""
        try:
            return os.open(path, self._read_flags)
        except FileNotFoundError:
            return None
        except PermissionError:
            if self._read_flags == _READ:
                raise
            self._read_flags = _READ  # not the files' owner: O_NOATIME is refused
        try:
            return os.open(path, _READ)
        except FileNotFoundError:
            return None

    def _hit(self, h: ContentHash, kind: ObjectKind) -> None:
        """:meth:`_touched` with ``local`` for the mount's reads from the cache file, one per
        ``READ``, without the lock (several threads read ``/dev/fuse``: a lock per read made
        them queue on it). ``list.append`` is atomic; the count may, rarely, miss a hit that
        raced another (it is a statistic), and a touch racing the batch's hand-over may land
        in the batch being written or be lost (the LRU order is advisory)."""
        self.stats["local"] += 1
        touches = self._touches
        touches.append((h, kind))
        if len(touches) >= TOUCH_BATCH or time.monotonic() - self._last_flush >= TOUCH_EVERY:
            self._touched_batch()

    def _touched_batch(self) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._touches) < TOUCH_BATCH and now - self._last_flush < TOUCH_EVERY:
                return  # another thread wrote it meanwhile
            batch, self._touches, self._last_flush = self._touches, [], now
        self.cache.touch_many(batch)

    def flush(self) -> None:
        """Commit queued objects and pending LRU updates to the cache."""
        self.inserter.flush()
        with self._lock:
            batch, self._touches = self._touches, []
        self.cache.touch_many(batch)

    def _keep(self, h: ContentHash, kind: ObjectKind, plain: bytes, pin: bool) -> BinaryIO:
        """Insert verified plain bytes into the local cache; return them as a file.

        Catalogs (``pin``) are committed at once, since they are opened from the cache file;
        other objects are committed in the background, in batches.
        """
        if not pin:
            self.inserter.put(h, kind, plain)
            return io.BytesIO(plain)
        try:
            with self.cache.writer(h, kind, pin=pin) as w:
                w.write(plain)
        except StorageError as exc:
            if pin:
                raise
            log.warning("serving %s without caching it: %s", h.object_name(kind), exc)
        return io.BytesIO(plain)

    def _stream(self, h: ContentHash, kind: ObjectKind, size: int, compressed: bool, pin: bool) -> BinaryIO:
        """Download a large object straight into a cache file (constant memory)."""
        name = h.object_name(kind)
        try:
            with self.cache.writer(h, kind, pin=pin) as w:
                self.fetcher.fetch_to_file(
                    name,
                    w.file,
                    verifier=lambda: _SizedVerifier(h, compressed, size, name),
                    store_output=True,
                )
        except FetchError as exc:
            raise translate(name, exc) from exc
        f = self.cache.open(h, kind)
        if f is None:  # evicted by another process already: fetch it once more into memory
            return io.BytesIO(
                self.fetch_checked(
                    name, lambda raw: verify_object(raw, h, compressed=compressed, size=size, what=name)
                )
            )
        return f

    def open_catalog(self, h: ContentHash, mountpoint: str, size: int | None) -> Catalog:
        """Open a catalog from its (pinned) cache file, fetching it first if needed.

        A cache file that is not a readable catalog is quarantined and fetched again, once.
        """
        what = f"catalog {mountpoint or '/'} ({h.hex})"
        for attempt in range(3):
            with self.open_object(h, ObjectKind.CATALOG, size=size, pin=True) as f:
                path = self.cache.dir / h.object_name(ObjectKind.CATALOG).removeprefix("data/")
                in_cache = isinstance(f, io.BufferedReader) and _same_file(f, path)
                if in_cache:
                    try:
                        return Catalog(path, mountpoint, what=what)
                    except IntegrityError:
                        if not path.exists():
                            continue  # evicted between open and connect: try again
                        if attempt:
                            raise
                        self.cache.quarantine(h, ObjectKind.CATALOG, "not a readable catalog")
                        continue
                data = f.read()
            # The catalog could not be kept in the cache (quota): use a private copy.
            return _private_catalog(self.cache.txn, h, mountpoint, data, what)
        raise StorageError(
            f"{what} keeps vanishing from the cache {self.cache.dir}; is the cache quota too small?"
        )

    def close(self) -> None:
        """Commit what is queued for the cache and drop pooled connections."""
        self.flush()
        self.inserter.close()
        self.fetcher.close()


class _SizedVerifier(StreamVerifier):
    """A stream verifier that also checks the plain size at the end."""

    def __init__(self, h: ContentHash, compressed: bool, size: int, what: str) -> None:
        super().__init__(h, compressed=compressed, what=what)
        self._expected_size = size

    def finish(self, size: int | None = None) -> None:
        """Check hash, stream end and plain size."""
        super().finish(self._expected_size if size is None else size)


def _same_file(f: BinaryIO, path: Path) -> bool:
    try:
        a, b = os.fstat(f.fileno()), os.stat(path)
    except OSError:
        return False
    return (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)


def _private_catalog(directory: Path, h: ContentHash, mountpoint: str, data: bytes, what: str) -> Catalog:
    path = directory / f"catalog.{h.hex}.{os.getpid()}.{threading.get_ident()}.db"
    path.write_bytes(data)
    try:
        cat = Catalog(path, mountpoint, what=what)
    finally:
        path.unlink()  # the open connection keeps the file readable
    return cat
