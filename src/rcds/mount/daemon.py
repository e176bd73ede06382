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
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import pyfuse3
import trio

from rcds.errors import ConfigError
from rcds.mount.operations import RcdsOperations

log = logging.getLogger("rcds.mount")

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


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


def fuse_options(fsname: str, allow_other: bool | None = None) -> set[str]:
    """Mount options: read-only, named, kernel permission checks; other users may read it when
    ``allow_other`` (default: when running as root, also root of a user namespace).

    Not as root, ``auto_unmount``: libfuse then mounts through the setuid ``fusermount3`` (which
    opens ``/dev/fuse`` with the user's permissions) and it stays behind to unmount if the daemon
    dies. Root of a user namespace counts as root: it mounts directly.
    """
    opts = {"ro", f"fsname={fsname}", "subtype=rcds", "default_permissions"}
    root = os.geteuid() == 0
    if allow_other if allow_other is not None else root:
        opts.add("allow_other")
    if not root:
        opts.add("auto_unmount")
    return opts


async def _main(
    ops: RcdsOperations,
    ready: Callable[[], None],
    pending: list[int],
    tasks: Sequence[Callable[[], Awaitable[None]]],
) -> None:
    async def on_signals(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(*SIGNALS) as signals:
            task_status.started()
            if pending:  # a signal arrived while mounting
                log.info("signal %d: unmounting", pending[0])
                pyfuse3.terminate()
                return
            async for signum in signals:
                log.info("signal %d: unmounting", signum)
                pyfuse3.terminate()
                return

    async def on_reload(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGUSR1) as signals:
            task_status.started()
            async for _ in signals:
                log.info("SIGUSR1: checking for new revisions now")
                ops.refresh()

    async with trio.open_nursery() as nursery:
        await nursery.start(on_signals)
        await nursery.start(on_reload)
        for task in tasks:
            nursery.start_soon(task)
        nursery.start_soon(ops.revision_loop)
        ready()
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def serve(
    ops: RcdsOperations,
    mountpoint: Path,
    fsname: str,
    ready: Callable[[], None],
    tasks: Sequence[Callable[[], Awaitable[None]]] = (),
    allow_other: bool | None = None,
) -> None:
    """Mount ``ops`` at ``mountpoint`` and serve until a signal or an unmount (see the module).

    ``tasks`` run as trio tasks beside the file system while it is mounted (e.g. a revision
    notification subscriber that calls ``ops.refresh(fqrn)``); they are cancelled at unmount.
    """
    mountpoint = prepare_mountpoint(mountpoint)
    pending: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in SIGNALS}
    previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        pyfuse3.init(ops, str(mountpoint), fuse_options(fsname, allow_other))
    except RuntimeError as exc:
        ops.close()
        for s, h in previous.items():
            signal.signal(s, h)
        raise ConfigError(f"cannot mount at {mountpoint}: {exc} (is /dev/fuse usable?)") from None
    try:
        trio.run(_main, ops, ready, pending, tasks)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        try:
            pyfuse3.close(unmount=True)
        finally:
            ops.close()
            log.info("unmounted %s", mountpoint)
