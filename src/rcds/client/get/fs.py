"""The file-system side of ``rcds get``: safe names, temp files, atomic renames, content keys.

A file whose name is free (a fresh copy: the usual case) is created in place (``O_EXCL |
O_NOFOLLOW``), as ``tar`` does: one directory operation instead of two. Anything already there
(an older file, a symlink, an empty directory) is replaced atomically instead: the content goes
to a temp file beside it, which is renamed over it once complete. Either way the file gets its
mode and modification time before it counts as done, a failed write removes what it created,
and only files recorded in the resume state (written after they are complete) are skipped on a
resume: a file cut short by a crash is written again. A symlink or file where a directory belongs
is replaced, never followed.

The resume state itself is :mod:`rcds.client.get.state`.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import stat as stat_mod
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import TYPE_CHECKING, BinaryIO, Protocol

from rcds.errors import IntegrityError, StorageError

if TYPE_CHECKING:  # annotations only: a worker process (rcds.client.get.worker) imports this module
    from pathlib import Path

    from rcds.client.tree.files import Piece
    from rcds.format.dirent import Dirent

COPY_BLOCK = 1 << 20
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def read_umask() -> int:
    """The process umask without changing it (``/proc``); all bits set (never trusted) if unknown.

    :func:`write_file` uses the value read at the last call (made by ``rcds get`` at its start).
    """
    global _UMASK
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    _UMASK = int(line.split()[1], 8)
                    return _UMASK
    except (OSError, ValueError, IndexError):
        pass
    _UMASK = 0o777
    return _UMASK


_UMASK = 0o777


def content_key(entry: Dirent, pieces: Sequence[Piece]) -> str:
    """What identifies a file's content in the state file: its hash, or a hash of its chunk hashes."""
    if entry.hash is not None and not entry.is_chunked:
        return entry.hash.hex
    h = hashlib.sha1()
    for p in pieces:
        h.update(f"{p.offset}:{p.size}:{p.hash.hex}\n".encode())
    return "chunks-" + h.hexdigest()


class FileAttrs(Protocol):
    """What :func:`write_file` needs of an entry (a :class:`Dirent` has it)."""

    @property
    def path(self) -> str:
        """The repository path (for messages)."""
        ...

    @property
    def mode(self) -> int:
        """The ``st_mode`` (permission bits used)."""
        ...

    @property
    def size(self) -> int:
        """The content size in bytes."""
        ...

    @property
    def mtime(self) -> int:
        """Modification time, seconds."""
        ...

    @property
    def mtimens(self) -> int | None:
        """Nanoseconds of the modification time, if known."""
        ...


def mtime_ns(entry: FileAttrs) -> int:
    """The entry's modification time in nanoseconds."""
    return entry.mtime * 1_000_000_000 + (entry.mtimens or 0)


def check_name(name: str, where: str) -> str:
    """``name`` if it is a plain file name (no ``/``, ``..``, NUL), else :class:`IntegrityError`."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise IntegrityError(
            f"refusing to write {where!r}: the entry name {name!r} would leave the destination", where
        )
    return name


def prepare_dir(path: Path) -> None:
    """Make ``path`` a real directory (replacing a file or symlink there, never following it)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        os.mkdir(path, 0o700)
        return
    if stat_mod.S_ISDIR(st.st_mode):
        if not st.st_mode & stat_mod.S_IWUSR:
            os.chmod(path, st.st_mode | 0o700)
        return
    os.unlink(path)
    os.mkdir(path, 0o700)


_serial = itertools.count()
_salt = ""


def _new_salt() -> None:
    global _salt
    _salt = f"{os.getpid()}{os.urandom(3).hex()}"


_new_salt()
os.register_at_fork(after_in_child=_new_salt)


def tmp_name(final: str) -> str:
    """A fresh temp name beside ``final`` (unique to this process; created with ``O_EXCL``)."""
    head, _, name = final.rpartition("/")
    return f"{head}/.{name[:100]}.rcds-{_salt}{next(_serial)}.tmp"


def copy_into(src: BinaryIO, fd: int, size: int) -> int:
    """Copy an object file into ``fd`` (in the kernel when ``src`` is a real file)."""
    written = 0
    try:
        in_fd = src.fileno()
    except (OSError, AttributeError, ValueError):
        in_fd = -1
    if in_fd >= 0:
        while written < size:
            n = os.sendfile(fd, in_fd, written, size - written)
            if n == 0:
                break
            written += n
        return written
    while True:
        block = src.read(COPY_BLOCK)
        if not block:
            return written
        written += write_all(fd, block)


def write_all(fd: int, data: bytes | bytearray | memoryview) -> int:
    """Write all of ``data`` to ``fd``."""
    n = os.write(fd, data)
    if n == len(data):
        return n
    view = memoryview(data)[n:]
    while view:
        k = os.write(fd, view)
        view = view[k:]
        n += k
    return n


def replace(tmp: str, final: str) -> None:
    """Rename ``tmp`` onto ``final``; an existing directory there is removed first if empty."""
    try:
        os.replace(tmp, final)
    except IsADirectoryError:
        os.rmdir(final)  # a directory where a file belongs now; fails (and reports) if not empty
        os.replace(tmp, final)


def write_file(
    final: str,
    entry: FileAttrs,
    data: bytes | bytearray | None = None,
    fill: Callable[[int], int] | None = None,
) -> None:
    """Write ``final`` from ``data``, or by ``fill(fd)`` (which returns the bytes written).

    In place if nothing is at ``final``, else through a temp file renamed over it (see the module
    docstring). Sets the entry's permission bits and modification time. :class:`StorageError` if
    the disk fails, :class:`IntegrityError` if the content does not have the entry's size; either
    way nothing this call created is left behind.
    """
    mode = entry.mode & 0o777
    direct = mode & ~_UMASK == mode and mode & 0o600 == 0o600  # open() can set the mode itself
    created = mode if direct else 0o600
    tmp: str | None = None  # written in place: nothing was there (the usual case: a fresh copy)
    try:
        fd = os.open(final, _CREATE, created)
    except FileExistsError:  # replace what is there atomically: write beside it, then rename
        tmp = tmp_name(final)
        try:
            fd = os.open(tmp, _CREATE, created)
        except OSError as exc:
            raise StorageError(f"cannot create {tmp}: {exc.strerror or exc}") from exc
    except OSError as exc:
        raise StorageError(f"cannot create {final}: {exc.strerror or exc}") from exc
    try:
        try:
            written = 0
            if data is not None:
                written = write_all(fd, data) if data else 0
            if fill is not None:
                written += fill(fd)
            if written != entry.size:
                raise IntegrityError(
                    f"{entry.path}: got {written} bytes of content, the catalog says {entry.size}", entry.path
                )
            if not direct:
                os.fchmod(fd, mode)
            ns = mtime_ns(entry)
            os.utime(fd, ns=(ns, ns))
        finally:
            os.close(fd)
        if tmp is not None:
            replace(tmp, final)
    except OSError as exc:
        with suppress(OSError):
            os.unlink(tmp or final)
        raise StorageError(f"cannot write {final}: {exc.strerror or exc}") from exc
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp or final)
        raise


def write_symlink(final: str, e: Dirent) -> None:
    """Create the symbolic link ``final`` -> the entry's target (atomically, never followed)."""
    with suppress(OSError):
        if os.readlink(final) == e.symlink:
            return
    tmp = tmp_name(final)
    try:
        os.symlink(e.symlink, tmp)
        ns = mtime_ns(e)
        with suppress(NotImplementedError, OSError):
            os.utime(tmp, ns=(ns, ns), follow_symlinks=False)
        replace(tmp, final)
    except OSError as exc:
        with suppress(OSError):
            os.unlink(tmp)
        raise StorageError(f"cannot create the symbolic link {final}: {exc.strerror or exc}") from exc


def hard_link(primary: str, final: str) -> bool:
    """Make ``final`` a hard link of ``primary``; False if it already is one."""
    pst = os.lstat(primary)
    with suppress(OSError):
        st = os.lstat(final)
        if (st.st_ino, st.st_dev) == (pst.st_ino, pst.st_dev):
            return False
    tmp = tmp_name(final)
    try:
        os.link(primary, tmp)
        replace(tmp, final)
    except OSError as exc:
        with suppress(OSError):
            os.unlink(tmp)
        raise StorageError(f"cannot hard-link {final} to {primary}: {exc.strerror or exc}") from exc
    return True


def finish_dir(path: str, e: Dirent) -> None:
    """Give a directory its mode (kept owner-writable) and modification time."""
    ns = mtime_ns(e)
    try:
        os.chmod(path, (e.mode & 0o1777) | stat_mod.S_IRWXU, follow_symlinks=False)
        os.utime(path, ns=(ns, ns), follow_symlinks=False)
    except OSError as exc:
        raise StorageError(f"cannot set the mode of {path}: {exc.strerror or exc}") from exc
