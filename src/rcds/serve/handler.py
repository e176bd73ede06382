"""The path rules: which request targets map to which files, and how they are opened.

A request target ``/cvmfs/<name>/<path>`` names the file ``<dir>/<path>`` of repository
``<name>``. Only these paths are acceptable (checked on the decoded path as requested *and*
on the path the file resolves to, so a symlink cannot lead anywhere the URL could not):

* a single top-level component starting with ``.cvmfs`` (``.cvmfspublished``, ...);
* ``data/<2 lowercase hex>/<name>`` (objects; ``data/txn`` is the writers' temp area);
* any other path whose components do not start with ``.``.

Every component is non-empty (no ``//``), at most 255 characters from
``[A-Za-z0-9._,+=@~-]`` after percent-decoding (so no ``/``, ``\\``, NUL, ``%`` or spaces),
and the resolved file must lie inside the resolved repository directory. Whatever breaks a
rule is reported as :class:`~rcds.errors.NotFoundError`, exactly like a missing file.
The HTTP side lives in :mod:`rcds.serve.connection` (one connection) and :mod:`rcds.serve.http`
(the server).
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from io import FileIO
from urllib.parse import unquote

from rcds.errors import NotFoundError, StorageError
from rcds.format import names
from rcds.serve.openat2 import NO_SYMLINK, open_no_symlinks

URL_PREFIX = "/cvmfs/"
"""The path prefix under which repositories are served."""

ROOT_FILE_PREFIX = ".cvmfs"
"""Basenames with this prefix are root files (manifest, whitelist, ...)."""

_MAX_TARGET = 4096
_COMPONENT = re.compile(r"[A-Za-z0-9._,+=@~-]{1,255}")
_BUCKET = re.compile(r"[0-9a-f]{2}")
# The common targets, with nothing to decode: /cvmfs/<name>/data/<xx>/<object>, /cvmfs/<name>/.cvmfs*
_FAST_OBJECT = re.compile(
    rf"/cvmfs/({names.PATTERN})/data/([0-9a-f]{{2}})/([A-Za-z0-9_,+=@~-][A-Za-z0-9._,+=@~-]{{0,254}})"
)
_FAST_ROOT_FILE = re.compile(rf"/cvmfs/({names.PATTERN})/(\.cvmfs[A-Za-z0-9._,+=@~-]{{0,249}})")
_MISSING = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG})
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
_DELETED = " (deleted)"  # how /proc/self/fd names an unlinked file; never part of a servable name
_PROC_FD = hasattr(os, "O_PATH") and os.path.isdir("/proc/self/fd")


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed request target: the repository name and the path components inside it."""

    repository: str
    parts: tuple[str, ...]

    @property
    def is_root_file(self) -> bool:
        """True if the basename starts with ``.cvmfs`` (short-lived root files)."""
        return self.parts[-1].startswith(ROOT_FILE_PREFIX)


def is_valid_repository_name(name: str) -> bool:
    """True if ``name`` can be served: a repository name (:mod:`rcds.format.names`)."""
    return names.is_repository_name(name, qualified=False)


def is_allowed(parts: Sequence[str]) -> bool:
    """True if the path components ``parts`` (relative to a repository) may be served."""
    if not parts or not all(_COMPONENT.fullmatch(part) for part in parts):
        return False
    head = parts[0]
    if head.startswith("."):
        return len(parts) == 1 and head.startswith(ROOT_FILE_PREFIX)
    if any(part.startswith(".") for part in parts):
        return False
    if head == "data":
        return len(parts) == 3 and _BUCKET.fullmatch(parts[1]) is not None
    return True


def _strip_authority(raw: str) -> str:
    """Reduce an absolute-form target (``http://host/path``) to its path (RFC 9112 §3.2.2)."""
    lowered = raw[:8].lower()
    for scheme in ("http://", "https://"):
        if lowered.startswith(scheme):
            rest = raw[len(scheme) :]
            end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
            return rest[end:] if rest[end : end + 1] == "/" else "/"
    return raw


def parse_target(raw: str) -> Target:
    """Parse a raw request target into a :class:`Target`; the query string is ignored.

    Raises :class:`~rcds.errors.NotFoundError` for anything that is not an acceptable
    ``/cvmfs/<name>/<path>`` target.
    """
    fast = _FAST_OBJECT.fullmatch(raw) or _FAST_ROOT_FILE.fullmatch(raw)
    if fast is not None:  # plain names only: exactly what the general rules below would accept
        name, *rest = fast.groups()
        if len(name) <= names.MAX_LENGTH:
            return Target(name, ("data", *rest) if len(rest) == 2 else tuple(rest))
    return _parse_general(raw)


def _parse_general(raw: str) -> Target:
    """:func:`parse_target` for any target (the fast path above gives the same results)."""
    if len(raw) > _MAX_TARGET:
        raise NotFoundError("request target too long")
    path = _strip_authority(raw).split("?", 1)[0]
    if not path.startswith(URL_PREFIX):
        raise NotFoundError(f"{raw!r} is not under {URL_PREFIX}")
    try:
        name, *parts = (unquote(seg, errors="strict") for seg in path[len(URL_PREFIX) :].split("/"))
    except UnicodeDecodeError:
        raise NotFoundError(f"{raw!r} is not valid percent-encoded UTF-8") from None
    if not is_valid_repository_name(name) or not is_allowed(parts):
        raise NotFoundError(f"{raw!r} does not name a servable file")
    return Target(name, tuple(parts))


def open_fd(root: str, parts: Sequence[str], *, parts_allowed: bool = False) -> tuple[int, int]:
    """Open the regular file ``parts`` under the resolved directory ``root``; return its descriptor and size.

    The size comes from ``fstat`` on the opened descriptor, so the pair stays consistent even
    if the path is atomically replaced meanwhile. Raises :class:`~rcds.errors.NotFoundError`
    if the file is missing, not a regular file, or resolves outside ``root`` or to a path
    :func:`is_allowed` refuses; :class:`~rcds.errors.StorageError` on other I/O errors.
    The caller closes the descriptor. ``parts_allowed=True`` tells that :func:`is_allowed`
    already accepted ``parts`` (as :func:`parse_target` does), which saves checking the
    resolved path again when it is the requested one.
    """
    path = root + os.sep + os.sep.join(parts) if parts_allowed else os.path.join(root, *parts)
    # No link on the way: the file opened is the (allowed) one the path names. Else check first.
    fd = _open(path, _OPEN_FLAGS, open_no_symlinks) if parts_allowed else NO_SYMLINK
    if fd == NO_SYMLINK and _PROC_FD:
        fd = _open_resolved(root, path, parts_allowed)
    elif fd == NO_SYMLINK:
        real = os.path.realpath(path)
        _check_resolved(root, real)
        fd = _open(real, _OPEN_FLAGS)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotFoundError(f"{path} is not a regular file")
        return fd, info.st_size
    except BaseException:
        os.close(fd)
        raise


def open_file(root: str, parts: Sequence[str]) -> tuple[FileIO, int]:
    """Like :func:`open_fd`, but return a file object (closed by the caller) and the size."""
    fd, size = open_fd(root, parts)
    return FileIO(fd, "rb", closefd=True), size


def _check_resolved(root: str, real: str) -> None:
    prefix = root.rstrip(os.sep) + os.sep
    if not real.startswith(prefix) or not is_allowed(real[len(prefix) :].split(os.sep)):
        raise NotFoundError(f"{real} is outside the servable files of {root}")


def _open(path: str, flags: int, opener: Callable[[str, int], int] | None = None) -> int:
    try:
        return (opener or os.open)(path, flags)
    except OSError as exc:
        if exc.errno in _MISSING:
            raise NotFoundError(f"{path} does not exist") from None
        raise StorageError(f"cannot open {path}: {exc.strerror}; check its permissions and disk") from exc


def _open_resolved(root: str, path: str, parts_allowed: bool) -> int:
    """Resolve ``path`` with an ``O_PATH`` descriptor (no open side effects, no read access yet),
    check where it really is (``/proc/self/fd``), and only then open it for reading through
    that descriptor, so the file checked is the file opened: a few system calls instead of
    one ``lstat`` per path component in :func:`os.path.realpath`."""
    handle = _open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        link = f"/proc/self/fd/{handle}"
        real = os.readlink(link)
        if real.endswith(_DELETED):  # replaced since it was opened (e.g. a new manifest): still whole
            real = real[: -len(_DELETED)]
        if real != path or not parts_allowed:
            _check_resolved(root, real)
        return _open(link, _OPEN_FLAGS & ~os.O_NOFOLLOW)
    finally:
        os.close(handle)


@dataclass(frozen=True, slots=True)
class AccessRecord:
    """One answered request, as given to the ``access_log`` callback."""

    client: str
    method: str
    target: str
    status: int
    sent: int
    """Body bytes actually sent (0 for HEAD)."""


AccessLog = Callable[[AccessRecord], None]
