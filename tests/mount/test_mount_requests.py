"""What the kernel still asks the daemon once its caches are warm: nothing.

Counted by the daemon's own FUSE session (``rcds_mount_requests_total`` at ``--metrics-port``),
no tracing: the first pass over the tree sends at most one ``OPEN`` and one ``OPENDIR`` (each
answered ``ENOSYS``: the kernel then stops asking), the second pass sends no ``OPEN``,
``OPENDIR``, ``READDIR``/``READDIRPLUS``, ``READLINK``, ``READ`` or ``LOOKUP`` at all.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from mountkit import fuse_requests, metrics_url

COUNTED = ("OPEN", "OPENDIR", "READDIR", "READDIRPLUS", "READLINK", "READ", "LOOKUP", "RELEASE")


def _walk(top: Path) -> tuple[int, int]:
    """List every directory, read every file and link; (files read, bytes read)."""
    files = size = 0
    for here, dirs, names in os.walk(top):
        for name in names:
            path = os.path.join(here, name)
            if os.path.islink(path):
                os.readlink(path)
                continue
            os.lstat(path)
            with open(path, "rb") as f:
                size += len(f.read())
            files += 1
        for name in dirs:
            os.lstat(os.path.join(here, name))
    return files, size


def test_a_warm_second_pass_sends_no_open_listing_or_read(site: Any, mount_site: Any) -> None:
    m = mount_site("--metrics-port", "0")
    url = metrics_url(m.proc)
    first = _walk(m.mp)
    assert first[0] >= 5 and first[1] > 0
    after_first = fuse_requests(url)
    assert after_first.get("READ", 0) >= 1 and after_first.get("READDIRPLUS", 0) >= 1
    assert after_first.get("READLINK", 0) >= 1  # the tree has symbolic links
    assert after_first.get("OPEN", 0) <= 1  # answered ENOSYS: the kernel stops opening
    assert after_first.get("OPENDIR", 0) <= 1
    assert after_first.get("RELEASE", 0) == 0
    second = _walk(m.mp)
    assert second == first
    after_second = fuse_requests(url)
    sent = {op: after_second.get(op, 0) - after_first.get(op, 0) for op in COUNTED}
    assert sent == dict.fromkeys(COUNTED, 0), (sent, after_first, after_second)


def _regular_files(top: Path) -> list[tuple[str, int]]:
    """Every non-empty regular file, one path per inode (hard links share their pages)."""
    out: dict[int, tuple[str, int]] = {}
    for here, _, names in os.walk(top):
        for name in names:
            path = os.path.join(here, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_size > 0:
                out.setdefault(st.st_ino, (path, st.st_size))
    return list(out.values())


def _read(files: list[tuple[str, int]]) -> None:
    for path, size in files:
        with open(path, "rb", buffering=0) as f:
            got = 0
            while chunk := f.read(1 << 20):
                got += len(chunk)
        assert got == size, path


def test_a_file_read_again_from_the_full_local_cache_takes_one_read_per_mib(
    site: Any, mount_site: Any
) -> None:
    # the mount's read-ahead is raised to 1 MiB (as root), so the kernel asks for a file of up
    # to 1 MiB in one READ (answered from the cache file in one go), a larger one per MiB;
    # with the kernel's default 128 KiB every file over 128 KiB took several
    m = mount_site("--metrics-port", "0")
    url = metrics_url(m.proc)
    files = _regular_files(m.mp)
    assert any(size > 128 * 1024 for _, size in files)  # the tree has files read in several parts
    _read(files)  # the local cache now holds every object
    for path, _ in files:  # drop the mount's page cache of every file (nothing else's)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    before = fuse_requests(url)
    _read(files)
    after = fuse_requests(url)
    reads = after.get("READ", 0) - before.get("READ", 0)
    at_most = sum(-(-size // (1 << 20)) for _, size in files)
    assert len(files) <= reads <= at_most, (reads, len(files), at_most)
    assert after.get("LOOKUP", 0) == before.get("LOOKUP", 0)
