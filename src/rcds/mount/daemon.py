"""Running the mount: preparing the mount point, the FUSE session, signals, clean unmount.

A mount point left behind by a killed daemon answers ``ENOTCONN``; :func:`prepare_mountpoint`
detaches it (``fusermount3 -u -z``, or ``umount -l`` as root) so mounting again just works.
:func:`serve` mounts, calls ``ready`` once the kernel has the mount (scripts wait for that line,
or for the mount point's ``st_dev`` to change), serves until SIGTERM/SIGINT/SIGHUP or an
external unmount, then unmounts and closes the repositories.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from rcds.errors import ConfigError
from rcds.mount.fuse import mounting
from rcds.mount.fuse.session import Session
from rcds.mount.operations import RcdsOperations

log = logging.getLogger("rcds.mount")

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
READERS = 4
"""Threads reading requests from the FUSE device."""


def _unmount_lazily(mountpoint: Path) -> None:
    commands = []
    if shutil.which("fusermount3"):
        commands.append(["fusermount3", "-u", "-z", str(mountpoint)])
    if os.geteuid() == 0 and shutil.which("umount"):
        commands.append(["umount", "-l", str(mountpoint)])
    for cmd in commands:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
        if done.returncode == 0:
            log.info("detached the dead mount at %s (%s)", mountpoint, cmd[0])
            return
        log.debug("%s: %s", " ".join(cmd), done.stderr.strip())
    raise ConfigError(
        f"{mountpoint} is a dead mount (ENOTCONN) and could not be detached; "
        f"run 'fusermount3 -u -z {mountpoint}'"
    )


def _dead(mountpoint: Path) -> bool:
    """True if ``mountpoint`` is a FUSE mount whose daemon is gone (``ENOTCONN``). ``statfs``
    always reaches the file system (a ``stat`` may be answered from the kernel's cache)."""
    try:
        os.stat(mountpoint)
        os.statvfs(mountpoint)
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            return True
        raise ConfigError(
            f"mount point {mountpoint}: {exc.strerror}; create it as an empty directory"
        ) from None
    return False


def prepare_mountpoint(mountpoint: Path) -> Path:
    """Check that ``mountpoint`` can be mounted on, detaching a dead FUSE mount left there."""
    if _dead(mountpoint):
        _unmount_lazily(mountpoint)
        if _dead(mountpoint):
            raise ConfigError(f"{mountpoint} is still a dead mount; run 'fusermount3 -u -z {mountpoint}'")
    if not mountpoint.is_dir():
        raise ConfigError(f"mount point {mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise ConfigError(
            f"{mountpoint} is already a mount point; unmount it first (fusermount3 -u {mountpoint})"
        )
    return mountpoint.resolve()


def _allow_other(allow_other: bool | None) -> bool:
    """Other users may use the mount: when asked, by default when running as root (also root
    of a user namespace)."""
    return allow_other if allow_other is not None else os.geteuid() == 0


def serve(
    ops: RcdsOperations,
    mountpoint: Path,
    fsname: str,
    ready: Callable[[], None],
    allow_other: bool | None = None,
    readers: int = READERS,
) -> None:
    """Mount ``ops`` at ``mountpoint`` and serve until a signal or an unmount (see the module).

    ``readers`` threads read requests from the device (see :mod:`rcds.mount.fuse.session`).
    """
    mountpoint = prepare_mountpoint(mountpoint)
    stop = threading.Event()
    pending: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        pending.append(signum)
        stop.set()

    def on_reload(signum: int, frame: object) -> None:
        log.info("SIGUSR1: checking for new revisions now")
        ops.refresh()

    previous = {s: signal.signal(s, on_signal) for s in SIGNALS}
    previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, on_reload)
    mounted = None
    try:
        mounted = mounting.mount(mountpoint, fsname, allow_other=_allow_other(allow_other))
        session = Session(mounted.fd, ops, ops.pool, readers=readers)
        ops.attach(session)
        session.start()
        mounting.set_read_ahead(mountpoint)
        ops.revisions.start()
        ready()
        while not stop.wait(0.25):
            if session.finished.is_set():
                log.info("unmounted from outside")
                break
        if pending:
            log.info("signal %d: unmounting", pending[0])
        mounted.unmount()
        session.join(2.0)
    except ConfigError:
        raise
    except OSError as exc:
        raise ConfigError(f"cannot mount at {mountpoint}: {exc} (is /dev/fuse usable?)") from None
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        try:
            if mounted is not None:
                mounted.release()
                mounted.close()
        finally:
            ops.close()
            if mounted is not None:
                log.info("unmounted %s", mountpoint)
