"""Helpers for the mount tests: running ``rcds mount`` as a real daemon and comparing trees."""

from __future__ import annotations

import os
import queue
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from rcds.client.repository import Repository

from testkit import scrape

READY_TIMEOUT = 30.0
CONFIG = {
    "CVMFS_TIMEOUT": "2",
    "CVMFS_TIMEOUT_DIRECT": "2",
    "CVMFS_MAX_RETRIES": "0",
    "CVMFS_BACKOFF_INIT": "0.05",
    "CVMFS_BACKOFF_MAX": "0.1",
    "CVMFS_CLAIM_OWNERSHIP": "no",
    "CVMFS_HTTP_PROXY": "DIRECT",
}
"""The default.local of every test mount: short timeouts, the catalog's owners."""


def write_config(directory: Path, extra: dict[str, str] | None = None, **repos: dict[str, str]) -> Path:
    """A client configuration directory: ``default.local`` (CONFIG + ``extra``) and, per
    repository name (keyword, dots as ``__``), a ``config.d/<fqrn>.conf``."""
    (directory / "config.d").mkdir(parents=True, exist_ok=True)
    lines = [f"{k}={v}" for k, v in {**CONFIG, **(extra or {})}.items()]
    (directory / "default.local").write_text("\n".join(lines) + "\n")
    for name, values in repos.items():
        fqrn = name.replace("__", ".")
        text = "".join(f"{k}={v}\n" for k, v in values.items())
        (directory / "config.d" / f"{fqrn}.conf").write_text(text)
    return directory


def is_mounted(path: Path) -> bool:
    """True if ``path`` is a mount point (a live or a dead one)."""
    target = os.path.abspath(path)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f)


class MountProc:
    """``rcds mount ARGS --foreground`` as a child process; :meth:`start` waits for its ready line."""

    def __init__(self, mountpoint: Path, args: Sequence[str], log: Path) -> None:
        self.mountpoint = mountpoint
        self.args = list(args)
        self.log = log
        self.proc: subprocess.Popen[str] | None = None
        self.ready_line = ""

    def start(self) -> MountProc:
        """Start the daemon and wait (bounded) until it says it is mounted."""
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "rcds.cli.main", "-v", "mount", *self.args, "--foreground"]
        cmd += ["--log-file", str(self.log)]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
        )
        lines: queue.Queue[str] = queue.Queue()
        out = self.proc.stdout
        assert out is not None
        threading.Thread(target=lambda: lines.put(out.readline()), daemon=True).start()
        try:
            self.ready_line = lines.get(timeout=READY_TIMEOUT)
        except queue.Empty:
            self.stop()
            raise AssertionError(
                f"rcds mount did not get ready in {READY_TIMEOUT} s: {self.logs()}"
            ) from None
        if not self.ready_line.startswith("rcds: mounted"):
            rc = self.proc.wait(timeout=30)
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"rcds mount failed ({rc}): {err} {self.logs()}")
        return self

    def logs(self) -> str:
        """The daemon's log so far."""
        return self.log.read_text() if self.log.exists() else ""

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        assert self.proc is not None
        return self.proc.pid

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        """Send ``sig`` and wait for the exit (SIGKILL after ``timeout``); the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()
        return self.proc.returncode

    def cleanup(self) -> None:
        """Stop the daemon and make sure nothing stays mounted."""
        self.stop()
        if is_mounted(self.mountpoint):
            subprocess.run(
                ["fusermount3", "-u", "-z", str(self.mountpoint)], check=False, capture_output=True
            )


def wait_for(predicate: object, timeout: float = 15.0, step: float = 0.05) -> bool:
    """Poll ``predicate()`` until true or ``timeout`` (bounded); its last answer."""
    deadline = time.monotonic() + timeout
    while True:
        ok = bool(predicate())  # type: ignore[operator]
        if ok or time.monotonic() >= deadline:
            return ok
        time.sleep(step)


def compare_tree(repo: Repository, mountpoint: Path, top: str = "/") -> int:
    """Assert that every entry below ``top`` looks through the mount as the client library
    shows it (names, type, mode, size, mtime, links, owners, link targets, bytes, hard-link
    inodes); returns the number of entries compared."""
    count = 0
    groups: dict[int, set[int]] = {}
    inodes: dict[int, str] = {}
    for dirpath, dirs, files in repo.walk(top):
        local = mountpoint / dirpath.lstrip("/")
        assert sorted(os.listdir(local)) == sorted(dirs + files), dirpath
        for name in dirs + files:
            path = f"{dirpath.rstrip('/')}/{name}"
            want = repo.lstat(path)
            got = os.lstat(mountpoint / path.lstrip("/"))
            fields = ("st_mode", "st_size", "st_mtime_ns", "st_nlink", "st_uid", "st_gid")
            assert [getattr(got, f) for f in fields] == [getattr(want, f) for f in fields], path
            if stat.S_ISLNK(want.st_mode):
                assert os.readlink(mountpoint / path.lstrip("/")) == repo.readlink(path), path
            elif stat.S_ISREG(want.st_mode):
                assert (mountpoint / path.lstrip("/")).read_bytes() == repo.read_bytes(path), path
            groups.setdefault(want.st_ino, set()).add(got.st_ino)
            if got.st_ino in inodes and not stat.S_ISDIR(want.st_mode):
                assert repo.lstat(inodes[got.st_ino]).st_ino == want.st_ino, (path, inodes[got.st_ino])
            inodes[got.st_ino] = path
            count += 1
    # one mount inode per client inode (hard links share one, everything else has its own)
    assert all(len(v) == 1 for v in groups.values())
    assert len({next(iter(v)) for v in groups.values()}) == len(groups)
    return count


def metrics_url(proc: MountProc) -> str:
    """The ``/metrics`` address a daemon started with ``--metrics-port 0`` logged."""
    assert wait_for(lambda: "metrics at http://" in proc.logs(), timeout=10)
    found = re.search(r"metrics at (http://127\.0\.0\.1:\d+/metrics)", proc.logs())
    assert found is not None
    return found.group(1)


def fuse_requests(url: str) -> dict[str, float]:
    """FUSE requests the daemon received so far, by opcode (``rcds_mount_requests_total``)."""
    return {
        dict(labels)["opcode"]: v
        for (name, labels), v in scrape(url).items()
        if name == "rcds_mount_requests_total"
    }
