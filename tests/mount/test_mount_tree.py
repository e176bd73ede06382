"""The mounted tree against the published one: attributes, bytes, links, xattrs, EROFS, statfs."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from mountkit import compare_tree, is_mounted
from testkit import NAME

C1 = "/sw/g/c1"


def test_every_entry_and_byte_as_published(site: Any, mount_site: Any) -> None:
    m = mount_site()
    repo = site.open()
    assert compare_tree(repo, m.mp) >= 15
    # the published content itself, not only what the client says
    for path, data in site.files.items():
        assert (m.mp / path.lstrip("/")).read_bytes() == data
    for path, target in site.links.items():
        assert os.readlink(m.mp / path.lstrip("/")) == target
    # hard links: one inode, link count 2; different files: different inodes
    a, b = os.stat(m.mp / "sw/g/c1/a/hello.txt"), os.stat(m.mp / "sw/g/c1/a/hl")
    assert a.st_ino == b.st_ino and a.st_nlink == 2
    assert os.stat(m.mp / "sw/g/c1/a/run.sh").st_ino != a.st_ino
    # the root is FUSE's root node; '.' and '..' are listed
    assert os.stat(m.mp).st_ino == 1
    listed = subprocess.run(["ls", "-a", str(m.mp / "sw/g/c1/a")], capture_output=True, text=True, check=True)
    assert listed.stdout.split()[:2] == [".", ".."]
    # empty file, symlink through the mount, a chunked file read at an offset
    assert (m.mp / "sw/g/c1/a/empty").read_bytes() == b""
    assert (m.mp / "sw/g/c1/alib/hello.txt").read_bytes() == b"hello rcds\n"
    with open(m.mp / "sw/g/c1/a/big.bin", "rb") as f:
        f.seek(300_001)
        assert f.read(5000) == site.big[300_001:305_001]
    # inodes are stable: the same after the kernel forgot them
    before = os.stat(m.mp / "sw/g/c2/x.txt").st_ino
    subprocess.run(["sh", "-c", "echo 2 > /proc/sys/vm/drop_caches"], check=False)
    assert os.stat(m.mp / "sw/g/c2/x.txt").st_ino == before
    with pytest.raises(FileNotFoundError):
        os.stat(m.mp / "sw/g/nothing")


def test_xattrs_like_stock(site: Any, mount_site: Any) -> None:
    m = mount_site()
    repo = site.open()
    top = m.mp
    names = set(os.listxattr(top))
    for required in (
        "user.revision",
        "user.root_hash",
        "user.fqrn",
        "user.host",
        "user.proxy",
        "user.expires",
        "user.nclg",
        "user.pubkeys",
        "user.timeout",
        "user.repo_counters",
    ):
        assert required in names
    assert "user.hash" not in names and "user.chunks" not in names  # a directory
    assert os.getxattr(top, "user.revision") == str(repo.revision).encode()
    assert os.getxattr(top, "user.root_hash") == repo.trust.manifest.root_catalog.hex.encode()
    assert os.getxattr(top, "user.fqrn") == NAME.encode()
    assert os.getxattr(top, "user.host").decode() in site.urls
    assert os.getxattr(top, "user.proxy") == b"DIRECT"
    assert int(os.getxattr(top, "user.expires")) >= 0
    hello = m.mp / "sw/g/c1/a/hello.txt"
    assert os.getxattr(hello, "user.hash") == repo.entry(f"{C1}/a/hello.txt").hash.hex.encode()
    assert os.getxattr(hello, "user.chunks") == b"1"
    big = m.mp / "sw/g/c1/a/big.bin"
    pieces = repo.pieces(f"{C1}/a/big.bin")
    assert len(pieces) > 1
    assert os.getxattr(big, "user.chunks") == str(len(pieces)).encode()
    lines = os.getxattr(big, "user.chunk_list").decode().splitlines()
    assert lines[0] == "hash,offset,size" and len(lines) == len(pieces) + 1
    # (the kernel keeps user.* attributes of symlinks away, so user.rawlink is not reachable)
    # nested catalogs are loaded lazily: the root and c1 so far, then c2 as well
    assert int(os.getxattr(top, "user.nclg")) == 2
    os.listdir(m.mp / "sw/g/c2")
    assert int(os.getxattr(top, "user.nclg")) == 3
    with pytest.raises(OSError) as exc:
        os.getxattr(top, "user.no_such_thing")
    assert exc.value.errno == errno.ENODATA
    # getfattr -d (Debian package attr) shows them too
    out = subprocess.run(["getfattr", "-d", str(hello)], capture_output=True, text=True, check=True)
    assert 'user.fqrn="test.example.org"' in out.stdout
    assert f'user.revision="{repo.revision}"' in out.stdout


def test_read_only(mount_site: Any) -> None:
    m = mount_site()
    f = m.mp / "sw/g/c1/a/hello.txt"
    for attempt in (
        lambda: os.open(f, os.O_WRONLY | os.O_APPEND),
        lambda: os.open(f, os.O_RDWR),
        lambda: os.open(m.mp / "sw/g/c1/new", os.O_WRONLY | os.O_CREAT),
        lambda: os.mkdir(m.mp / "sw/g/c1/d"),
        lambda: os.unlink(f),
        lambda: os.rename(f, m.mp / "sw/g/c1/moved"),
        lambda: os.chmod(f, 0o777),
        lambda: os.symlink("x", m.mp / "sw/g/c1/s"),
        lambda: os.setxattr(f, "user.x", b"1"),
    ):
        with pytest.raises(OSError) as exc:
            attempt()
        assert exc.value.errno == errno.EROFS
    assert not os.access(f, os.W_OK)
    assert os.access(f, os.R_OK)
    assert os.access(m.mp / "sw/g/c1/a/run.sh", os.X_OK)
    st = os.statvfs(m.mp)
    assert st.f_files > 10 and st.f_bsize == 4096 and st.f_flag & os.ST_RDONLY


def test_sigterm_unmounts_cleanly(mount_site: Any) -> None:
    m = mount_site()
    assert is_mounted(m.mp)
    busy = open(m.mp / "sw/g/c1/a/hello.txt", "rb")  # noqa: SIM115 - a user of the mount
    try:
        assert m.proc.stop() == 0
        assert not is_mounted(m.mp)  # detached even while busy
    finally:
        with contextlib.suppress(OSError):  # ENOTCONN: its file system is gone
            busy.close()
    assert os.listdir(m.mp) == []
    assert "unmounted" in m.proc.logs()


def test_root_mode_mounts_on_first_lookup(site: Any, mounter: Any, tmp_path: Path) -> None:
    from mountkit import write_config

    stock = tmp_path / "stock.example.org"
    config = write_config(
        tmp_path / "etc",
        None,
        test__example__org={"CVMFS_SERVER_URL": ";".join(site.urls), "CVMFS_PUBLIC_KEY": str(site.key)},
    )
    root = tmp_path / "cvmfs"
    mounter(root, ["--root", str(root), "--config-dir", str(config), "--cache", str(tmp_path / "c")])
    assert os.listdir(root) == []  # nothing mounted until looked up
    assert (root / NAME / "sw/g/c2/x.txt").read_bytes() == b"in c2\n"
    assert os.listdir(root) == [NAME]
    assert os.getxattr(root / NAME, "user.fqrn") == NAME.encode()
    with pytest.raises(FileNotFoundError):
        os.stat(root / "unknown.example.org")
    with pytest.raises(FileNotFoundError):
        os.stat(stock)
    assert os.stat(root / NAME).st_dev == os.stat(root).st_dev


def test_objects_land_in_the_local_and_alien_caches(site: Any, mount_site: Any, tmp_path: Path) -> None:
    alien = tmp_path / "alien"
    m = mount_site(extra={"CVMFS_ALIEN_CACHE": str(alien), "CVMFS_QUOTA_LIMIT": "100"})
    repo = site.open()
    h = repo.entry("/sw/g/c1/b/c/d.txt").hash
    assert (m.mp / "sw/g/c1/b/c/d.txt").read_bytes() == b"deep\n"
    stored = {p.name for p in alien.rglob("*") if p.is_file()}
    assert any(name.startswith(h.hex[2:]) for name in stored)  # a second node would find it there
    assert int(os.getxattr(m.mp, "user.ndownload")) >= 1
    assert os.getxattr(m.mp / "sw/g/c1/b/c/d.txt", "user.lhash") == h.hex.encode()  # in the local cache
    st = os.statvfs(m.mp)
    assert st.f_blocks * st.f_bsize == 100 << 20  # the quota
