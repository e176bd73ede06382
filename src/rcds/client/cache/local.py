"""The local object cache: verified, decompressed objects on disk with an LRU quota.

Layout (reference §10.7)::

    <dir>/00..ff/<38 hex><algo id><kind suffix>   plain object bytes (verified before insertion)
    <dir>/txn/                                   temp files, renamed into 00..ff when complete
    <dir>/quarantaine/                           objects moved aside by quarantine()
    <dir>/cachedb                                LRU database (rcds.client.cache.quota)
    <dir>/lock_cachemgr                          flock serialising every change of files + database

Unlike stock, the name keeps the kind suffix, so a catalog and a file are distinct entries.

Concurrency: any number of processes and threads may use one cache directory. Every change
(insert, eviction, quarantine, rebuild) runs under an exclusive ``flock`` of ``lock_cachemgr``
and one database transaction; LRU touches are single atomic statements. Writers fill a private
temp file in ``txn/`` and publish it with ``os.replace`` only once complete, so a partial object
is never visible, whatever kills the writer. The database row is committed *before* the rename:
a crash in between leaves a row without a file (healed on the next lookup, and harmless for the
quota), never an uncounted file. A path returned by :meth:`LocalCache.path_of` may be evicted by
another process before it is opened; :meth:`LocalCache.open` is race-free (an open file stays
readable after eviction, POSIX unlink semantics).
"""

from __future__ import annotations

import fcntl
import itertools
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

from rcds.client.cache.quota import SUBDIRS, Entry, QuotaDB, compare, scan_tree
from rcds.errors import StorageError
from rcds.format.hashes import ContentHash, ObjectKind

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_SUBDIR_SET = frozenset(SUBDIRS)


def object_name(h: ContentHash, kind: ObjectKind) -> str:
    """The cache-relative name ``ab/<38 hex><algo id><suffix>``."""
    return h.object_name(kind).removeprefix("data/")


def make_temp(txn: Path, mode: int) -> tuple[int, Path]:
    """Create a unique temp file ``<pid>.<random>.tmp`` in ``txn``; return its fd and path."""
    import tempfile

    fd, name = tempfile.mkstemp(dir=txn, prefix=f"{os.getpid()}.", suffix=".tmp")
    os.fchmod(fd, mode)
    return fd, Path(name)


def clean_txn(txn: Path, max_age: float, check_pid: bool) -> int:
    """Remove temp files older than ``max_age`` seconds, or (``check_pid``) whose writer is dead."""
    removed = 0
    now = time.time()
    with suppress(FileNotFoundError), os.scandir(txn) as it:
        for e in it:
            try:
                stale = now - e.stat().st_mtime > max_age
                if not stale and check_pid:
                    pid = e.name.split(".", 1)[0]
                    stale = pid.isdigit() and not _alive(int(pid))
                if stale:
                    os.unlink(e.path)
                    removed += 1
            except FileNotFoundError:
                pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class CacheWriter:
    """What :meth:`LocalCache.writer` yields: write the plain bytes; ``path`` is set on commit."""

    def __init__(self, file: BinaryIO, tmp_path: Path) -> None:
        self.file = file
        self.tmp_path = tmp_path
        self.path: Path | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append bytes to the pending object (:class:`StorageError` if the disk fails)."""
        try:
            return self.file.write(data)
        except OSError as exc:
            raise StorageError(f"cannot write cache temp file {self.tmp_path}: {exc}") from exc


class LocalCache:
    """A content-addressed cache directory with an optional LRU quota (``None`` = unmanaged)."""

    def __init__(
        self,
        directory: Path,
        quota_bytes: int | None = None,
        *,
        busy_timeout: float = 30.0,
        stale_txn_age: float = 3600.0,
    ) -> None:
        if quota_bytes is not None and quota_bytes <= 0:
            raise StorageError(f"cache quota must be positive or None, not {quota_bytes}")
        self.dir = Path(directory)
        self.quota_bytes = quota_bytes
        self.txn = self.dir / "txn"
        self.quarantine_dir = self.dir / "quarantaine"
        self._lockfile = self.dir / "lock_cachemgr"
        self._busy_timeout = busy_timeout
        self._dir = str(self.dir)
        self._txn = str(self.txn)
        self._tmp_prefix = f"{os.getpid()}.b{os.urandom(3).hex()}."
        self._serial = itertools.count()
        self.evictions = 0
        """Objects removed to keep the quota (a plain counter: a daemon exposes it as a metric)."""
        fresh = self._make_tree()
        clean_txn(self.txn, stale_txn_age, check_pid=True)
        with self._flock():
            self._db, stale = QuotaDB.open_or_recreate(self.dir / "cachedb", busy_timeout)
            if stale:
                self._rebuild_locked(self._db, scan=not fresh)

    def _make_tree(self) -> bool:
        """Create what is missing of the directory skeleton (one directory listing when nothing
        is); True if this call created every object directory.

        A tree whose object directories were all just made holds no object, so a new database
        need not scan it.
        """
        try:
            with os.scandir(self._dir) as it:
                present = {e.name for e in it if e.is_dir()}
        except FileNotFoundError:
            present = set()
        made = 0
        try:
            if not present:
                self.dir.mkdir(parents=True, exist_ok=True)
            for sub in (*SUBDIRS, "txn", "quarantaine"):
                if sub in present:
                    continue
                try:
                    os.mkdir(f"{self._dir}/{sub}", 0o700)
                    made += sub in _SUBDIR_SET
                except FileExistsError:
                    if not os.path.isdir(f"{self._dir}/{sub}"):
                        raise
        except OSError as exc:
            raise StorageError(f"cannot create cache directory {self.dir}: {exc.strerror or exc}") from exc
        return made == len(SUBDIRS)

    # -- setup and maintenance -------------------------------------------------------------------

    def _rebuild_locked(self, db: QuotaDB, scan: bool = True) -> None:
        pinned: set[str] = set()
        with suppress(sqlite3.Error):
            pinned = {e.name for e in db.entries() if e.pinned}
        found = scan_tree(self.dir) if scan else []
        entries = [Entry(e.name, e.size, e.acseq, e.kind, e.name in pinned) for e in found]
        with db.transaction():
            db.replace_all(entries)

    def rebuild(self) -> None:
        """Rebuild the database from the directory tree (pins of surviving objects are kept)."""
        with self._flock():
            self._rebuild_locked(self._db)

    def check(self) -> list[str]:
        """Compare database and tree; return the problems found (empty when consistent)."""
        with self._flock():
            return compare(self._db.entries(), scan_tree(self.dir), self._db.total())

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def __enter__(self) -> LocalCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _flock(self) -> Iterator[None]:
        fd = os.open(self._lockfile, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- lookups ---------------------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        return self.dir / name

    def contains(self, h: ContentHash, kind: ObjectKind) -> bool:
        """True if the object is present (without marking it used)."""
        return self._path(object_name(h, kind)).is_file()

    def _touch_or_heal(self, name: str, kind: ObjectKind, present: bool) -> None:
        try:
            settled = self._db.touch(name) if present else self._db.get(name) is None
            if settled:
                return  # the usual cases: a hit with its row, a miss without one
            with self._flock(), self._db.transaction():
                st = os.stat(self._path(name)) if self._path(name).is_file() else None
                if st is None:
                    self._db.remove(name)
                elif self._db.get(name) is None:
                    self._db.upsert(name, st.st_size, kind.value)
        except sqlite3.OperationalError:
            pass  # LRU order is advisory; a busy database must not fail a read

    def path_of(self, h: ContentHash, kind: ObjectKind) -> Path | None:
        """The object's file (marked as used), or ``None``. It may be evicted before it is opened."""
        name = object_name(h, kind)
        present = self._path(name).is_file()
        self._touch_or_heal(name, kind, present)
        return self._path(name) if present else None

    def open(self, h: ContentHash, kind: ObjectKind) -> BinaryIO | None:
        """Open the object for reading (marked as used), or ``None`` if absent."""
        name = object_name(h, kind)
        try:
            f = open(self._path(name), "rb")  # noqa: SIM115 - returned to the caller
        except FileNotFoundError:
            self._touch_or_heal(name, kind, False)
            return None
        self._touch_or_heal(name, kind, True)
        return f

    def touch_many(self, objects: Iterable[tuple[ContentHash, ObjectKind]]) -> None:
        """Mark objects as used in one transaction (for readers that open files themselves).

        LRU order is advisory: objects without a row are ignored, a busy database is skipped.
        """
        names = [object_name(h, kind) for h, kind in objects]
        if not names:
            return
        try:
            with self._db.transaction():
                self._db.touch_many(names)
        except sqlite3.OperationalError:
            pass

    def size(self) -> int:
        """Bytes of all cached objects (as recorded)."""
        return self._db.total()

    def pinned_size(self) -> int:
        """Bytes of pinned objects."""
        return self._db.pinned_total()

    def entries(self) -> list[Entry]:
        """All recorded objects, least recently used first."""
        return self._db.entries()

    # -- inserts ---------------------------------------------------------------------------------

    @contextmanager
    def writer(self, h: ContentHash, kind: ObjectKind, *, pin: bool = False) -> Iterator[CacheWriter]:
        """Write an object's plain bytes; committed atomically on success, discarded on exception."""
        try:
            fd, tmp = make_temp(self.txn, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot create a temp file in {self.txn}: {exc.strerror or exc}") from exc
        f = os.fdopen(fd, "wb")
        w = CacheWriter(f, tmp)
        try:
            yield w
        except BaseException:
            f.close()
            tmp.unlink(missing_ok=True)
            raise
        try:
            f.close()
            w.path = self._commit(tmp, h, kind, pin)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot write {object_name(h, kind)} into {self.dir}: {exc}") from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def insert_bytes(self, h: ContentHash, kind: ObjectKind, plain: bytes, *, pin: bool = False) -> Path:
        """Store verified plain bytes under ``h``; return the object's path."""
        path = self.path_of(h, kind)
        if path is not None and (not pin or self.pin(h, kind)):
            return path
        with self.writer(h, kind, pin=pin) as w:
            w.write(plain)
        assert w.path is not None
        return w.path

    def insert_many(self, items: Iterable[tuple[ContentHash, ObjectKind, bytes]]) -> int:
        """Store several verified objects (plain bytes, unpinned) under one lock and one transaction.

        Objects larger than the quota are skipped; objects the quota cannot keep after this batch
        (least recently used first, so older ones go before any of the batch) are not kept.
        Returns how many objects were stored.
        """
        return self.insert_named((object_name(h, kind), kind._value_, plain) for h, kind, plain in items)

    def insert_named(self, items: Iterable[tuple[str, str, bytes | bytearray]]) -> int:
        """:meth:`insert_many` of objects given by cache name (:func:`object_name`), kind value
        and verified plain bytes: for a writer that has the names already (no hash objects)."""
        staged: list[tuple[str, str, int, str]] = []
        try:
            for name, kind_value, plain in items:
                if self.quota_bytes is not None and len(plain) > self.quota_bytes:
                    continue
                tmp = f"{self._txn}/{self._tmp_prefix}{next(self._serial)}.tmp"
                fd = os.open(tmp, _CREATE, 0o600)
                staged.append((name, tmp, len(plain), kind_value))
                try:
                    written = os.write(fd, plain)  # all of it, for a regular file
                    if written < len(plain):
                        view = memoryview(plain)[written:]
                        while view:
                            view = view[os.write(fd, view) :]
                finally:
                    os.close(fd)
            if not staged:
                return 0
            with self._flock():
                with self._db.transaction():
                    self._db.upsert_many([(name, size, kind) for name, _, size, kind in staged])
                    evicted = self._make_room_batch(sum(size for _, _, size, _ in staged))
                stored = 0
                for name, tmp, _, _ in staged:
                    if name not in evicted:
                        os.replace(tmp, f"{self._dir}/{name}")
                        stored += 1
            staged = [s for s in staged if s[0] in evicted]  # the rest were renamed into place
            return stored
        except OSError as exc:
            raise StorageError(f"cannot write objects into {self.dir}: {exc.strerror or exc}") from exc
        except sqlite3.Error as exc:
            raise StorageError(f"cache database {self._db.path} failed: {exc}") from exc
        finally:
            for _, tmp, _, _ in staged:
                with suppress(FileNotFoundError):
                    os.unlink(tmp)

    def _make_room_batch(self, size: int) -> set[str]:
        """Like :meth:`_make_room` after recording a batch of ``size`` bytes; returns the evicted names."""
        quota = self.quota_bytes
        if quota is None or self._db.total() <= quota:
            return set()
        victims, left = self._db.plan_eviction(min(quota // 2 + size, quota))
        if left > quota:
            raise StorageError(
                f"cache quota too small for pinned catalogs: raise CVMFS_QUOTA_LIMIT "
                f"({self._db.pinned_total()} bytes pinned, quota of {quota} bytes in {self.dir})"
            )
        self._remove(victims)
        return set(victims)

    def insert_file(self, h: ContentHash, kind: ObjectKind, src: Path, *, pin: bool = False) -> Path:
        """Move a complete file (ideally already in ``txn/``) into the cache; ``src`` is consumed."""
        src = Path(src)
        try:
            if src.parent.resolve() != self.txn.resolve():
                fd, tmp = make_temp(self.txn, 0o600)
                os.close(fd)
                try:
                    os.replace(src, tmp)
                except OSError:  # another file system: copy, then drop the source
                    import shutil

                    shutil.copyfile(src, tmp)
                    src.unlink()
                src = tmp
            return self._commit(src, h, kind, pin)
        except OSError as exc:
            if src.parent == self.txn:
                src.unlink(missing_ok=True)
            raise StorageError(f"cannot insert {src} into {self.dir}: {exc}") from exc

    def _commit(self, tmp: Path, h: ContentHash, kind: ObjectKind, pin: bool) -> Path:
        name = object_name(h, kind)
        size = tmp.stat().st_size
        if self.quota_bytes is not None and size > self.quota_bytes:
            tmp.unlink(missing_ok=True)
            raise StorageError(
                f"object {name} ({size} bytes) is larger than the cache quota ({self.quota_bytes} bytes); "
                "raise CVMFS_QUOTA_LIMIT"
            )
        try:
            with self._flock():
                with self._db.transaction():
                    self._db.upsert(name, size, kind.value, pin)
                    if pin:
                        self._check_pinned()
                    self._make_room(name, size)
                try:  # the row is committed first: a crash here leaves a harmless row without file
                    os.replace(tmp, self._path(name))
                except OSError:
                    with self._db.transaction():
                        self._db.remove(name)
                    raise
        except sqlite3.Error as exc:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"cache database {self._db.path} failed: {exc}") from exc
        except StorageError:
            tmp.unlink(missing_ok=True)
            raise
        return self._path(name)

    # -- quota -----------------------------------------------------------------------------------

    def _make_room(self, name: str, size: int) -> None:
        """Inside flock + transaction, after recording ``name``: evict LRU objects to respect the quota.

        Stock cleans up to half the limit. Nothing is deleted before it is certain the quota can be
        met, so an error rolls back cleanly.
        """
        quota = self.quota_bytes
        if quota is None or self._db.total() <= quota:
            return
        victims, left = self._db.plan_eviction(min(quota // 2 + size, quota), keep=name)
        if left > quota:
            raise StorageError(
                f"cache quota too small for pinned catalogs: raise CVMFS_QUOTA_LIMIT "
                f"({left - size} bytes pinned + {size} new > quota of {quota} bytes in {self.dir})"
            )
        self._remove(victims)

    def _remove(self, names: list[str]) -> int:
        self.evictions += len(names)
        freed = 0
        for victim in names:
            freed += self._db.remove(victim)
            self._path(victim).unlink(missing_ok=True)
        return freed

    def _check_pinned(self) -> None:
        if self.quota_bytes is not None and (pinned := self._db.pinned_total()) > self.quota_bytes:
            raise StorageError(
                f"cache quota too small for pinned catalogs: raise CVMFS_QUOTA_LIMIT "
                f"({pinned} bytes pinned > quota of {self.quota_bytes} bytes in {self.dir})"
            )

    def evict_to(self, target_bytes: int) -> int:
        """Evict least recently used unpinned objects down to ``target_bytes``; return bytes freed."""
        with self._flock(), self._db.transaction():
            return self._remove(self._db.plan_eviction(target_bytes)[0])

    def pin(self, h: ContentHash, kind: ObjectKind) -> bool:
        """Protect an object from eviction; False if it is not cached.

        Raises :class:`StorageError` if the pinned objects would exceed the quota.
        """
        name = object_name(h, kind)
        with self._flock(), self._db.transaction():
            if not self._path(name).is_file() or not self._db.set_pinned(name, True):
                return False
            self._check_pinned()
        return True

    def unpin(self, h: ContentHash, kind: ObjectKind) -> bool:
        """Make an object evictable again; False if it is not cached."""
        return self._db.set_pinned(object_name(h, kind), False)

    def unpin_all(self) -> None:
        """Clear every pin (pins are shared by all processes using this cache)."""
        self._db.unpin_all()

    def quarantine(self, h: ContentHash, kind: ObjectKind, reason: str) -> Path | None:
        """Move an object to ``quarantaine/`` (with a ``.reason`` note); return its new path or ``None``."""
        name = object_name(h, kind)
        dest = self.quarantine_dir / f"{name.replace('/', '')}.{time.time_ns()}"
        with self._flock(), self._db.transaction():
            self._db.remove(name)
            try:
                os.replace(self._path(name), dest)
            except FileNotFoundError:
                return None
        with suppress(OSError):
            Path(f"{dest}.reason").write_text(reason.rstrip("\n") + "\n")
        return dest
