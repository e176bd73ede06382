"""A worker node for the ``rcds exec``/``rcds probe`` tests: an unprivileged user, as a site has.

The tests run as root (the machine allows FUSE mounts as root). They create a system user,
make rcds importable for it, and run ``rcds`` as that user with ``runuser``, the way a pilot
job runs. Test runs at once on one machine (CI jobs, teammates) each claim a user of their own
from a small pool, ``rcds-pilot0`` ... (:func:`claimed_user`, a lock file per user held for
the run): the tests find the user's processes, mounts and runtime directory by its uid, and
kill what it leaves, so a user is never shared. Changes of ``/dev/fuse``'s mode are serialised
across runs the same way (:func:`dev_fuse_mode`).

rcds must be readable by the user: the default ``python3`` of these machines lives under
``/root`` (mode 0700), so the user runs Debian's ``/usr/bin/python3`` (the same minor version,
so the compiled extensions of the test environment load), and the source tree and the
environment's ``site-packages`` are bind-mounted into a world-readable directory (their own
parents may not be). ``/dev/fuse`` is mode 0600 here: tests that need the 0666 of most
distributions change it for their duration (:func:`dev_fuse_mode`) and put it back.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import shutil
import signal
import subprocess
import sysconfig
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

import rcds
from rcds.format import keys
from rcds.publish.create import create_repository
from rcds.publish.layout import Settings
from rcds.publish.stratum0 import Stratum0
from rcds.serve.http import RepositoryServer, make_server

from testkit import NAME, SMALL_CHUNKS, Entry, publish

USER_PREFIX = "rcds-pilot"
"""Test users are named ``rcds-pilot0``, ``rcds-pilot1``, ... (:data:`MAX_USERS` of them)."""
MAX_USERS = 8
LOCKS = Path("/run/lock") if Path("/run/lock").is_dir() else Path("/tmp")
"""Where the lock files shared by every test run on the machine live."""
SYSTEM_PYTHON = Path("/usr/bin/python3")
TREE = "/sw/g/c1"
FILES = {"hello.txt": b"hello from the node\n", "sub/data.bin": os.urandom(300_000)}


def require_node() -> None:
    """Skip unless these tests can run: root, ``runuser``, Debian's python3, FUSE."""
    if os.getuid() != 0:
        pytest.skip("the worker-node tests create a user and change /dev/fuse: run them as root")
    for need in ("runuser", "useradd", "fusermount3"):
        if shutil.which(need) is None:
            pytest.skip(f"{need} is not installed")
    if not SYSTEM_PYTHON.exists() or not Path("/dev/fuse").exists():
        pytest.skip("needs /usr/bin/python3 and /dev/fuse")


def _lock(path: Path, timeout: float | None) -> int | None:
    """An exclusive ``flock`` on ``path`` (its descriptor), waiting at most ``timeout`` seconds
    (None: not at all); None if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + (timeout or 0.0)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.05)


def _ensure_user(name: str) -> pwd.struct_passwd:
    """The system user ``name``, created if missing (kept: creating users is slow and harmless)."""
    error = ""
    for _ in range(50):  # useradd fails while another process holds /etc/passwd's lock: retry
        try:
            return pwd.getpwnam(name)
        except KeyError:
            pass
        done = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/bin/sh", name],
            capture_output=True,
            text=True,
        )
        error = done.stderr.strip()
        if done.returncode != 0:
            time.sleep(0.1)
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise RuntimeError(f"cannot create the test user {name}: {error}") from None


def processes_of(uid: int) -> list[tuple[int, str]]:
    """Live (not zombie) processes of ``uid``: (pid, command line)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if int(fields.get("Uid", "-1").split()[0]) == uid and not fields.get("State", "").startswith("Z"):
            out.append((int(entry.name), cmdline.strip()))
    return out


def _kill_processes_of(uid: int) -> None:
    for pid, _ in processes_of(uid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def claimed_user() -> Iterator[pwd.struct_passwd]:
    """A test user no other test run on this machine uses until the block ends.

    The user of the first free lock ``<LOCKS>/rcds-pilotN.lock`` is taken; whatever it still
    runs (left by a run that was killed) is killed first, as no one else can be using it.
    """
    for i in range(MAX_USERS):
        fd = _lock(LOCKS / f"{USER_PREFIX}{i}.lock", None)
        if fd is None:
            continue
        try:
            user = _ensure_user(f"{USER_PREFIX}{i}")
            _kill_processes_of(user.pw_uid)
            yield user
        finally:
            os.close(fd)  # releases the lock
        return
    pytest.skip(f"all {MAX_USERS} test users are in use by other test runs")


@contextlib.contextmanager
def dev_fuse_mode(mode: int) -> Iterator[None]:
    """``/dev/fuse`` with ``mode`` for the duration (restored afterwards); runs at once on the
    machine take turns (a lock file held meanwhile, waited for at most 5 minutes)."""
    fd = _lock(LOCKS / "rcds-dev-fuse.lock", 300)
    assert fd is not None, "another test run held /dev/fuse's mode for 5 minutes"
    try:
        before = os.stat("/dev/fuse").st_mode & 0o7777
        os.chmod("/dev/fuse", mode)
        try:
            yield
        finally:
            os.chmod("/dev/fuse", before)
    finally:
        os.close(fd)


@contextlib.contextmanager
def readable_rcds(base: Path) -> Iterator[str]:
    """rcds and its dependencies readable by every user under ``base``; yields the PYTHONPATH."""
    src = Path(rcds.__file__).resolve().parents[1]
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    mounted = []
    try:
        for name, source in (("src", src), ("site", site)):
            target = base / name
            target.mkdir(mode=0o755)
            subprocess.run(["mount", "--bind", "-o", "ro", str(source), str(target)], check=True)
            mounted.append(target)
        yield f"{base / 'src'}:{base / 'site'}"
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", "-l", str(target)], check=False)


class Node:
    """A served repository, a world-readable work area, and ``rcds`` run as a user of its own
    (:func:`claimed_user`)."""

    def __init__(
        self, base: Path, pythonpath: str, server: RepositoryServer, key: Path, user: pwd.struct_passwd
    ) -> None:
        self.base = base
        self.pythonpath = pythonpath
        self.server = server
        self.key = key
        self.user = user
        self.home = base / "home"
        self.home.mkdir(mode=0o755)
        os.chown(self.home, self.user.pw_uid, self.user.pw_gid)
        self.config_dir = base / "etc"  # an empty configuration: everything comes from options
        self.config_dir.mkdir(mode=0o755)

    @property
    def access(self) -> list[str]:
        """The repository access options of the rcds commands."""
        url = self.server.url_for(NAME).replace(NAME, "@fqrn@")
        return ["--config-dir", str(self.config_dir), "--server", url, "--key", str(self.key)]

    def env(self) -> dict[str, str]:
        """A clean environment for the user."""
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": str(self.home),
            "PYTHONPATH": self.pythonpath,
            "PYTHONDONTWRITEBYTECODE": "1",
            "LANG": "C.UTF-8",
        }

    def argv(self, args: Sequence[str], no_userns: bool = False) -> list[str]:
        """``rcds ARGS`` as the user; with ``no_userns`` on a node where user namespaces are refused.

        The kernel refuses a new user namespace to a process whose root directory is not the
        root of its mount namespace (``unshare(2)``, EPERM). The ``user.max_user_namespaces``
        knob is read-only in these containers, so such a node is made with that rule: a private
        mount namespace, ``/`` bound recursively below itself, and ``chroot`` into the copy.
        """
        env = [f"{k}={v}" for k, v in self.env().items()]
        python = [str(SYSTEM_PYTHON), "-m", "rcds.cli.main"]
        argv = ["runuser", "-u", self.user.pw_name, "--", "env", "-i", *env, *python, *args]
        if not no_userns:
            return argv
        jail = self.base / "jail"
        jail.mkdir(exist_ok=True)
        enter = 'cd "$1" && shift && exec "$@"'
        script = f"mount --rbind / {jail} && exec chroot {jail} sh -c '{enter}' - \"$@\""
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "-", str(self.home), *argv]

    def run(
        self, args: Sequence[str], timeout: float = 120, no_userns: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run ``rcds ARGS`` as the user and wait (bounded)."""
        argv = self.argv(args, no_userns)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=self.home)

    def start(self, args: Sequence[str], no_userns: bool = False) -> subprocess.Popen[str]:
        """Start ``rcds ARGS`` as the user (output to pipes)."""
        argv = self.argv(args, no_userns)
        return subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=self.home
        )

    def processes(self) -> list[tuple[int, str]]:
        """Live (not zombie) processes of the user: (pid, command line)."""
        return processes_of(self.user.pw_uid)

    def kill_all(self) -> None:
        """Kill whatever the user still runs (cleanup after a failed test)."""
        _kill_processes_of(self.user.pw_uid)

    def wait_no_processes(self, timeout: float = 10.0) -> list[tuple[int, str]]:
        """Wait (bounded) until the user runs nothing; what is left at the end."""
        deadline = time.monotonic() + timeout
        left = self.processes()
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = self.processes()
        return left

    def runtime_dir(self) -> Path:
        """Where ``rcds exec`` keeps its mount points for this user."""
        return Path(f"/tmp/rcds-{self.user.pw_uid}")


def fuse_mounts_of(uid: int) -> list[str]:
    """FUSE mounts in the host's mount namespace made by ``uid`` (``user_id=`` in their options)."""
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [
        line for line in lines if " - fuse" in line and f"user_id={uid}," in line.split(" - ", 1)[1] + ","
    ]


@contextlib.contextmanager
def node() -> Iterator[Node]:
    """A published repository served on loopback, and everything for running rcds as the user."""
    require_node()
    base = Path(tempfile.mkdtemp(prefix="rcds-node-"))
    base.chmod(0o755)
    server = None
    try:
        repo_root = base / "repo"
        create_repository(repo_root, Settings(name=NAME, **SMALL_CHUNKS))  # type: ignore[arg-type]
        entries = [Entry("sub", kind="dir", mode=0o755)]
        entries += [Entry(path, data) for path, data in FILES.items()]
        publish(Stratum0(repo_root, NAME), entries, TREE)
        key = base / f"{NAME}.pub"
        shutil.copyfile(repo_root / "keys" / f"{NAME}.pub", key)
        key.chmod(0o644)
        keys.load_public_key_file(key)  # a real key, readable
        server = make_server({NAME: repo_root / "public"})
        server.start_background()
        pp = base / "py"
        pp.mkdir(mode=0o755)
        with readable_rcds(pp) as pythonpath, claimed_user() as user:
            n = Node(base, pythonpath, server, key, user)
            try:
                yield n
            finally:
                n.kill_all()
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)
