"""Linux namespace and mount system calls for ``rcds exec``, through the C library.

Python 3.11 has no ``os.unshare`` and no ``mount``; these thin wrappers call the C library
with ``ctypes`` and turn a failure into :class:`OSError` with the call named, so callers can
tell "not allowed here" (``EPERM``, ``EINVAL``) from a bug.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2

_PR_SET_PDEATHSIG = 1

_libc: ctypes.CDLL | None = None


def libc() -> ctypes.CDLL:
    """The C library, loaded once, with errno kept."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _libc


def _check(result: int, call: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{call}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    """``unshare(2)``: move this process into new namespaces (the process must be single-threaded)."""
    _check(libc().unshare(ctypes.c_int(flags)), "unshare")


def mount(source: str, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    """``mount(2)``."""
    enc = os.fsencode
    _check(
        libc().mount(
            enc(source),
            enc(target),
            enc(fstype) if fstype else None,
            ctypes.c_ulong(flags),
            enc(data) if data else None,
        ),
        f"mount {source} on {target}",
    )


def umount(target: str, flags: int = 0) -> None:
    """``umount2(2)``."""
    _check(libc().umount2(os.fsencode(target), ctypes.c_int(flags)), f"umount {target}")


def set_parent_death_signal(sig: int = signal.SIGKILL) -> None:
    """Have the kernel send ``sig`` to this process when its parent thread dies."""
    _check(libc().prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(sig), 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


def map_identity(inner_uid: int, outer_uid: int, inner_gid: int, outer_gid: int) -> None:
    """Write this process's uid and gid maps right after ``unshare(CLONE_NEWUSER)``: one id each.

    An unprivileged process may map only its own ids, and only after denying ``setgroups``.
    """
    try:
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
    except PermissionError:  # a nested namespace whose parent already denies it
        pass
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{inner_uid} {outer_uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{inner_gid} {outer_gid} 1")


def make_mounts_private() -> None:
    """Stop mount events propagating back to the parent namespace (after ``CLONE_NEWNS``)."""
    mount("none", "/", None, MS_REC | MS_PRIVATE)
