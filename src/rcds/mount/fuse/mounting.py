"""Mounting and unmounting a FUSE file system: the ``/dev/fuse`` descriptor a session serves.

As root (also root of a user namespace that owns the mount namespace) we open ``/dev/fuse``
and call ``mount(2)`` with ``fd=N``. Otherwise the setuid ``fusermount3`` mounts: we run it
with ``_FUSE_COMMFD`` naming one end of a socket pair and it sends the opened device back over
it (``SCM_RIGHTS``). With ``auto_unmount`` it stays behind, holding the other end, and
unmounts when we exit, even when killed.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from rcds.errors import ConfigError

log = logging.getLogger("rcds.mount")

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MNT_DETACH = 2
HELPER_WAIT = 5.0
"""Seconds we wait for ``fusermount3`` to send the device or to exit."""
READ_AHEAD_KB = 1024
"""Read-ahead asked for the mount (the kernel's default is 128 KiB): with it a file of up to
1 MiB is read in one ``READ`` (:data:`rcds.mount.fuse.session.MAX_PAGES`)."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


@dataclass
class Mounted:
    """A mounted file system: the device descriptor and how to unmount it."""

    fd: int
    mountpoint: Path
    helper: subprocess.Popen[bytes] | None = None
    channel: socket.socket | None = None

    def unmount(self) -> None:
        """Detach the mount (lazily: files still open keep it alive until closed)."""
        if self.helper is None:
            if _libc().umount2(os.fsencode(self.mountpoint), MNT_DETACH) != 0:
                code = ctypes.get_errno()
                if code not in (errno.EINVAL, errno.ENOENT):  # EINVAL: not mounted (any more)
                    log.warning("umount %s: %s", self.mountpoint, os.strerror(code))
                    _fusermount_unmount(self.mountpoint)
        else:
            _fusermount_unmount(self.mountpoint)
        self.release()

    def release(self) -> None:
        """Let the ``auto_unmount`` helper go (it unmounts if still mounted) and reap it."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        if self.helper is not None:
            try:
                self.helper.wait(HELPER_WAIT)
            except subprocess.TimeoutExpired:
                self.helper.kill()
                self.helper.wait()
            self.helper = None

    def close(self) -> None:
        """Close the device (ends the connection if the mount is gone)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _fusermount_unmount(mountpoint: Path) -> None:
    if shutil.which("fusermount3") is None:
        return
    done = subprocess.run(
        ["fusermount3", "-u", "-z", "-q", "--", str(mountpoint)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        log.debug("fusermount3 -u %s: %s", mountpoint, done.stderr.strip())


def mount(mountpoint: Path, fsname: str, *, allow_other: bool, subtype: str = "rcds") -> Mounted:
    """Mount a read-only FUSE file system named ``fsname`` at ``mountpoint``."""
    if os.geteuid() == 0:
        try:
            return _mount_directly(mountpoint, fsname, allow_other, subtype)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EACCES) or shutil.which("fusermount3") is None:
                raise ConfigError(
                    f"cannot mount at {mountpoint}: {exc.strerror} (is /dev/fuse usable?)"
                ) from None
            log.info("mount(2) refused (%s); mounting with fusermount3", exc.strerror)
    return _mount_with_fusermount(mountpoint, fsname, allow_other, subtype)


def _mount_directly(mountpoint: Path, fsname: str, allow_other: bool, subtype: str) -> Mounted:
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    options = f"fd={fd},rootmode=40000,user_id={os.getuid()},group_id={os.getgid()},default_permissions"
    if allow_other:
        options += ",allow_other"
    flags = MS_RDONLY | MS_NOSUID | MS_NODEV
    rc = _libc().mount(
        fsname.encode(), os.fsencode(mountpoint), f"fuse.{subtype}".encode(), flags, options.encode()
    )
    if rc != 0:
        code = ctypes.get_errno()
        os.close(fd)
        raise OSError(code, os.strerror(code))
    return Mounted(fd, mountpoint)


def _mount_with_fusermount(mountpoint: Path, fsname: str, allow_other: bool, subtype: str) -> Mounted:
    if shutil.which("fusermount3") is None:
        raise ConfigError("mounting as a user needs fusermount3 (Debian package fuse3)")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    options = f"ro,fsname={fsname},subtype={subtype},default_permissions,auto_unmount"
    if allow_other:
        options += ",allow_other"
    env = dict(os.environ, _FUSE_COMMFD=str(theirs.fileno()))
    helper = subprocess.Popen(
        ["fusermount3", "-o", options, "--", str(mountpoint)],
        env=env,
        pass_fds=[theirs.fileno()],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    theirs.close()
    fds: list[int] = []
    try:
        ours.settimeout(60)
        _, fds, _, _ = socket.recv_fds(ours, 1, 1)
    except OSError as exc:
        log.debug("receiving the FUSE device: %s", exc)
    if not fds:
        ours.close()
        try:
            _, err = helper.communicate(timeout=HELPER_WAIT)
        except subprocess.TimeoutExpired:
            helper.kill()
            _, err = helper.communicate()
        message = (err or b"").decode(errors="replace").strip() or f"exit code {helper.returncode}"
        raise ConfigError(f"cannot mount at {mountpoint}: fusermount3: {message}")
    ours.settimeout(None)
    assert helper.stderr is not None
    helper.stderr.close()
    helper.stderr = None
    os.set_inheritable(fds[0], False)
    return Mounted(fds[0], mountpoint, helper, ours)


def _mount_device(mountpoint: Path) -> str | None:
    """``major:minor`` of the file system mounted at ``mountpoint`` (the last one mounted there),
    from ``/proc/self/mountinfo`` (a ``stat`` would be a request to ourselves)."""
    target = os.fsencode(mountpoint)
    found = None
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            for line in f:
                fields = line.split(b" ")
                if len(fields) > 4 and _unescape(fields[4]) == target:
                    found = fields[2].decode()
    except OSError:
        return None
    return found


def _unescape(field: bytes) -> bytes:
    """A mountinfo path: spaces, tabs, newlines and backslashes are written as octal escapes."""
    if b"\\" not in field:
        return field
    return re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), field)


def set_read_ahead(mountpoint: Path, kib: int = READ_AHEAD_KB) -> bool:
    """Raise the read-ahead of the FUSE mount at ``mountpoint`` to ``kib`` KiB (its backing
    device's ``read_ahead_kb`` in sysfs); True if done. Needs root of the initial namespace:
    elsewhere the kernel's default (128 KiB: a larger file takes one ``READ`` per 128 KiB)
    stays. Call it after ``INIT`` is answered (the kernel applies the answer's
    ``max_readahead`` as an upper bound then)."""
    device = _mount_device(mountpoint)
    if device is None:
        return False
    try:
        with open(f"/sys/class/bdi/{device}/read_ahead_kb", "w") as f:
            f.write(str(kib))
    except OSError as exc:
        log.debug("read-ahead of %s left as it is: %s", mountpoint, exc)
        return False
    return True
