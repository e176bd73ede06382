"""FUSE passthrough (``rcds mount --passthrough``): files in the local cache read by the kernel.

Real mounts as root (the kernel registers backing files only for ``CAP_SYS_ADMIN``): the bytes
are the published ones, a file whose object is cached sends ``OPEN`` and ``RELEASE`` but no
``READ``, ``mmap`` works, and a file held open across a new revision keeps its old content.
:class:`Backings` is also checked on a device that refuses backing files (the clean fallback).
"""

from __future__ import annotations

import mmap
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rcds.mount.fuse.passthrough import CACHED, Backings, passthrough_allowed

from mountkit import compare_tree, fuse_requests, metrics_url, wait_for
from testkit import Entry

C2 = "/sw/g/c2"


def _files(top: Path) -> list[Path]:
    """Every regular file below ``top``."""
    out = []
    for here, _, names in os.walk(top):
        for name in names:
            path = Path(here, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                out.append(path)
    return out


def test_cached_files_are_read_by_the_kernel_not_the_daemon(site: Any, mount_site: Any) -> None:
    if not passthrough_allowed():
        pytest.skip("needs CAP_SYS_ADMIN in the initial user namespace")
    m = mount_site("--passthrough", "--metrics-port", "0")
    url = metrics_url(m.proc)
    repo = site.open()
    assert compare_tree(repo, m.mp) >= 15  # first pass: downloads, ordinary opens
    for path, data in site.files.items():
        assert (m.mp / path.lstrip("/")).read_bytes() == data
    files = _files(m.mp)
    before = fuse_requests(url)
    contents = {p: p.read_bytes() for p in files}  # every object is in the local cache now
    after = fuse_requests(url)
    opened = after.get("OPEN", 0) - before.get("OPEN", 0)
    assert opened == len(files)  # passthrough needs OPEN: no-open mode is not asked for
    assert wait_for(lambda: fuse_requests(url).get("RELEASE", 0) == fuse_requests(url).get("OPEN", 0))
    # only chunked files (several objects) are still read through the daemon
    chunked = [p for p in files if p.name == "big.bin"]
    assert after.get("READ", 0) - before.get("READ", 0) <= 4 * len(chunked) + 4
    assert (m.mp / "sw/g/c1/a/hello.txt").read_bytes() == b"hello rcds\n"
    with open(m.mp / "sw/g/c1/a/hello.txt", "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
        assert mm[:] == b"hello rcds\n"
    assert all(p.read_bytes() == data for p, data in contents.items())


def test_a_held_file_keeps_its_content_across_a_new_revision(site: Any, mount_site: Any) -> None:
    if not passthrough_allowed():
        pytest.skip("needs CAP_SYS_ADMIN in the initial user namespace")
    m = mount_site("--passthrough", "--ttl", "0.3", "--metrics-port", "0")
    url = metrics_url(m.proc)
    x = m.mp / "sw/g/c2/x.txt"
    assert x.read_bytes() == b"in c2\n"  # cached now: the next open is a passthrough one
    reads = fuse_requests(url).get("READ", 0)
    with open(x, "rb", buffering=0) as held:
        assert held.read() == b"in c2\n"
        assert fuse_requests(url).get("READ", 0) == reads  # read by the kernel from the cache file
        new = b"a newer x, in passthrough\n"
        revision = site.publish([Entry("x.txt", new)], C2, replace=True)
        assert wait_for(lambda: int(os.getxattr(m.mp, "user.revision")) == revision, timeout=15)
        assert x.read_bytes() == new
        os.posix_fadvise(held.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        assert os.pread(held.fileno(), 100, 0) == b"in c2\n"
    assert x.read_bytes() == new


def test_a_device_that_refuses_backing_files_falls_back_to_ordinary_opens(tmp_path: Path) -> None:
    # /dev/null has no FUSE ioctls (ENOTTY), as a kernel without passthrough or a process
    # without the privilege (EPERM): every open is then an ordinary one
    device = os.open("/dev/null", os.O_RDWR)
    backing = tmp_path / "object"
    backing.write_bytes(b"content")
    try:
        b = Backings(device)
        fds: list[int] = []

        def fresh() -> int:
            fds.append(os.open(backing, os.O_RDONLY))
            return fds[-1]

        assert b.open(7, fresh) == CACHED
        assert not b.enabled
        assert b.open(8, fresh) == CACHED
        assert len(fds) == 1  # disabled: no more cache files opened
        for fd in fds:  # closed by Backings.open
            with pytest.raises(OSError):
                os.fstat(fd)
        assert b.opens(7) == 1 and b.kept() == 0
        b.release(7)
        b.release(7)  # one too many: ignored
        assert b.opens(7) == 0
    finally:
        os.close(device)


def test_an_inode_keeps_the_mode_of_its_opens_held() -> None:
    device = os.open("/dev/null", os.O_RDWR)
    try:
        b = Backings(device)
        assert b.open(5, lambda: None) == CACHED  # not in the local cache: ordinary mode
        asked: list[int] = []
        # held open in ordinary mode: the next open must be ordinary too (the kernel refuses a
        # passthrough open of an inode open in cached mode), so no backing file is asked for
        assert b.open(5, lambda: asked.append(1)) == CACHED  # type: ignore[func-returns-value]
        assert asked == [] and b.enabled and b.opens(5) == 2
        b.release(5)
        b.release(5)
        assert b.opens(5) == 0
        b.forget(5)
        b.close()
    finally:
        os.close(device)


def test_passthrough_is_not_allowed_in_a_user_namespace() -> None:
    # rcds exec's mounts run as "root" of a user namespace: no CAP_SYS_ADMIN where the kernel
    # checks it, so the mount keeps no-open mode instead of failing every open
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1)")
    code = "from rcds.mount.fuse.passthrough import passthrough_allowed; print(passthrough_allowed())"
    out = subprocess.run(
        ["unshare", "--user", "--map-root-user", sys.executable, "-c", code], capture_output=True, text=True
    )
    if out.returncode != 0:
        pytest.skip(f"no user namespaces here: {out.stderr.strip()}")
    assert out.stdout.strip() == "False"
