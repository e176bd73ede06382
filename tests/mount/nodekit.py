"""A worker node for the ``rcds exec``/``rcds probe`` tests: an unprivileged user, as a site has.

The tests run as root (the machine allows FUSE mounts as root). They create a system user,
make rcds importable for it, and run ``rcds`` as that user with ``runuser``, the way a pilot
job runs. rcds must be readable by the user: the default ``python3`` of these machines lives
under ``/root`` (mode 0700), so the user runs Debian's ``/usr/bin/python3`` (the same minor
version, so the compiled extensions of the test environment load), and the source tree and the
environment's ``site-packages`` are bind-mounted into a world-readable directory (their own
parents may not be). ``/dev/fuse`` is mode 0600 here: tests that need the 0666 of most
distributions change it for their duration (:func:`dev_fuse_mode`) and put it back.
"""

from __future__ import annotations

import contextlib
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

USER = "rcds-pilot"
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


def ensure_user() -> pwd.struct_passwd:
    """The unprivileged test user (created once, kept: creating users is slow and harmless)."""
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/bin/sh", USER],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(USER)


@contextlib.contextmanager
def dev_fuse_mode(mode: int) -> Iterator[None]:
    """``/dev/fuse`` with ``mode`` for the duration (restored afterwards)."""
    before = os.stat("/dev/fuse").st_mode & 0o7777
    os.chmod("/dev/fuse", mode)
    try:
        yield
    finally:
        os.chmod("/dev/fuse", before)


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
    """A served repository, a world-readable work area, and ``rcds`` run as :data:`USER`."""

    def __init__(self, base: Path, pythonpath: str, server: RepositoryServer, key: Path) -> None:
        self.base = base
        self.pythonpath = pythonpath
        self.server = server
        self.key = key
        self.user = ensure_user()
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
        argv = ["runuser", "-u", USER, "--", "env", "-i", *env, *python, *args]
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
            uid = int(fields.get("Uid", "-1").split()[0])
            if uid == self.user.pw_uid and not fields.get("State", "").startswith("Z"):
                out.append((int(entry.name), cmdline.strip()))
        return out

    def kill_all(self) -> None:
        """Kill whatever the user still runs (cleanup after a failed test)."""
        for pid, _ in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

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
        with readable_rcds(pp) as pythonpath:
            n = Node(base, pythonpath, server, key)
            try:
                yield n
            finally:
                n.kill_all()
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)
