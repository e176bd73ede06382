"""Ingesting tarballs and directories: what comes through, deduplication, revisions."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from rcds.errors import ConfigError, InputError, LockedError
from rcds.format.chunker import ChunkParams, find_cuts
from rcds.format.hashes import ObjectKind
from rcds.publish.create import create_repository
from rcds.publish.layout import Settings
from rcds.publish.lock import WriterLock
from rcds.publish.stratum0 import Stratum0

from testkit import Entry, make_tar, publish, verify

RICH = [
    Entry("pkg", kind="dir", mode=0o755, mtime=1_600_000_000),
    Entry("pkg/__init__.py", b"VERSION = 1\n", mtime=1_600_000_001),
    Entry("pkg/run.sh", b"#!/bin/sh\necho hi\n", mode=0o755),
    Entry("pkg/private.txt", b"secret\n", mode=0o600),
    Entry("pkg/empty", b""),
    Entry("pkg/dönüş/ünïcödé.txt", "çalışma\n".encode()),
    Entry("pkg/emptydir", kind="dir", mode=0o700),
    Entry("pkg/link-rel", kind="symlink", target="run.sh"),
    Entry("pkg/link-abs", kind="symlink", target="/cvmfs/other.example.org/x"),
    Entry("pkg/hard", kind="hardlink", target="pkg/run.sh"),
    Entry("other/hard-elsewhere", kind="hardlink", target="pkg/__init__.py"),
]


@pytest.mark.parametrize("compression", ["none", "gz", "bz2", "xz", "zst"])
def test_every_compression_is_detected_and_everything_comes_through(repo, view_factory, compression):
    data = make_tar(RICH, compression)
    result = repo.ingest_tar(io.BytesIO(data), "/sw/grp/cid")
    assert result.revision == 1
    v = view_factory(repo)
    base = "/sw/grp/cid"
    assert [d.name for d in v.listdir(base)] == [".cvmfscatalog", "other", "pkg"]
    pkg = v.lookup(f"{base}/pkg")
    assert pkg.mode == stat.S_IFDIR | 0o755 and pkg.mtime == 1_600_000_000
    init = v.lookup(f"{base}/pkg/__init__.py")
    assert (init.mode, init.mtime, init.size) == (stat.S_IFREG | 0o644, 1_600_000_001, 12)
    assert v.read(f"{base}/pkg/__init__.py") == b"VERSION = 1\n"
    assert v.lookup(f"{base}/pkg/run.sh").mode == stat.S_IFREG | 0o755
    assert v.lookup(f"{base}/pkg/private.txt").mode == stat.S_IFREG | 0o600
    assert v.read(f"{base}/pkg/empty") == b""
    assert v.read(f"{base}/pkg/dönüş/ünïcödé.txt") == "çalışma\n".encode()
    assert v.lookup(f"{base}/pkg/emptydir").mode == stat.S_IFDIR | 0o700
    assert v.listdir(f"{base}/pkg/emptydir") == []
    rel = v.lookup(f"{base}/pkg/link-rel")
    assert rel.is_symlink and rel.symlink == "run.sh" and rel.size == 6
    assert v.lookup(f"{base}/pkg/link-abs").symlink == "/cvmfs/other.example.org/x"
    # hard links in one directory form a group; across directories they become copies
    hard, run = v.lookup(f"{base}/pkg/hard"), v.lookup(f"{base}/pkg/run.sh")
    assert hard.hardlink_group == run.hardlink_group != 0 and hard.link_count == run.link_count == 2
    elsewhere = v.lookup(f"{base}/other/hard-elsewhere")
    assert elsewhere.hardlink_group == 0 and elsewhere.hash == init.hash
    assert v.read(f"{base}/pkg/hard") == b"#!/bin/sh\necho hi\n"
    assert verify(repo).entries > len(RICH)


def test_the_target_becomes_a_nested_catalog_with_marker(repo, view_factory):
    publish(repo, [Entry("a.txt", b"a")], "/sw/grp/cid")
    v = view_factory(repo)
    root = v.root_catalog()
    assert [m for m, _, _ in root.nested()] == ["/sw/grp/cid"]
    mount = root.lookup("/sw/grp/cid")
    assert mount is not None and mount.is_nested_mountpoint
    child = v.catalog_for("/sw/grp/cid")
    assert child.mountpoint == "/sw/grp/cid" and child.properties["root_prefix"] == "/sw/grp/cid"
    assert v.lookup("/sw/grp/cid").is_nested_root
    marker = v.lookup("/sw/grp/cid/.cvmfscatalog")
    assert marker.size == 0 and marker.hash is not None
    assert marker.hash.hex == "e8ec3d88b62ebf526e4e5a4ff6162a3aa48a6b78"


def test_large_files_are_chunked_like_the_stock_chunker(repo, view_factory):
    big = os.urandom(1_500_000)
    publish(repo, [Entry("big.bin", big)], "/sw/grp/cid")
    v = view_factory(repo)
    entry = v.lookup("/sw/grp/cid/big.bin")
    assert entry.is_chunked and entry.hash is None and entry.size == len(big)
    chunks = v.catalog_for(entry.path).chunks(entry)
    params = ChunkParams(64 << 10, 128 << 10, 256 << 10)
    assert [c.offset for c in chunks[1:]] == find_cuts(big, params)
    assert all(repo.store.has(c.hash.object_name(ObjectKind.PARTIAL)) for c in chunks)
    assert v.read(entry.path) == big
    verify(repo)


def test_identical_content_is_stored_once_across_paths_and_revisions(repo):
    entries = [Entry(f"f{i}.txt", f"content {i}\n".encode() * 50) for i in range(20)]
    first = repo.ingest_tar(io.BytesIO(make_tar(entries)), "/sw/grp/one")
    second = repo.ingest_tar(io.BytesIO(make_tar(entries)), "/sw/grp/two")
    assert first.stats.objects_written == 21  # 20 files + the empty .cvmfscatalog marker
    assert second.stats.objects_written == 0
    dup = repo.ingest_tar(io.BytesIO(make_tar([Entry("x", b"content 3\n" * 50)])), "/sw/grp/three")
    assert dup.stats.objects_written == 0


def test_ingest_directory(repo, view_factory, tmp_path):
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "empty").mkdir()
    (src / "bin" / "tool").write_bytes(b"#!/bin/sh\n")
    os.chmod(src / "bin" / "tool", 0o755)
    (src / "data.txt").write_bytes(b"x" * 1000)
    os.link(src / "data.txt", src / "data-hard.txt")
    os.symlink("bin/tool", src / "tool-link")
    os.utime(src / "data.txt", (1_500_000_000, 1_500_000_000))
    repo.ingest_dir(src, "/sw/grp/dir")
    v = view_factory(repo)
    assert [d.name for d in v.listdir("/sw/grp/dir")] == [
        ".cvmfscatalog",
        "bin",
        "data-hard.txt",
        "data.txt",
        "empty",
        "tool-link",
    ]
    assert v.lookup("/sw/grp/dir/bin/tool").mode & 0o777 == 0o755
    assert v.lookup("/sw/grp/dir/data.txt").mtime == 1_500_000_000
    assert v.lookup("/sw/grp/dir/data-hard.txt").link_count == 2
    assert v.lookup("/sw/grp/dir/tool-link").symlink == "bin/tool"
    verify(repo)


def test_existing_path_needs_replace(repo, view_factory):
    publish(repo, [Entry("v1.txt", b"one")], "/sw/grp/cid")
    before = repo.store.get(".cvmfspublished")
    with pytest.raises(InputError, match="--replace"):
        publish(repo, [Entry("v2.txt", b"two")], "/sw/grp/cid")
    assert repo.store.get(".cvmfspublished") == before
    assert publish(repo, [Entry("v2.txt", b"two")], "/sw/grp/cid", replace=True) == 2
    v = view_factory(repo)
    assert [d.name for d in v.listdir("/sw/grp/cid")] == [".cvmfscatalog", "v2.txt"]
    child = v.catalog_for("/sw/grp/cid")
    assert child.revision == 2 and child.previous_revision is not None
    verify(repo)


def test_remove_subtrees(repo, view_factory):
    publish(repo, [Entry("a/b/c.txt", b"c"), Entry("a/d.txt", b"d")], "/sw/grp/one")
    publish(repo, [Entry("x.txt", b"x")], "/sw/grp/two")
    assert repo.remove("/sw/grp/one/a/b").revision == 3
    assert repo.remove("/sw/grp/two").revision == 4
    v = view_factory(repo)
    assert [d.name for d in v.listdir("/sw/grp")] == ["one"]
    assert [d.name for d in v.listdir("/sw/grp/one/a")] == ["d.txt"]
    assert [m for m, _, _ in v.root_catalog().nested()] == ["/sw/grp/one"]
    with pytest.raises(InputError, match="does not exist"):
        repo.remove("/sw/grp/nothing")
    verify(repo)


def test_only_the_catalogs_on_the_changed_path_are_rewritten(repo, view_factory):
    for cid in ("a", "b", "c"):
        publish(repo, [Entry("f", cid.encode())], f"/sw/grp/{cid}")
    before = {m: h for m, h, _ in view_factory(repo).root_catalog().nested()}
    publish(repo, [Entry("f", b"new")], "/sw/grp/c", replace=True)
    after = {m: h for m, h, _ in view_factory(repo).root_catalog().nested()}
    assert after["/sw/grp/a"] == before["/sw/grp/a"] and after["/sw/grp/b"] == before["/sw/grp/b"]
    assert after["/sw/grp/c"] != before["/sw/grp/c"]


def test_nested_catalog_inside_a_nested_catalog(repo, view_factory):
    publish(repo, [Entry("top.txt", b"t")], "/sw/grp/outer")
    publish(repo, [Entry("in.txt", b"i")], "/sw/grp/outer/sub/inner")
    v = view_factory(repo)
    assert v.read("/sw/grp/outer/sub/inner/in.txt") == b"i"
    assert v.catalog_for("/sw/grp/outer/sub/inner/in.txt").mountpoint == "/sw/grp/outer/sub/inner"
    report = verify(repo)
    assert report.catalogs == 3
    repo.remove("/sw/grp/outer")
    assert verify(repo).catalogs == 1


def test_revision_counters_and_timestamps(repo, view_factory):
    m0 = repo.manifest()
    publish(repo, [Entry("a", b"a")], "/sw/a", now=m0.timestamp + 100)
    publish(repo, [Entry("b", b"b")], "/sw/b", now=m0.timestamp + 50)  # clock went back
    m2 = repo.manifest()
    assert m2.revision == 2 and m2.timestamp >= m0.timestamp + 100
    assert view_factory(repo).root_catalog().revision == 2


@pytest.mark.parametrize("path", ["/", "", "../x", "/sw/../x", "/sw/\0x"])
def test_bad_target_paths(repo, path):
    with pytest.raises(InputError):
        publish(repo, [Entry("a", b"a")], path)
    assert repo.manifest().revision == 0


def test_target_below_a_file_is_refused(repo):
    publish(repo, [Entry("f", b"f")], "/sw/grp/cid")
    with pytest.raises(InputError):
        publish(repo, [Entry("a", b"a")], "/sw/grp/cid/f/sub")
    assert repo.manifest().revision == 1
    verify(repo)


def test_second_writer_gets_a_clear_error_and_readers_are_not_blocked(repo, view_factory):
    publish(repo, [Entry("a", b"a")], "/sw/a")
    with WriterLock(repo.layout.lock, repo.name), pytest.raises(LockedError, match=f"pid {os.getpid()}"):
        publish(repo, [Entry("b", b"b")], "/sw/b")
    with WriterLock(repo.layout.lock, repo.name):
        assert view_factory(repo).read("/sw/a/a") == b"a"
        verify(repo)
    assert publish(repo, [Entry("b", b"b")], "/sw/b") == 2


def test_create_writes_private_keys_and_refuses_to_overwrite(tmp_path, view_factory):
    root = tmp_path / "r"
    create_repository(root, Settings(name="new.example.org"))
    for suffix in ("masterkey", "key", "pub", "crt"):
        assert stat.S_IMODE((root / "keys" / f"new.example.org.{suffix}").stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "keys").stat().st_mode) == 0o700
    assert not (root / "public" / "keys").exists()
    s0 = Stratum0(root, "new.example.org")
    assert s0.manifest().revision == 0
    assert verify(s0).catalogs == 1
    with pytest.raises(ConfigError, match="already holds"):
        create_repository(root, Settings(name="new.example.org"))
    with pytest.raises(ConfigError):
        create_repository(tmp_path / "bad", Settings(name="nodots"))


def test_resign_extends_the_whitelist(repo):
    from rcds.format.whitelist import parse

    old = parse(repo.store.get(".cvmfswhitelist")).whitelist
    repo.resign()
    new = parse(repo.store.get(".cvmfswhitelist")).whitelist
    assert new.expires >= old.expires
    verify(repo)


def test_shake128_repository(tmp_path, view_factory):
    root = tmp_path / "s"
    create_repository(root, Settings(name="shake.example.org", hash_algorithm="shake128"))
    s0 = Stratum0(root, "shake.example.org")
    publish(s0, [Entry("x.txt", b"hello\n")], "/sw/x")
    v = view_factory(s0)
    entry = v.lookup("/sw/x/x.txt")
    assert entry.hash is not None and entry.hash.hex.endswith("-shake128")
    assert v.manifest.root_catalog.hex.endswith("-shake128")
    verify(s0)


def test_memory_stays_flat_in_the_tarball_size(tmp_path):
    """Peak RSS of ingests of 192 MiB and of 576 MiB of file data differ by less than 30 MiB."""
    import subprocess
    import sys

    script = r"""
import io, os, resource, sys, tarfile
from pathlib import Path
from rcds.publish.create import create_repository
from rcds.publish.layout import Settings
from rcds.publish.stratum0 import Stratum0

class Gen(io.RawIOBase):
    # a tar stream generated on the fly: N files of 8 MiB pseudo-random, half compressible
    def __init__(self, n):
        self.n = n; self.buf = bytearray(); self.i = 0; self.done = False
    def readable(self): return True
    def _more(self):
        if self.i < self.n:
            ti = tarfile.TarInfo(f"f{self.i}.bin"); ti.size = 8 << 20
            self.buf += ti.tobuf(tarfile.PAX_FORMAT)
            self.buf += os.urandom(4 << 20) + bytes(4 << 20)
            self.i += 1
        elif not self.done:
            self.buf += bytes(1024); self.done = True
    def readinto(self, b):
        while not self.buf and not self.done: self._more()
        if not self.buf and self.done: return 0
        n = min(len(b), len(self.buf)); b[:n] = self.buf[:n]; del self.buf[:n]
        if not self.buf and not self.done: self._more()
        return n

root = Path(sys.argv[1])
create_repository(root, Settings(name="mem.example.org"))
Stratum0(root, "mem.example.org").ingest_tar(io.BufferedReader(Gen(int(sys.argv[2]))), "/sw/x")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""
    peaks = []
    for n in (24, 72):
        out = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / f"r{n}"), str(n)],
            capture_output=True,
            text=True,
            check=True,
            timeout=240,
        )
        peaks.append(int(out.stdout.strip()))
    assert peaks[1] - peaks[0] < 30, f"peak RSS grew from {peaks[0]} MiB to {peaks[1]} MiB"


def test_truncated_stream_changes_nothing(repo):
    data = make_tar([Entry("a.txt", b"a" * 100_000), Entry("b.txt", b"b" * 100_000)], "none")
    before = repo.store.get(".cvmfspublished")
    with pytest.raises(InputError, match=r"truncated|corrupt"):
        repo.ingest_tar(io.BytesIO(data[:70_000]), "/sw/x")
    assert repo.store.get(".cvmfspublished") == before
    verify(repo)


def test_work_area_is_reset_after_an_interrupted_writer(repo):
    (repo.layout.work / "leftover.db").write_bytes(b"junk")
    (repo.layout.public / "data" / "txn" / "tmp.1.2.3").write_bytes(b"partial")
    publish(repo, [Entry("a", b"a")], "/sw/a")
    assert not (repo.layout.work / "leftover.db").exists()
    assert list((repo.layout.public / "data" / "txn").iterdir()) == []


def test_settings_mismatch_is_reported(tmp_path, repo):
    with pytest.raises(ConfigError, match="holds repository"):
        Stratum0(repo.layout.root, "other.example.org")
    from rcds.errors import NotFoundError

    with pytest.raises(NotFoundError, match="rcds repo create"):
        Stratum0(Path(tmp_path / "none"), "x.example.org")


def test_remove_many_in_one_revision(repo, view_factory):
    for cid in ("a", "b", "c"):
        publish(repo, [Entry("f", cid.encode())], f"/sw/grp/{cid}")
    publish(repo, [Entry("g", b"g")], "/sw/grp/c/inner")
    results = repo.remove_many(
        ["/sw/grp/a", "/sw/grp/b", "/sw/grp/gone", "/sw/grp/c/inner/g"], missing_ok=True
    )
    assert [r.revision for r in results] == [5, 6]  # root-held paths in one revision, the nested one apart
    v = view_factory(repo)
    assert [d.name for d in v.listdir("/sw/grp")] == ["c"]
    assert [d.name for d in v.listdir("/sw/grp/c/inner")] == [".cvmfscatalog"]
    with pytest.raises(InputError):
        repo.remove_many(["/sw/grp/gone"])
    verify(repo)
