"""Stratum 1 snapshots over real HTTP on loopback: initial, incremental, hostile and interrupted."""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import re
import shutil
import socket
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from rcds.errors import IntegrityError, LockedError, NetworkError, NotFoundError
from rcds.format import manifest
from rcds.format.hashes import ObjectKind, parse_object_name
from rcds.format.keys import load_public_key_file
from rcds.net.fetcher import Fetcher
from rcds.net.settings import NetSettings
from rcds.publish.create import create_repository, sign_whitelist
from rcds.publish.layout import Settings
from rcds.publish.stratum0 import Stratum0
from rcds.replica.replicator import ReplicaSpec, Replicator
from rcds.replica.snapshot import SnapshotResult, date_utc, init_replica, snapshot
from rcds.repo.catalog import Catalog
from rcds.repo.http_source import HttpSource
from rcds.repo.source import StoreSource
from rcds.repo.verify import VerifyReport, verify_repository
from rcds.serve.handler import AccessLog, AccessRecord
from rcds.serve.http import RepositoryServer, make_server
from rcds.storage.local import LocalStore

from replkit import assert_closed
from testkit import Entry, publish, verify

pytestmark = pytest.mark.timeout(120)

FIXTURES = Path("/work/shared/fixtures/stock-cvmfs")
CHUNKY = os.urandom(700_000)  # chunked with the test repository's 64/128/256 KiB chunk sizes
SHARED = b"the same bytes in every CID\n"


def cid_entries(tag: str, n: int = 6) -> list[Entry]:
    """A small CID tree: a few unique files, one file shared by all CIDs, a symlink."""
    out = [Entry("bin", kind="dir", mode=0o755), Entry("shared.txt", SHARED)]
    out += [Entry(f"bin/tool{i}", f"#!/bin/sh\necho {tag} {i}\n".encode(), mode=0o755) for i in range(n)]
    out.append(Entry("link", kind="symlink", target="bin/tool0", mode=0o777))
    return out


def master_key(s0: Stratum0) -> rsa.RSAPublicKey:
    return load_public_key_file(s0.layout.key("pub"))


def objects_of(root: Path) -> set[str]:
    """Every object name stored under a repository directory."""
    return set(LocalStore(root).list_objects())


def split(names: set[str]) -> tuple[set[str], set[str]]:
    """(catalog objects, all other objects)."""
    cats = {n for n in names if n.endswith("C")}
    return cats, names - cats


def live_catalogs(root: Path, work: Path) -> set[str]:
    """The catalog objects of a repository's current revision."""
    store = LocalStore(root)
    todo = [manifest.parse(store.get(".cvmfspublished")).manifest.root_catalog]
    out: set[str] = set()
    while todo:
        name = todo.pop().object_name(ObjectKind.CATALOG)
        out.add(name)
        db = work / "live.db"
        db.write_bytes(zlib.decompress(store.get(name)))
        with Catalog(db, "") as cat:
            todo += [h for _, h, _ in cat.nested()]
        db.unlink()
    return out


def serve(repos: dict[str, Path], access_log: AccessLog | None = None) -> RepositoryServer:
    """A started loopback server for ``repos`` (stopped when used as a context manager)."""
    server = make_server(repos, access_log=access_log)
    server.start_background()
    return server


def quick_source(url: str) -> HttpSource:
    """An HTTP source that gives up at once on a dead server (no retries, no back-off)."""
    return HttpSource(Fetcher([url], settings=NetSettings(max_retries=0)))


def replicate(url: str, fqrn: str, key: rsa.RSAPublicKey, dest: LocalStore) -> SnapshotResult:
    source = HttpSource.for_url(url)
    try:
        return snapshot(source, fqrn, [key], dest, workers=4)
    finally:
        source.close()


def verify_replica(dest: LocalStore, fqrn: str, key: rsa.RSAPublicKey) -> VerifyReport:
    """Verify the replica locally and as served over HTTP; both must agree."""
    local = verify_repository(StoreSource(dest), fqrn, [key])
    with serve({fqrn: dest.root}) as server:
        source = HttpSource.for_url(server.url_for(fqrn))
        try:
            remote = verify_repository(source, fqrn, [key])
        finally:
            source.close()
    assert (remote.revision, remote.catalogs, remote.objects) == (
        local.revision,
        local.catalogs,
        local.objects,
    )
    return local


def assert_identical(dest: LocalStore, upstream: Path, *, subset: bool = True) -> None:
    """Replicated objects and root files are byte-identical to the upstream's.

    ``subset``: every replica object must exist upstream (not so after a gc upstream).
    """
    for name in dest.list_objects():
        if not subset and not (upstream / name).exists():
            continue
        assert dest.get(name) == (upstream / name).read_bytes(), name
    for name in (".cvmfspublished", ".cvmfswhitelist"):
        assert dest.get(name) == (upstream / name).read_bytes(), name


@pytest.fixture
def upstream(repo: Stratum0) -> Iterator[tuple[Stratum0, RepositoryServer]]:
    """The test repository with two CIDs (one with a chunked file), served on loopback."""
    publish(repo, [*cid_entries("a"), Entry("data/big.bin", CHUNKY)], "/sw/g/a")
    publish(repo, cid_entries("b"), "/sw/g/b")
    with serve({repo.name: repo.layout.public}) as server:
        yield repo, server


@pytest.fixture
def dest(tmp_path: Path) -> LocalStore:
    return init_replica(tmp_path / "replica")


# -- the happy paths ---------------------------------------------------------------------------------


def test_initial_snapshot_is_a_verifiable_identical_replica(
    upstream: tuple[Stratum0, RepositoryServer], dest: LocalStore, tmp_path: Path
) -> None:
    s0, server = upstream
    key = master_key(s0)
    result = replicate(server.url_for(s0.name), s0.name, key, dest)

    expected = verify(s0)
    assert result.revision == s0.manifest().revision == expected.revision
    assert result.catalogs_fetched == expected.catalogs == 3
    assert result.catalogs_skipped == 0
    # every data object, plus the certificate
    assert result.objects_fetched == expected.objects + 1
    assert result.bytes_fetched > len(CHUNKY) // 2
    assert any(n.endswith("P") for n in dest.list_objects())  # chunks were copied

    report = verify_replica(dest, s0.name, key)
    assert (report.revision, report.catalogs, report.objects) == (
        expected.revision,
        expected.catalogs,
        expected.objects,
    )
    assert_identical(dest, s0.layout.public)
    assert not (dest.root / ".cvmfs_master_replica").exists()
    assert not (dest.root / ".cvmfs_is_snapshotting").exists()
    stamp = (dest.root / ".cvmfs_last_snapshot").read_text()
    assert re.fullmatch(r"[A-Z][a-z]{2} [A-Z][a-z]{2} [ 0-9]\d \d\d:\d\d:\d\d UTC \d{4}\n", stamp)
    assert not any((dest.root / "data" / "txn").iterdir())


def test_resnapshot_after_a_publish_fetches_only_the_changed_chain(
    upstream: tuple[Stratum0, RepositoryServer], dest: LocalStore
) -> None:
    s0, server = upstream
    key = master_key(s0)
    url = server.url_for(s0.name)
    replicate(url, s0.name, key, dest)

    unchanged = replicate(url, s0.name, key, dest)
    assert (unchanged.catalogs_fetched, unchanged.catalogs_skipped, unchanged.objects_fetched) == (0, 1, 0)

    before = objects_of(s0.layout.public)
    publish(s0, cid_entries("c"), "/sw/g/c")  # shares shared.txt with the other CIDs
    new_catalogs, new_objects = split(objects_of(s0.layout.public) - before)
    assert new_catalogs and new_objects

    result = replicate(url, s0.name, key, dest)
    assert result.revision == s0.manifest().revision
    assert result.catalogs_fetched == len(new_catalogs) == 2  # the root and the new CID
    assert result.catalogs_skipped == 2  # /sw/g/a and /sw/g/b, each with its whole subtree
    assert result.objects_fetched == len(new_objects)
    assert split(objects_of(dest.root))[0] >= new_catalogs
    verify_replica(dest, s0.name, key)
    assert_identical(dest, s0.layout.public)


def test_a_resigned_whitelist_is_propagated(
    upstream: tuple[Stratum0, RepositoryServer], dest: LocalStore
) -> None:
    s0, server = upstream
    url = server.url_for(s0.name)
    replicate(url, s0.name, master_key(s0), dest)
    old = dest.get(".cvmfswhitelist")
    with s0.lock():
        sign_whitelist(s0.layout, s0.settings, s0.store, now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    new = (s0.layout.public / ".cvmfswhitelist").read_bytes()
    assert new != old
    result = replicate(url, s0.name, master_key(s0), dest)
    assert (result.catalogs_fetched, result.objects_fetched) == (0, 0)
    assert dest.get(".cvmfswhitelist") == new
    verify_replica(dest, s0.name, master_key(s0))


def test_gc_on_the_stratum0_then_snapshot(
    upstream: tuple[Stratum0, RepositoryServer], dest: LocalStore, tmp_path: Path
) -> None:
    s0, server = upstream
    key = master_key(s0)
    url = server.url_for(s0.name)
    replicate(url, s0.name, key, dest)

    publish(s0, cid_entries("a2", 3), "/sw/g/a", replace=True)
    s0.remove("/sw/g/b")
    publish(s0, cid_entries("d"), "/sw/g/d")
    gc = s0.gc(1)
    assert gc.deleted > 0

    result = replicate(url, s0.name, key, dest)
    assert result.revision == s0.manifest().revision
    verify_replica(dest, s0.name, key)
    assert_identical(dest, s0.layout.public, subset=False)

    fresh = init_replica(tmp_path / "fresh")  # an initial snapshot of a collected repository
    replicate(url, s0.name, key, fresh)
    assert objects_of(fresh.root) <= objects_of(s0.layout.public)
    verify_replica(fresh, s0.name, key)


def test_stock_repository_can_be_replicated(tmp_path: Path, dest: LocalStore) -> None:
    name = "stock.example.org"
    upstream_dir = tmp_path / name
    shutil.copytree(FIXTURES / name, upstream_dir)
    key = load_public_key_file(FIXTURES / f"{name}.pub")
    with serve({name: upstream_dir}) as server:
        result = replicate(server.url_for(name), name, key, dest)
    assert result.revision == 2
    assert result.catalogs_fetched == 3
    report = verify_replica(dest, name, key)
    assert report.catalogs == 3
    assert_identical(dest, upstream_dir)
    # the history database named by the manifest (H) is replicated too
    assert any(n.endswith("H") for n in dest.list_objects())


# -- refusals and failures ---------------------------------------------------------------------------


def test_corrupt_upstream_object_is_refused_and_the_replica_is_untouched(
    upstream: tuple[Stratum0, RepositoryServer], dest: LocalStore, tmp_path: Path
) -> None:
    s0, server = upstream
    key = master_key(s0)
    url = server.url_for(s0.name)
    first = replicate(url, s0.name, key, dest)
    published = dest.get(".cvmfspublished")

    before = objects_of(s0.layout.public)
    publish(s0, cid_entries("c"), "/sw/g/c")
    new_catalogs, new_objects = split(objects_of(s0.layout.public) - before)
    victim = s0.layout.public / sorted(new_objects)[0]
    good = victim.read_bytes()
    os.chmod(victim, 0o644)
    victim.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))

    with pytest.raises(IntegrityError, match="bad data"):  # after a no-cache retry
        replicate(url, s0.name, key, dest)
    assert dest.get(".cvmfspublished") == published
    assert not dest.has(sorted(new_objects)[0])
    assert not any(dest.has(c) for c in new_catalogs)  # neither the new CID nor the new root
    assert not (dest.root / ".cvmfs_is_snapshotting").exists()
    assert verify_replica(dest, s0.name, key).revision == first.revision
    assert_closed(dest, tmp_path)

    victim.write_bytes(good)  # repaired upstream: the next snapshot completes
    result = replicate(url, s0.name, key, dest)
    assert result.revision == s0.manifest().revision
    verify_replica(dest, s0.name, key)


def test_stale_upstream_is_refused(
    upstream: tuple[Stratum0, RepositoryServer], dest: LocalStore, tmp_path: Path
) -> None:
    s0, server = upstream
    key = master_key(s0)
    old_copy = tmp_path / "old"
    shutil.copytree(s0.layout.public, old_copy)
    publish(s0, cid_entries("c"), "/sw/g/c")
    current = replicate(server.url_for(s0.name), s0.name, key, dest)
    published = dest.get(".cvmfspublished")

    with serve({s0.name: old_copy}) as stale, pytest.raises(IntegrityError, match="roll the replica back"):
        replicate(stale.url_for(s0.name), s0.name, key, dest)
    assert dest.get(".cvmfspublished") == published
    assert verify_replica(dest, s0.name, key).revision == current.revision


def test_upstream_without_master_replica_is_refused(
    upstream: tuple[Stratum0, RepositoryServer], dest: LocalStore, tmp_path: Path
) -> None:
    s0, _ = upstream
    copy = tmp_path / "no-replica"
    shutil.copytree(s0.layout.public, copy)
    (copy / ".cvmfs_master_replica").unlink()
    with serve({s0.name: copy}) as server, pytest.raises(NotFoundError, match=r"\.cvmfs_master_replica"):
        replicate(server.url_for(s0.name), s0.name, master_key(s0), dest)
    assert not list(dest.list_objects())
    assert sorted(p.name for p in dest.root.iterdir()) == ["data"]


def test_wrong_master_key_is_refused(
    upstream: tuple[Stratum0, RepositoryServer], dest: LocalStore, tmp_path: Path
) -> None:
    s0, server = upstream
    other = tmp_path / "other"
    create_repository(other, Settings(name="other.example.org"))
    with pytest.raises(IntegrityError):
        replicate(
            server.url_for(s0.name),
            s0.name,
            load_public_key_file(other / "keys" / "other.example.org.pub"),
            dest,
        )
    assert not list(dest.list_objects())


def test_a_second_concurrent_snapshot_is_refused(
    upstream: tuple[Stratum0, RepositoryServer], dest: LocalStore
) -> None:
    s0, server = upstream
    fd = os.open(dest.root / "data", os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(LockedError):
            replicate(server.url_for(s0.name), s0.name, master_key(s0), dest)
    finally:
        os.close(fd)
    replicate(server.url_for(s0.name), s0.name, master_key(s0), dest)


def test_snapshot_killed_midway_leaves_a_consistent_replica_and_resumes(
    upstream: tuple[Stratum0, RepositoryServer], dest: LocalStore, tmp_path: Path
) -> None:
    s0, server = upstream
    key = master_key(s0)
    first = replicate(server.url_for(s0.name), s0.name, key, dest)
    published = dest.get(".cvmfspublished")

    before = objects_of(s0.layout.public)
    for tag in ("c", "d", "e"):
        publish(s0, cid_entries(tag, 10), f"/sw/g/{tag}")
    new_catalogs = live_catalogs(s0.layout.public, tmp_path) - before
    assert len(new_catalogs) == 4  # root, c, d, e

    # A second server on the same tree that dies (synchronously) right after answering the third
    # catalog request: root, /sw/g/c (completely replicated before /sw/g/d is asked for), /sw/g/d.
    catalog_requests: list[str] = []
    dying: RepositoryServer

    def access(record: AccessRecord) -> None:
        if record.target.endswith("C") and record.status == 200:
            catalog_requests.append(record.target)
            if len(catalog_requests) == 3:
                dying.stop()

    dying = serve({s0.name: s0.layout.public}, access_log=access)
    try:
        source = quick_source(dying.url_for(s0.name))
        with pytest.raises(NetworkError):
            snapshot(source, s0.name, [key], dest, workers=4)
        source.close()
    finally:
        dying.stop()
    assert len(catalog_requests) == 3

    assert dest.get(".cvmfspublished") == published
    assert not (dest.root / ".cvmfs_is_snapshotting").exists()
    assert verify_replica(dest, s0.name, key).revision == first.revision
    assert_closed(dest, tmp_path)
    stored = {c for c in new_catalogs if dest.has(c)}
    assert len(stored) == 1  # /sw/g/c only; neither /sw/g/d nor the new root

    result = replicate(server.url_for(s0.name), s0.name, key, dest)
    assert result.revision == s0.manifest().revision
    assert result.catalogs_fetched == len(new_catalogs) - 1
    assert result.catalogs_skipped == 3  # a, b and the already complete c
    verify_replica(dest, s0.name, key)
    assert_closed(dest, tmp_path)


# -- the replicator ----------------------------------------------------------------------------------


def _dead_url(name: str) -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/cvmfs/{name}"


def test_replicator_pulls_all_and_captures_errors(
    upstream: tuple[Stratum0, RepositoryServer], tmp_path: Path
) -> None:
    s0, server = upstream
    key_file = s0.layout.key("pub")
    no_replica = tmp_path / "no-replica"
    shutil.copytree(s0.layout.public, no_replica)
    (no_replica / ".cvmfs_master_replica").unlink()
    stock = "stock.example.org"
    stock_dir = tmp_path / stock
    shutil.copytree(FIXTURES / stock, stock_dir)
    with serve({stock: stock_dir, s0.name: no_replica}) as other:
        specs = [
            ReplicaSpec(s0.name, server.url_for(s0.name), key_file, tmp_path / "r1"),
            ReplicaSpec(s0.name, _dead_url(s0.name), key_file, tmp_path / "r2"),
            ReplicaSpec(stock, other.url_for(stock), [master_key(s0)], tmp_path / "r3"),  # wrong key
            ReplicaSpec(s0.name, other.url_for(s0.name), master_key(s0), tmp_path / "r4"),
            ReplicaSpec(stock, other.url_for(stock), FIXTURES / f"{stock}.pub", tmp_path / "r5"),
        ]
        replicator = Replicator(workers=2, source_factory=quick_source, clock=lambda: dt.datetime.now(dt.UTC))
        results = replicator.pull_all(specs)
        assert isinstance(results[0], SnapshotResult) and results[0].catalogs_fetched == 3
        assert isinstance(results[1], NetworkError)
        assert isinstance(results[2], IntegrityError)
        assert isinstance(results[3], NotFoundError)
        assert isinstance(results[4], SnapshotResult) and results[4].revision == 2
        again = replicator.pull_all(specs[:1])
    assert isinstance(again[0], SnapshotResult) and again[0].catalogs_fetched == 0
    verify_replica(LocalStore(tmp_path / "r1"), s0.name, master_key(s0))
    verify_replica(LocalStore(tmp_path / "r5"), stock, load_public_key_file(FIXTURES / f"{stock}.pub"))


def test_date_utc_is_date_dash_dash_utc_style() -> None:
    when = dt.datetime(2024, 10, 4, 8, 1, 7, tzinfo=dt.UTC)
    assert date_utc(when) == "Fri Oct  4 08:01:07 UTC 2024\n"
    assert date_utc(dt.datetime(2024, 10, 18, 8, 1, 7, tzinfo=dt.UTC)) == "Fri Oct 18 08:01:07 UTC 2024\n"


def test_object_names_in_the_replica_are_valid(
    upstream: tuple[Stratum0, RepositoryServer], dest: LocalStore
) -> None:
    s0, server = upstream
    replicate(server.url_for(s0.name), s0.name, master_key(s0), dest)
    for name in dest.list_objects():
        parse_object_name(name)
