"""Telling the kernel to drop what it cached: an inode's attributes and pages (for a directory:
its cached listing), or a name in a directory.

Written to the device outside any request (a revision switch runs on its own thread): the
kernel locks the parent directory for an entry invalidation, so doing it from a handler of a
request on that directory could wait for itself.
"""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Iterable

from rcds.mount.fuse import protocol as p
from rcds.mount.fuse.session import Session

log = logging.getLogger("rcds.mount")


def inval_inode(session: Session, ino: int) -> bool:
    """Drop the kernel's attributes and cached pages/listing of ``ino``; False if it holds none."""
    try:
        session.notify(p.Notify.INVAL_INODE, [p.INVAL_INODE_OUT.pack(ino, 0, 0)])
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            log.debug("invalidating inode %d: %s", ino, exc)
        return False
    return True


def inval_entry(session: Session, parent: int, name: bytes) -> bool:
    """Drop the kernel's cached name ``name`` in directory ``parent`` (positive or negative)."""
    try:
        session.notify(p.Notify.INVAL_ENTRY, [p.INVAL_ENTRY_OUT.pack(parent, len(name), 0), name + b"\0"])
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            log.debug("invalidating %r in %d: %s", name, parent, exc)
        return False
    return True


def invalidate(session: Session, entries: Iterable[tuple[int, bytes]], inodes: Iterable[int]) -> int:
    """Invalidate names, then inodes; how many the kernel still held."""
    done = 0
    for parent, name in entries:
        done += inval_entry(session, parent, name)
    for ino in inodes:
        with contextlib.suppress(OSError):
            done += inval_inode(session, ino)
    return done
