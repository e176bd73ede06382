"""The file system view of ``rcds exec``'s namespace: where the repositories appear.

Inside a private mount namespace :func:`prepare_root` makes ``--root`` (``/cvmfs``) a directory
the mount can use. An existing directory is used as it is (a mount on top hides its content in
the namespace only). A missing one cannot be created by an unprivileged user, so, as cvmfsexec
does, a new root is built: a tmpfs holding a bind mount of every top-level entry of ``/`` (and
the same symbolic links), plus the empty ``--root``; the command is then ``chroot``-ed into it.

Runtime directories (the tmpfs's mount point, the ``fusermount3`` mount point) live in
:func:`runtime_dir`, one per ``rcds exec`` process, named after its PID, and :func:`sweep`
removes those whose process is gone (after ``kill -9``).
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import subprocess
from pathlib import Path

from rcds.errors import ConfigError
from rcds.mount import namespaces as ns

_OWNED = re.compile(r"(root|mnt)-(\d+)")


def runtime_dir() -> Path:
    """``$XDG_RUNTIME_DIR/rcds``, else ``/tmp/rcds-UID`` (created mode 0700, must be the user's)."""
    xdg = os.environ.get("XDG_RUNTIME_DIR", "").strip()
    base = Path(xdg) / "rcds" if xdg and os.path.isdir(xdg) else Path(f"/tmp/rcds-{os.getuid()}")
    base.mkdir(mode=0o700, exist_ok=True)
    st = os.lstat(base)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise ConfigError(f"{base} is not a directory owned by this user: remove it or set XDG_RUNTIME_DIR")
    return base


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(base: Path) -> list[Path]:
    """Remove runtime directories left by ``rcds exec`` processes that no longer run; return them."""
    removed = []
    for entry in base.iterdir():
        m = _OWNED.fullmatch(entry.name)
        if not m or _alive(int(m.group(2))):
            continue
        if m.group(1) == "mnt":  # a fusermount3 mount whose daemon was killed: detach it
            subprocess.run(["fusermount3", "-u", "-z", "-q", str(entry)], check=False, capture_output=True)
        with contextlib.suppress(OSError):
            entry.rmdir()
            removed.append(entry)
    return removed


def check_root_path(root: Path) -> None:
    """Refuse a ``--root`` that neither exists nor sits directly under ``/``."""
    if not root.is_absolute() or ".." in root.parts:
        raise ConfigError(f"--root {root}: give an absolute path without '..', e.g. /cvmfs")
    if not root.exists() and root.parent != Path("/"):
        raise ConfigError(
            f"--root {root} does not exist; rcds exec can create a missing root only directly under / "
            "(e.g. /cvmfs): create the directory first or choose another root"
        )
    if root.exists() and not root.is_dir():
        raise ConfigError(f"--root {root} is not a directory")


def build_new_root(base: Path, root: Path) -> Path:
    """A tmpfs at ``base`` that mirrors ``/`` by bind mounts and has an empty ``root``; returns the
    path of ``root`` in it. Runs inside a private mount namespace with mount rights."""
    ns.mount("tmpfs", str(base), "tmpfs", ns.MS_NOSUID | ns.MS_NODEV, "mode=0755")
    for entry in os.scandir("/"):
        source = "/" + entry.name
        target = str(base / entry.name)
        if entry.name == root.name:
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(source), target)
        elif entry.is_dir(follow_symlinks=False):
            os.mkdir(target)
            if entry.name != "proc":  # a fresh proc is mounted for the new PID namespace
                ns.mount(source, target, None, ns.MS_BIND | ns.MS_REC)
        else:
            with open(target, "wb"):
                pass
            ns.mount(source, target, None, ns.MS_BIND)
    where = base / root.name
    where.mkdir()
    return where


def mount_proc(target: str) -> bool:
    """Mount a proc file system for the current PID namespace at ``target``; False if refused."""
    try:
        ns.mount("proc", target, "proc", ns.MS_NOSUID | ns.MS_NODEV | ns.MS_NOEXEC)
    except OSError:
        return False
    return True


def bind(source: Path, target: Path) -> None:
    """Bind-mount ``source`` on ``target`` (recursively)."""
    ns.mount(str(source), str(target), None, ns.MS_BIND | ns.MS_REC)
