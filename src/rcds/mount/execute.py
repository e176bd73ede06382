"""``rcds exec``: run a command with the repositories mounted at ``--root``, without root if need be.

The process tree of the namespace modes (``root``, ``userns``, and ``fusermount`` when user
namespaces work)::

    rcds exec                 (host namespaces; forwards signals, passes the exit code on,
     |                         removes its runtime directory)
     +- namespace holder      (unshare: user, mount and PID namespaces; maps the user to 0)
         +- init, PID 1       (mounts proc, builds the root, starts or binds the FUSE mount,
             |                 reaps, stops the mount when the command has exited)
             +- rcds mount    (the FUSE daemon, as namespace root: no setuid helper needed)
             +- COMMAND       (chrooted if a new root was built, back in the user's own uid)

Every process asks the kernel for ``SIGKILL`` when its parent dies, and the init is PID 1 of its
PID namespace: when ``rcds exec`` is killed, even with ``SIGKILL``, every process of the
namespace dies with it, the mount namespace goes with its last process, and with it the FUSE
mount. Nothing is left but, after ``SIGKILL``, an empty runtime directory that the next
``rcds exec`` sweeps (:func:`rcds.mount.rootfs.sweep`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from rcds.errors import ConfigError, NotFoundError, RcdsError
from rcds.mount import namespaces as ns
from rcds.mount import rootfs

FORWARDED = (
    signal.SIGHUP,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGTERM,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
    signal.SIGCONT,
)
"""Signals ``rcds exec`` passes on to the command."""

EXIT_SETUP = 125
"""Exit status when the namespace or the mount could not be set up (as ``env``/container tools)."""

STOP_GRACE = 10.0
"""Seconds the mount daemon gets to unmount after ``SIGTERM`` before it is killed."""


class ExecRequest(NamedTuple):
    """What to run, where the repositories appear, and how to mount them."""

    command: Sequence[str]
    root: Path
    repos: Sequence[str]
    mount_options: Sequence[str]
    ready_timeout: float = 60.0
    quiet: bool = False


def _say(request: ExecRequest, text: str) -> None:
    if not request.quiet:
        print(f"rcds exec: {text}", file=sys.stderr, flush=True)


def exit_code_of(status: int) -> int:
    """A wait status as a shell would report it: the exit code, or 128 + the signal."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _forward_to(pid: int) -> None:
    def handler(sig: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    for sig in FORWARDED:
        signal.signal(sig, handler)


def _wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return exit_code_of(status)


def mount_command(root: Path, options: Sequence[str]) -> list[str]:
    """The ``rcds mount`` command line that serves every repository under ``root``."""
    return [sys.executable, "-m", "rcds.cli.main", "mount", "--root", str(root), "--foreground", *options]


def start_daemon(root: Path, options: Sequence[str], death_signal: int) -> subprocess.Popen[bytes]:
    """Start ``rcds mount --root ROOT --foreground``; it gets ``death_signal`` when we die."""
    return subprocess.Popen(
        mount_command(root, options),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,  # its ready line is not the command's output; errors go to stderr
        preexec_fn=lambda: ns.set_parent_death_signal(death_signal),
    )


def wait_mounted(root: Path, daemon: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait until ``root`` is a mount point; raise if the daemon exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not os.path.ismount(root):
        code = daemon.poll()
        if code is not None:
            raise RcdsError(
                f"rcds mount exited with status {code} before {root} was mounted (see its messages)"
            )
        if time.monotonic() > deadline:
            raise RcdsError(f"{root} was not mounted within {timeout:.0f} s; see the messages of rcds mount")
        time.sleep(0.02)


def stop_daemon(daemon: subprocess.Popen[bytes]) -> None:
    """``SIGTERM`` (a clean unmount), then ``SIGKILL`` after :data:`STOP_GRACE`."""
    if daemon.returncode is not None:
        return
    daemon.terminate()
    try:
        daemon.wait(STOP_GRACE)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait()


def check_repos(root: Path, repos: Sequence[str]) -> None:
    """Every wanted repository must appear under ``root`` (the first lookup mounts it)."""
    for name in repos:
        try:
            os.stat(root / name)
        except OSError as exc:
            raise NotFoundError(
                f"repository {name} did not appear under the mount ({exc.strerror or exc}); "
                f"check its configuration with: rcds config show {name}"
            ) from None


class _Plan(NamedTuple):
    request: ExecRequest
    userns: bool
    new_root: Path | None  # the tmpfs mount point when --root is missing, else None
    bind_source: Path | None  # a FUSE mount made outside to bind at the root, else None
    uid: int
    gid: int
    cwd: str


def run_in_namespaces(request: ExecRequest, userns: bool, bind_source: Path | None = None) -> int:
    """Run the command in new mount and PID namespaces (and a user namespace if ``userns``)."""
    rootfs.check_root_path(request.root)
    new_root = None
    if not request.root.exists():
        new_root = rootfs.runtime_dir() / f"root-{os.getpid()}"
        new_root.mkdir(mode=0o700)
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = "/"
    plan = _Plan(request, userns, new_root, bind_source, os.getuid(), os.getgid(), cwd)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _holder(plan)  # never returns
    _forward_to(pid)
    try:
        return _wait(pid)
    finally:
        if new_root is not None:
            with contextlib.suppress(OSError):
                new_root.rmdir()


def _fail(exc: BaseException) -> None:
    print(f"rcds: error: {exc}", file=sys.stderr, flush=True)
    os._exit(EXIT_SETUP)


def _holder(plan: _Plan) -> None:
    """Unshare the namespaces; its first child becomes PID 1 of the new PID namespace."""
    try:
        ns.set_parent_death_signal(signal.SIGKILL)
        flags = ns.CLONE_NEWNS | ns.CLONE_NEWPID | (ns.CLONE_NEWUSER if plan.userns else 0)
        ns.unshare(flags)
        if plan.userns:
            ns.map_identity(0, plan.uid, 0, plan.gid)
        ns.make_mounts_private()
        pid = os.fork()
        if pid == 0:
            _init(plan)
        _forward_to(pid)
        os._exit(_wait(pid))
    except BaseException as exc:
        _fail(exc)


def _init(plan: _Plan) -> None:
    """PID 1: set up the root and the mount, run the command, reap, tear down."""
    request = plan.request
    daemon: subprocess.Popen[bytes] | None = None
    try:
        ns.set_parent_death_signal(signal.SIGKILL)
        if plan.new_root is not None:
            target = rootfs.build_new_root(plan.new_root, request.root)
            proc = plan.new_root / "proc"
            if not rootfs.mount_proc(str(proc)):
                rootfs.bind(Path("/proc"), proc)
        else:
            target = request.root
            rootfs.mount_proc("/proc")
        if plan.bind_source is not None:
            rootfs.bind(plan.bind_source, target)
        else:
            daemon = start_daemon(target, request.mount_options, signal.SIGTERM)
            wait_mounted(target, daemon, request.ready_timeout)
        check_repos(target, request.repos)
    except BaseException as exc:
        if daemon is not None:
            stop_daemon(daemon)
        _fail(exc)
    pid = os.fork()
    if pid == 0:
        _command(plan)
    _forward_to(pid)
    code = _reap_until(pid, daemon)
    if daemon is not None:
        stop_daemon(daemon)
    os._exit(code)


def _reap_until(pid: int, daemon: subprocess.Popen[bytes] | None) -> int:
    """As PID 1: reap every child (orphans too) until ``pid`` exits; its exit code."""
    while True:
        try:
            child, status = os.wait()
        except ChildProcessError:
            return EXIT_SETUP
        if child == pid:
            return exit_code_of(status)
        if daemon is not None and child == daemon.pid:
            daemon.returncode = exit_code_of(status)
            print("rcds exec: warning: the rcds mount daemon exited early", file=sys.stderr, flush=True)


def _command(plan: _Plan) -> None:
    """The command's process: into the new root, back to the user's uid, then exec."""
    request = plan.request
    try:
        ns.set_parent_death_signal(signal.SIGKILL)
        if plan.userns:  # first: a chrooted process may not create a user namespace
            ns.unshare(ns.CLONE_NEWUSER)
            ns.map_identity(plan.uid, 0, plan.gid, 0)
        if plan.new_root is not None:
            os.chroot(plan.new_root)
        try:
            os.chdir(plan.cwd)
        except OSError:
            os.chdir("/")
        for sig in FORWARDED:
            signal.signal(sig, signal.SIG_DFL)
        env = dict(os.environ, RCDS_ROOT=str(request.root))
    except BaseException as exc:
        _fail(exc)
    _exec(request.command, env)


def _exec(command: Sequence[str], env: dict[str, str]) -> None:
    try:
        os.execvpe(command[0], list(command), env)
    except OSError as exc:
        print(f"rcds: error: cannot run {command[0]}: {exc.strerror or exc}", file=sys.stderr, flush=True)
        os._exit(127 if exc.errno == errno.ENOENT else 126)


def run_with_fusermount(request: ExecRequest, userns: bool) -> int:
    """Mount with the setuid ``fusermount3`` into a runtime directory, then run the command."""
    base = rootfs.runtime_dir()
    mnt = base / f"mnt-{os.getpid()}"
    mnt.mkdir(mode=0o700)
    daemon = start_daemon(mnt, request.mount_options, signal.SIGTERM)
    link: Path | None = None
    try:
        wait_mounted(mnt, daemon, request.ready_timeout)
        check_repos(mnt, request.repos)
        if userns:
            return run_in_namespaces(request, userns=True, bind_source=mnt)
        if not request.root.exists() and os.access(request.root.parent, os.W_OK):
            request.root.symlink_to(mnt)
            link = request.root
            _say(request, f"{request.root} is a symbolic link to {mnt}")
        else:
            _say(request, f"the repositories are at {mnt} (RCDS_ROOT)")
        env = dict(os.environ, RCDS_ROOT=str(link or mnt))
        child = subprocess.Popen(
            list(request.command),
            env=env,
            preexec_fn=lambda: ns.set_parent_death_signal(signal.SIGKILL),
        )
        _forward_to(child.pid)
        code = child.wait()
        return code if code >= 0 else 128 - code
    except FileNotFoundError as exc:
        print(f"rcds: error: cannot run {request.command[0]}: {exc.strerror}", file=sys.stderr)
        return 127
    finally:
        stop_daemon(daemon)
        if link is not None:
            link.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            mnt.rmdir()


def run_exec(request: ExecRequest, mode: str, reason: str, userns_ok: bool) -> int:
    """Run ``request`` in ``mode`` (see :mod:`rcds.mount.probe`); the command's exit code."""
    if not request.command:
        raise ConfigError("rcds exec needs a command after '--', e.g. rcds exec -- ls /cvmfs")
    _say(request, f"{mode} mode: {reason}")
    if mode == "native":
        _exec(request.command, dict(os.environ, RCDS_ROOT=str(request.root)))
    rootfs.sweep(rootfs.runtime_dir())
    if mode in ("root", "userns"):
        return run_in_namespaces(request, userns=mode == "userns")
    if mode == "fusermount":
        return run_with_fusermount(request, userns=userns_ok)
    raise ConfigError(f"unknown mode {mode!r}; choose one of native, root, userns, fusermount")
