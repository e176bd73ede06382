"""What a worker node allows, and which way ``rcds exec`` would make repositories appear there.

A pilot job runs :func:`probe_node` (``rcds probe``) before it takes jobs. Every fact is
checked for real, not guessed from versions: user namespaces by creating one in a child
process, FUSE inside one by mounting (and at once dropping) a FUSE connection there, the cache
directory by creating a file in it. The modes, best first:

``native``
    ``--root`` (``/cvmfs``) already serves every wanted repository: nothing to mount.
``root``
    running as root: a private mount namespace with the FUSE mount inside it.
``userns``
    unprivileged user namespaces and ``/dev/fuse`` usable inside one: user, mount and PID
    namespaces with the FUSE mount inside them, bound at ``--root`` (cvmfsexec's way).
``fusermount``
    the setuid ``fusermount3`` mounts into a directory the user owns (it opens ``/dev/fuse`` as
    the user, so the device must be usable by the user here too); the command runs in a
    namespace with that directory at ``--root`` if user namespaces work, else it gets
    ``RCDS_ROOT`` (and a symbolic link at ``--root`` where the user may create one).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from rcds.mount import namespaces as ns

MODES = ("native", "root", "userns", "fusermount")
"""Every mode of ``rcds exec``, best first."""

MIN_KERNEL_FOR_USERNS_FUSE = (4, 18)


class Fact(NamedTuple):
    """One checked fact: whether it holds and what was seen."""

    ok: bool
    detail: str


class Report(NamedTuple):
    """Everything :func:`probe_node` found, and the mode ``rcds exec`` would use."""

    kernel: str
    uid: int
    userns: Fact
    dev_fuse: Fact
    fuse_in_userns: Fact
    fusermount3: Fact
    root: Path
    root_state: Fact
    served: tuple[str, ...]
    missing: tuple[str, ...]
    cache_dir: Path
    cache_writable: Fact
    mode: str | None
    reason: str

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dictionary (facts as ``{"ok": ..., "detail": ...}``)."""
        out: dict[str, Any] = {}
        for key, value in self._asdict().items():
            if isinstance(value, Fact):
                out[key] = value._asdict()
            elif isinstance(value, Path):
                out[key] = str(value)
            elif isinstance(value, tuple):
                out[key] = list(value)
            else:
                out[key] = value
        return out


def kernel_version(release: str | None = None) -> tuple[int, int]:
    """(major, minor) of the running kernel, e.g. ``6.1.0-18-amd64`` -> (6, 1)."""
    parts = (release or os.uname().release).split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except (IndexError, ValueError):
        return (0, 0)


def _in_child(task: Any) -> tuple[bool, str]:
    """Run ``task()`` in a forked child; (True, "") if it returned, else (False, the error)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into the caller's code
        code = 0
        try:
            os.close(read_end)
            task()
        except BaseException as exc:
            os.write(write_end, str(exc).encode(errors="replace")[:1000])
            code = 1
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0, message


def _enter_userns() -> None:
    uid, gid = os.getuid(), os.getgid()
    ns.unshare(ns.CLONE_NEWUSER | ns.CLONE_NEWNS)
    ns.map_identity(0, uid, 0, gid)
    ns.make_mounts_private()


def check_userns() -> Fact:
    """Can this user create a user and mount namespace and mount a tmpfs inside it?"""

    def task() -> None:
        _enter_userns()
        with tempfile.TemporaryDirectory(prefix="rcds-probe-") as where:
            ns.mount("tmpfs", where, "tmpfs", ns.MS_NOSUID | ns.MS_NODEV)
            ns.umount(where)

    ok, err = _in_child(task)
    if ok:
        return Fact(True, "user and mount namespaces work for this user")
    hint = ""
    max_ns = _read("/proc/sys/user/max_user_namespaces")
    if max_ns == "0":
        hint = " (user.max_user_namespaces is 0: the administrator must raise it)"
    elif _read("/proc/sys/kernel/unprivileged_userns_clone") == "0":
        hint = " (kernel.unprivileged_userns_clone is 0: the administrator must set it to 1)"
    return Fact(False, f"cannot create a user namespace: {err}{hint}")


def check_dev_fuse() -> Fact:
    """Is ``/dev/fuse`` there, and can this user open it?"""
    try:
        st = os.stat("/dev/fuse")
    except OSError as exc:
        return Fact(False, f"/dev/fuse is missing ({exc.strerror}): load the fuse module or install fuse3")
    if not stat.S_ISCHR(st.st_mode):
        return Fact(False, "/dev/fuse is not a character device")
    mode = stat.S_IMODE(st.st_mode)
    try:
        fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    except PermissionError:
        return Fact(
            False,
            f"/dev/fuse is mode {mode:04o}: this user cannot open it, not even inside a user namespace "
            "(most distributions ship 0666; an administrator can run 'chmod 0666 /dev/fuse')",
        )
    except OSError as exc:
        return Fact(False, f"cannot open /dev/fuse: {exc.strerror}")
    os.close(fd)
    return Fact(True, f"/dev/fuse mode {mode:04o}, usable by this user")


def check_fuse_in_userns(userns: Fact, dev_fuse: Fact) -> Fact:
    """Does the kernel accept a FUSE mount inside an unprivileged user namespace? (tried for real)"""
    if not userns.ok:
        return Fact(False, "needs user namespaces")
    if not dev_fuse.ok:
        return Fact(False, "needs /dev/fuse usable by this user")

    def task() -> None:
        _enter_userns()
        fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        with tempfile.TemporaryDirectory(prefix="rcds-probe-") as where:
            options = f"fd={fd},rootmode=40000,user_id=0,group_id=0"
            ns.mount("rcds-probe", where, "fuse", ns.MS_NOSUID | ns.MS_NODEV, options)
            os.close(fd)  # no daemon behind it: aborts the connection
            ns.umount(where, ns.MNT_DETACH)

    ok, err = _in_child(task)
    if ok:
        return Fact(True, "a FUSE file system mounts inside a user namespace")
    major_minor = kernel_version()
    if major_minor < MIN_KERNEL_FOR_USERNS_FUSE:
        err += f" (kernel {major_minor[0]}.{major_minor[1]} is older than 4.18)"
    return Fact(False, f"FUSE mount inside a user namespace refused: {err}")


def check_fusermount(dev_fuse: Fact) -> Fact:
    """Can this user mount through ``fusermount3``? It must be setuid root, and it opens
    ``/dev/fuse`` with the user's own file permissions (so the device mode rules here too)."""
    path = shutil.which("fusermount3", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin", "/bin"]))
    if path is None:
        return Fact(False, "fusermount3 is not installed (Debian/Ubuntu package fuse3)")
    st = os.stat(path)
    if st.st_uid != 0 or not st.st_mode & stat.S_ISUID:
        return Fact(False, f"{path} is not setuid root")
    if not os.access(path, os.X_OK):
        return Fact(False, f"{path} is not executable by this user")
    if not dev_fuse.ok:
        return Fact(False, f"{path} is setuid root, but it opens /dev/fuse as this user, who cannot")
    return Fact(True, f"{path} (setuid root)")


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def mounts_below(root: Path) -> dict[str, str]:
    """Mount points at or below ``root`` (from ``/proc/self/mountinfo``): path -> file system type."""
    text = _read("/proc/self/mountinfo") or ""
    out: dict[str, str] = {}
    prefix = str(root).rstrip("/")
    for line in text.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        point = fields[4].encode().decode("unicode_escape")
        fstype = line.split(" - ", 1)[1].split()[0]
        if point == prefix or point.startswith(prefix + "/"):
            out[point] = fstype
    return out


def check_root(root: Path, wanted: Sequence[str]) -> tuple[Fact, tuple[str, ...], tuple[str, ...]]:
    """The state of ``root``, the repositories it serves, and which of ``wanted`` it does not serve.

    A repository is served when ``root/NAME`` is a mount point, or when ``root`` itself is a
    mount (autofs, or one FUSE mount for every repository) under which ``NAME`` can be looked up.
    """
    try:
        st = os.stat(root)
    except FileNotFoundError:
        return Fact(False, f"{root} does not exist"), (), tuple(wanted)
    except OSError as exc:
        return Fact(False, f"{root}: {exc.strerror or exc}"), (), tuple(wanted)
    if not stat.S_ISDIR(st.st_mode):
        return Fact(False, f"{root} is not a directory"), (), tuple(wanted)
    mounts = mounts_below(root)
    root_kind = mounts.get(str(root))
    served = {Path(p).name for p in mounts if Path(p).parent == root}
    missing = []
    for name in wanted:
        if name in served:
            continue
        if root_kind:
            try:  # autofs mounts on first access; an all-repositories FUSE mount looks it up
                if stat.S_ISDIR(os.stat(root / name).st_mode):
                    served.add(name)
                    continue
            except OSError:
                pass
        missing.append(name)
    what = f"{root} is a {root_kind} mount" if root_kind else f"{root} is a plain directory"
    return Fact(True, what), tuple(sorted(served)), tuple(missing)


def check_cache(cache_dir: Path) -> Fact:
    """Can this user create files in ``cache_dir`` (or create it)?"""
    where = cache_dir
    while not os.path.exists(where) and where != where.parent:
        where = where.parent
    try:
        if where == cache_dir:
            fd, name = tempfile.mkstemp(prefix=".rcds-probe-", dir=cache_dir)
            os.close(fd)
            os.unlink(name)
        elif not os.access(where, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "not writable")
    except OSError as exc:
        return Fact(False, f"cannot write to {where}: {exc.strerror or exc}; set RCDS_CACHE_DIR or --cache")
    return Fact(
        True, f"{cache_dir} is writable" + ("" if where == cache_dir else f" (created under {where})")
    )


def choose_mode(
    uid: int,
    userns: Fact,
    dev_fuse: Fact,
    fuse_in_userns: Fact,
    fusermount3: Fact,
    root_ok: bool,
    served_all: bool,
) -> tuple[str | None, str]:
    """The best mode the facts allow, and why (see the module docstring)."""
    if root_ok and served_all:
        return "native", "the root already serves every wanted repository"
    if uid == 0 and os.path.exists("/dev/fuse"):
        return "root", "running as root: a private mount namespace with the FUSE mount inside"
    if fuse_in_userns.ok:
        return "userns", "unprivileged user namespaces with FUSE inside them"
    if fusermount3.ok:
        how = "the command in a user namespace" if userns.ok else "RCDS_ROOT for the command"
        return "fusermount", f"fusermount3 into a user-owned directory, {how}"
    reasons = [f.detail for f in (userns, dev_fuse, fusermount3) if not f.ok]
    return None, "no way to mount here: " + "; ".join(reasons) + "; use 'rcds get' to copy instead"


def probe_node(root: Path, wanted: Sequence[str], cache_dir: Path) -> Report:
    """Check everything :class:`Report` holds (forks short-lived children for the namespace checks)."""
    uid = os.getuid()
    userns = check_userns()
    dev_fuse = check_dev_fuse()
    fuse_in_userns = check_fuse_in_userns(userns, dev_fuse)
    fusermount3 = check_fusermount(dev_fuse)
    root_state, served, missing = check_root(root, wanted)
    served_all = (bool(wanted) and not missing) or (not wanted and bool(served))
    mode, reason = choose_mode(uid, userns, dev_fuse, fuse_in_userns, fusermount3, root_state.ok, served_all)
    return Report(
        kernel=os.uname().release,
        uid=uid,
        userns=userns,
        dev_fuse=dev_fuse,
        fuse_in_userns=fuse_in_userns,
        fusermount3=fusermount3,
        root=root,
        root_state=root_state,
        served=served,
        missing=missing,
        cache_dir=cache_dir,
        cache_writable=check_cache(cache_dir),
        mode=mode,
        reason=reason,
    )
