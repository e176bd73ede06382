"""FUSE passthrough: the kernel reads a file's bytes from a backing file of ours, not through us.

With ``FUSE_PASSTHROUGH`` granted at INIT, an ``OPEN`` answered with ``FOPEN_PASSTHROUGH`` and
a backing id makes the kernel serve that open file's ``read`` and ``mmap`` from the backing
file itself (its page cache, its read-ahead): no ``READ`` reaches the daemon. A backing id comes
from ``FUSE_DEV_IOC_BACKING_OPEN`` on the session's device with an open descriptor of the
backing file (for the mount: the object's file in the local cache, which never changes), and
needs ``CAP_SYS_ADMIN`` in the initial user namespace (a root mount; never in ``rcds exec``'s
user namespace).

Every open of one inode must name the same backing file (the kernel refuses another with
``EBUSY``), and an inode open in the ordinary (cached) mode cannot also be open in passthrough
mode (``ETXTBSY``) nor the other way round. :class:`Backings` keeps, per inode, its mode, the
number of opens the kernel still holds and the backing id, so an ``OPEN`` is always answered in
the mode of the inode's other opens.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable

from rcds.mount.fuse import protocol as p

log = logging.getLogger("rcds.mount")

CACHED = -1
"""The mode of an inode open in the ordinary way (reads come to the daemon)."""
IDLE_BACKINGS = 16384
"""Backing ids kept for files no longer open (each holds a cache file open in the kernel)."""


def passthrough_allowed() -> bool:
    """True if this process may register backing files: effective root with ``CAP_SYS_ADMIN``
    in the initial user namespace (where ``/proc/self/uid_map`` maps every uid to itself)."""
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/self/uid_map") as f:
            fields = f.read().split()
        with open("/proc/self/status") as f:
            caps = next((line.split()[1] for line in f if line.startswith("CapEff:")), "0")
    except OSError:
        return False
    identity = fields[:3] == ["0", "0", "4294967295"]
    return identity and bool(int(caps, 16) & (1 << 21))  # CAP_SYS_ADMIN


class Backings:
    """Per inode: the mode of its opens (a backing id, or :data:`CACHED`) and their number.

    ``device`` is the session's ``/dev/fuse`` descriptor. A backing id outlives the inode's
    last ``RELEASE`` (up to ``idle`` of them, least recently opened dropped first, and until
    the kernel forgets the inode): the next open of the file, e.g. the next pass of a job over
    its tree, is answered without opening the cache file or registering it again. Thread
    safe. If the kernel refuses to register a backing file for want of privilege (``EPERM``),
    passthrough is switched off for the rest of the session (:attr:`enabled`) and every open
    is answered in the ordinary mode.
    """

    def __init__(self, device: int, idle: int = IDLE_BACKINGS) -> None:
        self.device = device
        self.enabled = True
        self.idle_limit = idle
        self._open: dict[int, list[int]] = {}
        """inode -> [backing id or CACHED, opens held by the kernel]."""
        self._idle: OrderedDict[int, int] = OrderedDict()
        """inode -> backing id kept with no open (oldest first)."""
        self._lock = threading.Lock()

    def open(self, ino: int, backing_fd: Callable[[], int | None]) -> int:
        """Count one more open of ``ino``; its mode: that of the inode's opens already held, or
        its kept backing id, or a new one for ``backing_fd()`` (a fresh descriptor of the
        inode's content, or None if there is none; closed here), else :data:`CACHED`."""
        with self._lock:
            held = self._open.get(ino)
            if held is not None:
                held[1] += 1
                return held[0]
            mode = self._idle.pop(ino, CACHED)
            if mode == CACHED and self.enabled:
                fd = backing_fd()
                if fd is not None:
                    try:
                        mode = self._register(fd)
                    finally:
                        os.close(fd)
            self._open[ino] = [mode, 1]
            return mode

    def release(self, ino: int) -> None:
        """The kernel closed one open of ``ino`` (its backing id is kept, see the class)."""
        with self._lock:
            held = self._open.get(ino)
            if held is None:
                return
            held[1] -= 1
            if held[1] > 0:
                return
            del self._open[ino]
            if held[0] == CACHED:
                return
            self._idle[ino] = held[0]
            while len(self._idle) > self.idle_limit:
                self._unregister(self._idle.popitem(last=False)[1])

    def forget(self, ino: int) -> None:
        """The kernel forgot ``ino``: drop its kept backing id."""
        if ino not in self._idle:  # the usual answer, without the lock (a dict lookup is atomic)
            return
        with self._lock:
            backing = self._idle.pop(ino, CACHED)
            if backing != CACHED:
                self._unregister(backing)

    def close(self) -> None:
        """Forget every open (the session is over: the kernel dropped the ids with it)."""
        with self._lock:
            self._open.clear()
            self._idle.clear()

    def opens(self, ino: int) -> int:
        """Opens of ``ino`` the kernel holds."""
        held = self._open.get(ino)
        return 0 if held is None else held[1]

    def kept(self) -> int:
        """Backing ids registered now (open or kept)."""
        with self._lock:
            return len(self._idle) + sum(1 for mode, _ in self._open.values() if mode != CACHED)

    def _register(self, fd: int) -> int:
        try:
            # a mutable argument: ioctl then answers the call's result (the id), not the buffer
            return int(fcntl.ioctl(self.device, p.IOC_BACKING_OPEN, bytearray(p.BACKING_MAP.pack(fd, 0, 0))))
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP):
                self.enabled = False
                log.info("FUSE passthrough off: the kernel refused a backing file (%s)", exc)
            else:
                log.warning("FUSE passthrough: no backing file (%s), reading through the daemon", exc)
            return CACHED

    def _unregister(self, backing: int) -> None:
        try:
            fcntl.ioctl(self.device, p.IOC_BACKING_CLOSE, backing.to_bytes(4, "little"))
        except OSError as exc:
            if exc.errno != errno.ENODEV:  # ENODEV: unmounted meanwhile
                log.warning("FUSE passthrough: backing id %d not dropped: %s", backing, exc)
