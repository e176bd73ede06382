"""Repositories published by stock CernVM-FS (shared fixtures), mounted by rcds over loopback HTTP,
directly and through a real Squid, compared with their source trees and with the client library."""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rcds.client.repository import Repository
from rcds.serve.http import make_server

from mountkit import compare_tree, write_config

FIXTURES = next(
    (
        p / "shared" / "fixtures" / "stock-cvmfs"
        for p in Path(__file__).resolve().parents
        if (p / "shared" / "fixtures" / "stock-cvmfs").is_dir()
    ),
    Path("/work/shared/fixtures/stock-cvmfs"),
)
SOURCES = {
    "stock.example.org": ("stock.example.org.rev2-source.tar.gz", 2),
    "shake.example.org": ("shake.example.org.rev1-source.tar.gz", 1),
}


@pytest.fixture
def stock_server(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Both stock repositories (copies) served over loopback; name -> repository URL."""
    if not FIXTURES.is_dir():
        pytest.skip(f"no stock fixtures at {FIXTURES}")
    repos = {}
    for name in SOURCES:
        shutil.copytree(FIXTURES / name, tmp_path / "srv" / name)
        repos[name] = str(tmp_path / "srv" / name)
    srv = make_server(repos)
    srv.start_background()
    yield {name: srv.url_for(name) for name in SOURCES}
    srv.stop()


def _source_tree(name: str, dest: Path) -> Path:
    with tarfile.open(FIXTURES / SOURCES[name][0]) as tf:
        tf.extractall(dest, filter="tar")
    return dest


def _compare_with_source(source: Path, mounted: Path) -> int:
    """Every source entry: same type, permissions, size, bytes and link target in the mount."""
    count = 0
    for dirpath, dirs, files in os.walk(source):
        rel = Path(dirpath).relative_to(source)
        assert sorted(os.listdir(mounted / rel)) == sorted(dirs + files), rel
        for name in dirs + files:
            src, got = Path(dirpath) / name, mounted / rel / name
            a, b = os.lstat(src), os.lstat(got)
            assert stat.S_IFMT(a.st_mode) == stat.S_IFMT(b.st_mode), rel / name
            assert stat.S_IMODE(a.st_mode) == stat.S_IMODE(b.st_mode) or stat.S_ISLNK(a.st_mode), rel / name
            if stat.S_ISLNK(a.st_mode):
                assert os.readlink(src) == os.readlink(got)
            elif stat.S_ISREG(a.st_mode):
                assert b.st_size == a.st_size and got.read_bytes() == src.read_bytes(), rel / name
            count += 1
    return count


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_stock_repository_mounted_like_its_source(
    name: str, stock_server: dict[str, str], mounter: Any, tmp_path: Path
) -> None:
    key = FIXTURES / f"{name}.pub"
    config = write_config(tmp_path / "etc")
    mp = tmp_path / "cvmfs" / name
    args = [name, str(mp), "--config-dir", str(config), "--cache", str(tmp_path / "cache")]
    args += ["--server", stock_server[name], "--key", str(key)]
    mounter(mp, args)
    assert _compare_with_source(_source_tree(name, tmp_path / "src"), mp) >= 80
    with Repository.open_urls(
        [stock_server[name]], [key], cache_dir=tmp_path / "ccache", probe=False
    ) as repo:
        assert compare_tree(repo, mp) >= 80
        assert os.getxattr(mp, "user.revision") == str(SOURCES[name][1]).encode()
        assert os.getxattr(mp, "user.root_hash") == repo.trust.manifest.root_catalog.hex.encode()
        random_bin = "/sw/grp/cidA/data/random.bin"
        chunks = len(repo.pieces(random_bin))
        assert chunks > 1
        assert os.getxattr(mp / random_bin.lstrip("/"), "user.chunks") == str(chunks).encode()
        f = "/sw/grp/cidA/bin/run.sh"
        assert os.getxattr(mp / f.lstrip("/"), "user.hash") == repo.entry(f).hash.hex.encode()
    assert int(os.getxattr(mp, "user.nclg")) == 3  # root + both CID catalogs, walked above


def test_stock_repository_through_squid(
    stock_server: dict[str, str], squid: Any, mounter: Any, tmp_path: Path
) -> None:
    name = "stock.example.org"
    config = write_config(tmp_path / "etc", {"CVMFS_HTTP_PROXY": squid.url})
    mp = tmp_path / "cvmfs" / name
    args = [name, str(mp), "--config-dir", str(config), "--cache", str(tmp_path / "cache")]
    args += ["--server", stock_server[name], "--key", str(FIXTURES / f"{name}.pub")]
    mounter(mp, args)
    assert os.getxattr(mp, "user.proxy") == squid.url.encode()
    src = _source_tree(name, tmp_path / "src")
    data = "sw/grp/cidA/data/text.dat"
    assert (mp / data).read_bytes() == (src / data).read_bytes()
    assert squid.wait_logged("/data/")  # the objects went through the proxy
