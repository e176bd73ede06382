"""A store in a local directory, laid out exactly as a stratum 0/1 web server serves it."""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from rcds.errors import NotFoundError, StorageError
from rcds.storage.base import Store
from rcds.storage.names import check_name, is_object_name

TXN = "data/txn"
_access = os.access
_F_OK = os.F_OK
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_HEX = [f"{i:02x}" for i in range(256)]


_LIBC = ctypes.CDLL(None, use_errno=True)  # the C library already loaded: no ldconfig child process
_SYNC_FILE_RANGE = getattr(_LIBC, "sync_file_range", None)
if _SYNC_FILE_RANGE is not None:
    _SYNC_FILE_RANGE.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
_SYNC_FILE_RANGE_WRITE = 2
EARLY_WRITEBACK_MIN = 64 * 1024
"""Objects at least this large start their writing to disk as they are stored. Below it the
per-file cost of forcing the write out (block allocation and an I/O request per file, charged to
the writing process: ~0.3-0.5 ms of system time per object here) outweighs what it saves the
commit's ``syncfs``; the kernel's own writeback batches small files far more cheaply."""


def start_writeback(fd: int) -> None:
    """Start writing a file's dirty data to disk now, without waiting (Linux ``sync_file_range``;
    nothing elsewhere): the ``syncfs`` or ``fsync`` that makes it durable later finds little left
    to write, and the writing overlaps the work in between."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


def _syncfs(fd: int) -> None:
    syncfs = getattr(_LIBC, "syncfs", None)
    if syncfs is not None and syncfs(fd) == 0:
        return
    os.sync()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStore(Store):
    """Files under ``root``: ``.cvmfs*`` root files, ``data/00..ff`` objects, temp files in ``data/txn``."""

    def __init__(self, root: Path, *, create: bool = False) -> None:
        self.root = Path(root)
        if create:
            self.initialise()
        elif not (self.root / "data").is_dir():
            raise NotFoundError(f"{self.root} is not a repository store (no data/ directory)")
        self._txn = self.root / TXN
        self._counter = itertools.count(1)
        self._root_s = str(self.root)
        self._txn_s = str(self._txn)
        self._pid = os.getpid()
        self._objects = f"{self._root_s}/"
        self._tmp_prefix = f"{self._txn_s}/tmp.{self._pid}.{id(self):x}."
        """Temp names of :meth:`put_object`: unique per process and store (its counter is atomic)."""
        self.location = str(self.root)

    def initialise(self) -> None:
        """Create ``data/00`` ... ``data/ff`` and ``data/txn`` (made last: when it exists, all exist)."""
        if (self.root / TXN).is_dir():
            return
        try:
            for h in _HEX:
                (self.root / "data" / h).mkdir(parents=True, exist_ok=True)
            (self.root / TXN).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the store under {self.root}: {exc.strerror}") from None

    def _path(self, name: str) -> Path:
        return self.root / check_name(name)

    def staging_dir(self) -> Path:
        """``data/txn``: on the store's filesystem, so :meth:`put_file` is a rename."""
        return self._txn

    def temp_path(self) -> Path:
        """A fresh temp file name inside the store's filesystem (for :meth:`put_file`)."""
        n = next(self._counter)  # atomic under the GIL: safe for several writer threads
        return self._txn / f"tmp.{os.getpid()}.{threading.get_ident():x}.{n}"

    def put(self, name: str, data: bytes | memoryview) -> None:
        """Write via a temp file in ``data/txn`` and rename."""
        final = self._path(name)
        tmp = self.temp_path()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                if not is_object_name(name):
                    os.fsync(fd)  # root files are the commit points: make them durable
            finally:
                os.close(fd)
            os.rename(tmp, final)
            if not is_object_name(name):
                _fsync_dir(final.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StorageError(
                f"cannot write {final}: {exc.strerror}; check free space and permissions"
            ) from None

    def put_if_absent(self, name: str, data: bytes | memoryview) -> bool:
        """Write an object unless it exists already (content addressed); True if written.

        The fast path of ingest: string paths, one ``stat``, then ``open``/``write``/``close`` of a
        temp file in ``data/txn`` and ``rename`` (no fsync: :meth:`sync` makes the objects of a
        change durable at its end; the writing to disk of objects of at least
        :data:`EARLY_WRITEBACK_MIN` bytes is started here already).
        """
        if not is_object_name(name):  # a root file (or a bad name: InputError from _path)
            if os.path.exists(self._path(name)):
                return False
            self.put(name, data)
            return True
        return self.put_object(name, data)

    def put_object(self, name: str, data: bytes | memoryview) -> bool:
        """:meth:`put_if_absent` for an object name the caller built itself from a digest (not
        checked again: the per-object path of the ingest's workers); True if written.

        An object that cannot be seen (``access`` fails for any reason) is written; a store
        that cannot be read fails at the write with a clear error."""
        final = self._objects + name
        if _access(final, _F_OK):  # no exception object for the common "absent" answer
            return False
        tmp = self._tmp_prefix + str(next(self._counter))
        try:
            fd = os.open(tmp, _CREATE, 0o644)
            try:
                n = len(data)
                done = os.write(fd, data)
                if done < n:
                    view = memoryview(data)[done:]
                    while view:
                        view = view[os.write(fd, view) :]
                if n >= EARLY_WRITEBACK_MIN:
                    start_writeback(fd)
            finally:
                os.close(fd)
            os.rename(tmp, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise StorageError(
                f"cannot write {final}: {exc.strerror}; check free space and permissions"
            ) from None
        return True

    def put_file(self, name: str, src: Path) -> None:
        """Rename ``src`` (which must be on the same filesystem) into place."""
        final = self._path(name)
        try:
            os.chmod(src, 0o644)
            os.rename(src, final)
        except OSError as exc:
            raise StorageError(f"cannot move {src} to {final}: {exc.strerror}") from None

    def get(self, name: str) -> bytes:
        """Read a whole file."""
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"{name} is not in the store {self.root}") from None
        except OSError as exc:
            raise StorageError(f"cannot read {name} from {self.root}: {exc.strerror}") from None

    def open(self, name: str) -> BinaryIO:
        """Open a file for reading."""
        try:
            return open(self._path(name), "rb")
        except FileNotFoundError:
            raise NotFoundError(f"{name} is not in the store {self.root}") from None

    def has(self, name: str) -> bool:
        """Existence check."""
        return self._path(name).is_file()

    def size(self, name: str) -> int:
        """File size."""
        try:
            return self._path(name).stat().st_size
        except FileNotFoundError:
            raise NotFoundError(f"{name} is not in the store {self.root}") from None

    def delete(self, name: str) -> bool:
        """Unlink a file."""
        try:
            self._path(name).unlink()
        except FileNotFoundError:
            return False
        return True

    def list_objects(self) -> Iterator[str]:
        """Scan ``data/00..ff``."""
        for h in _HEX:
            try:
                names = os.listdir(self.root / "data" / h)
            except FileNotFoundError:
                continue
            for n in names:
                full = f"data/{h}/{n}"
                if is_object_name(full):
                    yield full

    def clean_temp(self) -> int:
        """Remove leftovers of interrupted writers from ``data/txn``; return how many."""
        n = 0
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self._txn):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    n += 1
        return n

    def sync(self) -> None:
        """Flush the filesystem holding the store (one ``syncfs`` instead of an fsync per object;
        :meth:`put_if_absent` started writing the large objects to disk already)."""
        fd = os.open(self.root, os.O_RDONLY)
        try:
            _syncfs(fd)
        finally:
            os.close(fd)
