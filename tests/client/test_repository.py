"""The client library against real engine servers on loopback: namespace, files, laziness, revisions."""

from __future__ import annotations

import io
import stat
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from rcds.client.config.settings import load_client_config
from rcds.client.fetch.trust import BreadcrumbFile
from rcds.client.repository import Repository
from rcds.errors import ConfigError, IntegrityError, NetworkError, NotFoundError
from rcds.format.hashes import ObjectKind

from testkit import NAME, Entry

if TYPE_CHECKING:
    from conftest import FakeClock, Site

pytestmark = pytest.mark.timeout(60)

C1 = "/sw/g/c1"
C2 = "/sw/g/c2"


def test_namespace(site: Site) -> None:
    files = site.files
    repo = site.open()
    assert repo.revision == 2
    assert repo.listdir("/") == ["sw"]
    assert repo.listdir("/sw/g") == ["c1", "c2"]
    assert repo.listdir(C1) == [".cvmfscatalog", "a", "abs", "alib", "b", "outside"]
    assert repo.listdir(f"{C1}/a") == ["big.bin", "empty", "hello.txt", "hl", "link", "run.sh"]
    # Symlinks: followed by stat, not by lstat; in the middle of a path; absolute into the repository.
    assert stat.S_ISLNK(repo.lstat(f"{C1}/a/link").st_mode)
    assert repo.readlink(f"{C1}/a/link") == "hello.txt"
    st = repo.stat(f"{C1}/a/link")
    assert stat.S_ISREG(st.st_mode) and st.st_size == len(files[f"{C1}/a/hello.txt"])
    assert repo.read_bytes(f"{C1}/alib/hello.txt") == files[f"{C1}/a/hello.txt"]
    assert repo.read_bytes(f"{C1}/abs") == files[f"{C1}/a/hello.txt"]
    assert repo.listdir(f"{C1}/alib") == repo.listdir(f"{C1}/a")
    assert repo.read_bytes(f"{C1}/b/../a/hello.txt") == files[f"{C1}/a/hello.txt"]
    with pytest.raises(NotFoundError, match="outside the repository"):
        repo.stat(f"{C1}/outside")
    assert repo.lstat(f"{C1}/outside").st_size == len("/etc/passwd")
    # Hard links share an inode; modes, sizes and times come from the catalog.
    a, b = repo.stat(f"{C1}/a/hello.txt"), repo.stat(f"{C1}/a/hl")
    assert a.st_ino == b.st_ino and a.st_nlink == 2
    assert a.st_ino != repo.stat(f"{C1}/a/big.bin").st_ino
    assert repo.stat("/").st_ino == 256 and stat.S_ISDIR(repo.stat("/").st_mode)
    assert stat.S_IMODE(repo.stat(f"{C1}/a/run.sh").st_mode) == 0o755
    assert repo.stat(f"{C1}/a/run.sh").st_mtime == 1_700_000_000
    assert repo.stat(f"{C1}/a/big.bin").st_size == len(files[f"{C1}/a/big.bin"])
    assert repo.exists(f"{C1}/a") and not repo.exists(f"{C1}/nope") and not repo.exists(f"{C1}/outside")
    with pytest.raises(NotFoundError, match="no such file"):
        repo.stat(f"{C1}/a/missing")
    with pytest.raises(NotFoundError, match="not a directory"):
        repo.listdir(f"{C1}/a/hello.txt")
    with pytest.raises(NotFoundError, match="not a symbolic link"):
        repo.readlink(f"{C1}/a/hello.txt")
    with pytest.raises(NotFoundError, match="not a regular file"):
        repo.open(f"{C1}/a")
    # Every file reads back exactly; walk is os.walk-like and sees all of it.
    for path, data in files.items():
        assert repo.read_bytes(path) == data, path
    walked = {f"{d.rstrip('/')}/{f}" for d, _, files in repo.walk("/") for f in files}
    assert set(files) <= walked
    assert f"{C1}/a/link" in walked
    assert next(iter(repo.walk(C1)))[1] == ["a", "b"]


def test_open_reads_only_the_chunks_it_needs(site: Site) -> None:
    big = site.big
    repo = site.open()
    path = f"{C1}/a/big.bin"
    pieces = repo.pieces(path)
    assert len(pieces) > 3 and all(p.kind is ObjectKind.PARTIAL for p in pieces)
    before = site.fetched("P")
    with repo.open(path) as f:
        assert f.seekable() and f.readable()
        mid = pieces[2].offset + 10
        f.seek(mid)
        assert f.read(100) == big[mid : mid + 100]
        assert site.fetched("P") - before == 1  # one chunk object, nothing else
        f.seek(-50, io.SEEK_END)
        assert f.read() == big[-50:]
        assert f.tell() == len(big)
        assert f.read(10) == b""
        assert site.fetched("P") - before == 2
        # A read across a chunk boundary, then the whole file; cached chunks are not fetched again.
        edge = pieces[1].offset - 5
        f.seek(edge)
        assert f.read(10) == big[edge : edge + 10]
        f.seek(0)
        assert f.read() == big
    assert site.fetched("P") - before == len(pieces)
    with repo.open(f"{C1}/a/hello.txt", "r", encoding="utf-8") as t:
        assert t.read() == "hello rcds\n"
    with pytest.raises(ConfigError, match="read-only"):
        repo.open(path, "wb")  # type: ignore[call-overload]


def test_nested_catalogs_are_loaded_only_when_touched(site: Site) -> None:
    repo = site.open()
    root_only = site.fetched("C")
    assert root_only == 1
    assert repo.listdir("/sw/g") == ["c1", "c2"]
    assert repo.stat("/sw/g/c1").st_mode & stat.S_IFDIR
    assert site.fetched("C") == 1  # listing and stat of the mount points need no nested catalog
    repo.read_bytes(f"{C1}/a/hello.txt")
    assert site.fetched("C") == 2
    repo.listdir(C1)
    assert site.fetched("C") == 2
    repo.read_bytes(f"{C2}/x.txt")
    assert site.fetched("C") == 3
    # A second client with the same cache loads the catalogs from the cache.
    again = site.open()
    again.read_bytes(f"{C2}/x.txt")
    assert site.fetched("C") == 3
    pinned = {e.name for e in again.cache.entries() if e.pinned}
    assert len([n for n in pinned if n.endswith("C")]) == 3  # root, c1 and c2 (pins are cache-wide)


def test_refresh_after_ttl_keeps_open_files_on_their_revision(site: Site, clock: FakeClock) -> None:
    repo = site.open(clock=clock)
    assert repo.ttl == 240  # the root catalog's TTL
    path = f"{C1}/a/hello.txt"
    old = repo.open(path)
    first = old.read(5)
    old_root = repo.trust.manifest.root_catalog
    new_rev = site.publish([Entry("a/hello.txt", b"version two\n")], C1, replace=True)
    assert repo.refresh() is False and repo.revision == 2  # TTL not expired yet
    clock.advance(241)
    assert repo.refresh() is True
    assert repo.revision == new_rev == 3
    assert repo.read_bytes(path) == b"version two\n"
    assert old.read() == b"hello rcds\n"[5:] and first == b"hello"
    old.close()
    assert repo.refresh() is False  # next check only after another TTL
    pins = {e.name: e.pinned for e in repo.cache.entries()}
    assert not pins[old_root.object_name(ObjectKind.CATALOG).removeprefix("data/")]
    assert pins[repo.trust.manifest.root_catalog.object_name(ObjectKind.CATALOG).removeprefix("data/")]
    crumb = BreadcrumbFile(site.cache_dir, NAME).read()
    assert crumb is not None and crumb.revision == 3


def test_ttl_is_capped_by_max_ttl_and_a_failed_check_stays_offline(site: Site, clock: FakeClock) -> None:
    repo = site.open(clock=clock, max_ttl=60)
    assert repo.ttl == 60
    repo.read_bytes(f"{C1}/a/hello.txt")
    for srv in site.servers:
        srv.stop()
    clock.advance(61)
    assert repo.refresh() is False
    info = repo.info()
    assert info.offline and info.last_error and "cannot download" in info.last_error
    assert info.next_check_in == pytest.approx(60)
    assert repo.read_bytes(f"{C1}/a/hello.txt") == b"hello rcds\n"  # from the cache
    with pytest.raises(NetworkError, match="cannot download"):
        repo.read_bytes(f"{C1}/b/c/d.txt")  # never fetched: needs the network


def test_quota_eviction_under_a_full_cache(site: Site) -> None:
    blobs = {f"f{i:02d}.bin": bytes([i]) * 40_000 + bytes(range(256)) * 100 for i in range(30)}
    site.publish([Entry(name, data) for name, data in blobs.items()], "/sw/big")
    quota = 400_000
    repo = site.open(quota_bytes=quota)
    for name, data in blobs.items():
        assert repo.read_bytes(f"/sw/big/{name}") == data
        assert repo.cache.size() <= quota
    repo.source.flush()  # objects are committed to the cache in the background
    assert repo.cache.size() <= quota
    assert not repo.cache.check()
    cached_files = [e for e in repo.cache.entries() if e.kind in ("", "P")]
    assert 0 < len(cached_files) < len(blobs)  # the oldest were evicted
    assert all(e.pinned for e in repo.cache.entries() if e.kind == "C")  # catalogs stay
    # Evicted objects come back from the network, verified.
    assert repo.read_bytes("/sw/big/f00.bin") == blobs["f00.bin"]


def test_alien_cache_serves_a_second_client_and_corrupt_entries_are_refetched(
    site: Site, tmp_path: Path
) -> None:
    files = site.files
    alien = tmp_path / "alien"
    a = site.open(alien_cache=alien, cache_dir=tmp_path / "cache-a")
    for path, data in files.items():
        assert a.read_bytes(path) == data
    b = site.open(alien_cache=alien, cache_dir=tmp_path / "cache-b")
    # Damage one alien entry: it is detected, dropped and fetched again from the network.
    hello = b.pieces(f"{C1}/a/hello.txt")[0].hash
    entry = alien / hello.object_name().removeprefix("data/")
    entry.write_bytes(b"garbage")
    network_before = b.source.stats["network"]
    for path, data in files.items():
        assert b.read_bytes(path) == data
    assert b.source.stats["alien"] >= 4
    assert b.source.stats["network"] - network_before == 1  # only the damaged object
    assert entry.read_bytes() != b"garbage"  # replaced by the verified object


def test_open_name_reads_the_client_configuration(site: Site, tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    (etc / "config.d").mkdir(parents=True)
    (etc / "keys").mkdir()
    (etc / "keys" / f"{NAME}.pub").write_bytes(site.key.read_bytes())
    (etc / "default.local").write_text(
        f'CVMFS_HTTP_PROXY=DIRECT\nRCDS_CACHE_DIR="{tmp_path / "cfgcache"}"\nCVMFS_MAX_TTL=2\n'
    )
    (etc / "config.d" / f"{NAME}.conf").write_text(
        'CVMFS_SERVER_URL="' + ";".join(u.replace(NAME, "@fqrn@") for u in site.urls) + '"\n'
    )
    config = load_client_config(NAME, etc_dir=etc)
    with Repository.open_name(NAME, config) as repo:
        assert repo.ttl == 120  # CVMFS_MAX_TTL is in minutes
        assert repo.cache.dir == tmp_path / "cfgcache"
        assert repo.read_bytes(f"{C2}/x.txt") == b"in c2\n"
        assert len(repo.fetcher.servers) == 2
        assert all(ep.latency is not None for ep in repo.info().endpoints if ep.role == "host")  # probed
    (etc / "keys" / f"{NAME}.pub").unlink()
    with pytest.raises(ConfigError, match="no master public key"):
        Repository.open_name(NAME, load_client_config(NAME, etc_dir=etc))


def test_a_foreign_master_key_is_refused(site: Site, tmp_path: Path) -> None:
    from rcds.format import keys

    other = tmp_path / "other.pub"
    other.write_bytes(keys.public_key_pem(keys.generate_key().public_key()))
    before = set(threading.enumerate())
    with pytest.raises(IntegrityError, match="master public keys"):
        Repository.open_urls(site.urls, [other], cache_dir=site.cache_dir, probe=False)
    assert not [e for e in site.cache_dir.glob("??/*C")]  # nothing of it was cached
    assert not set(threading.enumerate()) - before  # the failed open left no thread behind


_READER = r"""
import hashlib, json, sys
from pathlib import Path
from rcds.client.repository import Repository
urls, key, cache, alien, quota, expected_file, rounds = sys.argv[1:]
expected = json.loads(Path(expected_file).read_text())
repo = Repository.open_urls(
    urls.split(","), [key], cache_dir=Path(cache), alien_cache=Path(alien),
    quota_bytes=int(quota), probe=False,
)
for _ in range(int(rounds)):
    for path, digest in expected.items():
        got = hashlib.sha256(repo.read_bytes(path)).hexdigest()
        assert got == digest, (path, got, digest)
    print("round", flush=True)
repo.close()
print("ok")
"""


@pytest.mark.timeout(120)
def test_processes_share_the_cache_and_the_alien_cache(site: Site, tmp_path: Path) -> None:
    import hashlib
    import json
    import signal
    import subprocess
    import sys
    import time

    from rcds.client.cache.alien import AlienCache
    from rcds.client.cache.local import LocalCache
    from rcds.format.compression import verify_object
    from rcds.format.hashes import parse_object_name

    blobs = {f"/sw/many/f{i:02d}.bin": bytes([i]) * 30_000 + bytes(range(256)) * (50 + i) for i in range(40)}
    site.publish([Entry(p.rsplit("/", 1)[1], d) for p, d in blobs.items()], "/sw/many")
    expected = {p: hashlib.sha256(d).hexdigest() for p, d in {**site.files, **blobs}.items()}
    exp_file = tmp_path / "expected.json"
    exp_file.write_text(json.dumps(expected))
    cache, alien = tmp_path / "shared-cache", tmp_path / "shared-alien"
    args = [",".join(site.urls), str(site.key), str(cache), str(alien), str(1_200_000), str(exp_file)]

    def start(rounds: int) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", _READER, *args, str(rounds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    # One reader is killed mid-way: the others and the caches must not care.
    victim = start(50)
    procs = [start(3), start(3)]
    assert victim.stdout is not None
    victim.stdout.readline()
    time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    victim.wait(30)
    for p in procs:
        out, err = p.communicate(timeout=100)
        assert p.returncode == 0, err
        assert out.endswith("ok\n")

    with LocalCache(cache, 1_200_000) as c:
        problems = [p for p in c.check() if not p.startswith("missing file for row")]
        assert problems == []
        assert c.size() <= 1_200_000
    AlienCache(alien)  # reopening cleans up; every object in it verifies
    names = [f for f in alien.glob("??/*") if f.is_file()]
    assert len(names) >= len(blobs)
    for f in names:
        h, _ = parse_object_name(f"data/{f.parent.name}/{f.name}")
        verify_object(f.read_bytes(), h)
    # After the crash, a new client on the same cache reads everything correctly.
    out = subprocess.run(
        [sys.executable, "-c", _READER, *args, "1"], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
