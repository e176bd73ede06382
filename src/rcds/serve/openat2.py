"""``openat2(RESOLVE_NO_SYMLINKS)`` (Linux 5.6+), called through ``ctypes``.

Opening a path that contains no symbolic link at all means the file opened is the one the
path names, with no resolution to check afterwards: the common case of the server costs one
system call. Where the call is unavailable (other systems, old kernels, seccomp filters),
:func:`open_no_symlinks` says so once and the caller takes its general path.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys

_SYS_OPENAT2 = 437  # the same number on every Linux architecture (added after the syscall unification)
_AT_FDCWD = -100
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


NO_SYMLINK = -1
"""Returned by :func:`open_no_symlinks` when the path has a symbolic link (or the call is unavailable)."""


def _load() -> ctypes._NamedFuncPointer | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        syscall = ctypes.CDLL(None, use_errno=True).syscall
    except (OSError, AttributeError):
        return None
    syscall.restype = ctypes.c_long
    syscall.argtypes = (ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t)
    return syscall


_syscall = _load()


def open_no_symlinks(path: str, flags: int) -> int:
    """Open ``path`` with ``flags`` unless resolving it meets a symbolic link.

    Returns the descriptor, or :data:`NO_SYMLINK` if there is a link on the way (or openat2
    is not available); raises :class:`OSError` like :func:`os.open` otherwise.
    """
    global _syscall
    if _syscall is None:
        return NO_SYMLINK
    how = _OpenHow(flags, 0, _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
    fd = _syscall(_SYS_OPENAT2, _AT_FDCWD, os.fsencode(path), ctypes.addressof(how), ctypes.sizeof(how))
    if fd >= 0:
        return int(fd)
    err = ctypes.get_errno()
    if err == errno.ELOOP:
        return NO_SYMLINK
    if err in (errno.ENOSYS, errno.EPERM, errno.E2BIG, errno.EINVAL):
        _syscall = None  # not on this kernel (or filtered): never again
        return NO_SYMLINK
    raise OSError(err, os.strerror(err), path)


def available() -> bool:
    """True unless ``openat2`` was found missing (or filtered) on this system."""
    return _syscall is not None
