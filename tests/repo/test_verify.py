"""The full repository verifier: stock fixtures pass, and every kind of damage is found and named."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from rcds.errors import IntegrityError
from rcds.format import keys
from rcds.format.compression import make_object
from rcds.format.hashes import ContentHash, ObjectKind
from rcds.format.pathhash import md5_pair
from rcds.publish.create import create_repository
from rcds.publish.layout import Settings
from rcds.publish.stratum0 import Stratum0
from rcds.repo.http_source import HttpSource
from rcds.repo.source import Source, StoreSource
from rcds.repo.verify import VerifyReport, verify_repository
from rcds.repo.view import open_view
from rcds.serve.http import RepositoryServer, make_server
from rcds.storage.local import LocalStore

from repo_tamper import Item, Tamper, build_tar, copy_tree, flip_byte

pytestmark = pytest.mark.timeout(120)

FIXTURES = Path("/work/shared/fixtures/stock-cvmfs")
NAME = "test.example.org"
CID = "/sw/grp/cid"
CID2 = "/sw/grp/cid2"
RUN = f"{CID}/bin/run.sh"
BIG = f"{CID}/data/random.bin"
ITEMS = [
    Item("bin", kind="dir", mode=0o755),
    Item("bin/run.sh", b"#!/bin/sh\necho only in cid\n", mode=0o755),
    Item("empty.txt", b""),
    Item("data/random.bin", os.urandom(120_000)),
    Item("data/text.txt", b"some text\n" * 100),
    Item("link", kind="symlink", target="bin/run.sh", mode=0o777),
]
ITEMS2 = [Item("README", b"the second CID\n"), Item("lib/pkg/__init__.py", b"# pkg\n")]


# -- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with two nested catalogs, a chunked file and a symlink (never modified)."""
    root = tmp_path_factory.mktemp("verify-base") / "repo"
    create_repository(root, Settings(name=NAME, chunk_min=4096, chunk_avg=8192, chunk_max=16384))
    s0 = Stratum0(root, NAME)
    s0.ingest_tar(build_tar(ITEMS), CID, now=1_700_000_100)
    s0.ingest_tar(build_tar(ITEMS2), CID2, now=1_700_000_200)
    return root


@pytest.fixture
def repo(base_repo: Path, tmp_path: Path) -> Tamper:
    """A private copy of the base repository, ready to be damaged."""
    return Tamper(copy_tree(base_repo, tmp_path / "repo"), NAME)


@pytest.fixture(scope="module")
def stranger() -> rsa.RSAPrivateKey:
    """A key nobody trusts."""
    return keys.generate_key()


def source_of(t: Tamper) -> StoreSource:
    return StoreSource(LocalStore(t.public))


def verify(t: Tamper, source: Source | None = None, **kw: object) -> VerifyReport:
    return verify_repository(source or source_of(t), NAME, [t.master_public], **kw)  # type: ignore[arg-type]


def broken(
    t: Tamper, source: Source | None = None, *, what: str | None = None, says: str = "", **kw: object
) -> IntegrityError:
    """Run the verifier, expecting it to fail (at ``what`` with ``says`` in its message, if given);
    return the error."""
    with pytest.raises(IntegrityError) as exc:
        verify(t, source, **kw)
    if what is not None:
        assert exc.value.what == what
    assert says in str(exc.value)
    return exc.value


def _walk_objects(
    source: Source, name: str, master: list[rsa.RSAPublicKey]
) -> set[tuple[ContentHash, ObjectKind]]:
    found: set[tuple[ContentHash, ObjectKind]] = set()
    with open_view(source, name, master) as v:
        for d in v.walk():
            if d.is_regular and d.is_chunked:
                found |= {(c.hash, ObjectKind.PARTIAL) for c in v.catalog_for(d.path).chunks(d)}
            elif d.is_regular:
                assert d.hash is not None
                found.add((d.hash, ObjectKind.FILE))
    return found


_INSERT_ROW = (
    "INSERT INTO catalog (md5path_1, md5path_2, parent_1, parent_2, hardlinks, hash, size, mode, mtime,"
    " mtimens, flags, name, symlink, uid, gid, xattr)"
    " VALUES (?, ?, ?, ?, 1, ?, 0, ?, 1, NULL, 4, ?, '', 0, 0, NULL)"
)


def insert_empty_file(db: sqlite3.Connection, path: str, parent: tuple[int, int], digest: bytes) -> None:
    """Add a catalog row for an empty regular file at ``path`` with the given parent path hash."""
    db.execute(_INSERT_ROW, (*md5_pair(path), *parent, digest, stat.S_IFREG | 0o644, path.rsplit("/", 1)[1]))


# -- intact repositories ------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "revision"), [("stock.example.org", 2), ("shake.example.org", 1)])
def test_stock_fixtures_verify(name: str, revision: int) -> None:
    source = StoreSource(LocalStore(FIXTURES / name))
    master = [keys.load_public_key_file(FIXTURES / f"{name}.pub")]
    seen: list[str] = []
    report = verify_repository(source, name, master, progress=seen.append)
    assert report.revision == revision
    assert report.catalogs == 3
    assert sorted(seen) == ["/", "/sw/grp/cidA", "/sw/grp/cidB"]
    assert report.entries == 86  # 84 paths, the two mount points counted in both catalogs
    assert report.objects == len(_walk_objects(source, name, master))
    assert report.bytes > 2_000_000


def test_own_repository_verifies(repo: Tamper) -> None:
    report = verify(repo)
    assert report.revision == 2
    assert report.catalogs == 3
    assert report.objects == len(_walk_objects(source_of(repo), NAME, [repo.master_public]))
    assert report.bytes == sum(len(it.data or b"") for it in ITEMS + ITEMS2)


def test_tamper_helper_leaves_no_defect(repo: Tamper) -> None:
    """Re-linking and re-signing by the helper alone keeps the repository valid (so tests see one defect)."""
    empty = make_object(b"", repo.algorithm)

    def add_file(db: sqlite3.Connection) -> None:
        insert_empty_file(db, f"{CID}/extra.txt", md5_pair(CID), empty.hash.digest)

    old_root = repo.manifest().root_catalog
    repo.edit_catalog(CID, add_file, fix_counters=True)
    assert repo.manifest().root_catalog != old_root
    verify(repo)
    with open_view(source_of(repo), NAME, [repo.master_public]) as v:
        assert v.read(f"{CID}/extra.txt") == b""
    repo.resign_manifest()
    repo.resign_whitelist()
    verify(repo)


# -- damaged objects ------------------------------------------------------------------------------


def test_corrupted_object(repo: Tamper) -> None:
    flip_byte(repo.public / repo.file_object(RUN))
    broken(repo, what=RUN, says="hash mismatch")


def test_truncated_object(repo: Tamper) -> None:
    path = repo.public / repo.file_object(f"{CID}/data/text.txt")
    path.write_bytes(path.read_bytes()[:-3])
    assert broken(repo).what == f"{CID}/data/text.txt"


def test_deleted_object(repo: Tamper) -> None:
    name = repo.file_object(RUN)
    (repo.public / name).unlink()
    broken(repo, what=RUN, says=f"{name} is missing")


def test_corrupted_chunk(repo: Tamper) -> None:
    chunks = repo.chunk_objects(BIG)
    assert len(chunks) > 3
    flip_byte(repo.public / chunks[2])
    broken(repo, what=BIG, says=chunks[2])


def test_deleted_chunk(repo: Tamper) -> None:
    (repo.public / repo.chunk_objects(BIG)[-1]).unlink()
    assert broken(repo).what == BIG


def test_object_with_wrong_size(repo: Tamper) -> None:
    """An intact object of the wrong length for its row (the row says 1 byte more)."""

    def grow(db: sqlite3.Connection) -> None:
        db.execute("UPDATE catalog SET size = size + 1 WHERE name = 'run.sh'")

    repo.edit_catalog(CID, grow, fix_counters=True)
    broken(repo, what=RUN, says="size")


def test_corrupted_nested_catalog_object(repo: Tamper) -> None:
    name = repo.catalog_object(CID2)
    flip_byte(repo.public / name)
    exc = broken(repo)
    assert exc.what == name


def test_corrupted_root_catalog_object(repo: Tamper) -> None:
    name = repo.catalog_object("")
    flip_byte(repo.public / name, 40)
    assert broken(repo).what == name


def test_deleted_nested_catalog(repo: Tamper) -> None:
    name = repo.catalog_object(CID2)
    (repo.public / name).unlink()
    broken(repo, what=CID2, says=f"{name} is missing")


# -- damaged catalogs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mount", "counter"), [(CID, "self_xattr"), ("", "subtree_chunks"), (CID2, "self_dir")]
)
def test_missing_statistics_row(repo: Tamper, mount: str, counter: str) -> None:
    repo.edit_catalog(mount, lambda db: db.execute("DELETE FROM statistics WHERE counter = ?", (counter,)))
    exc = broken(repo)
    assert exc.what is not None
    assert exc.what.startswith(f"catalog {mount or '/'} (")
    assert counter in str(exc)
    assert "statistics" in str(exc)


def test_orphan_row(repo: Tamper) -> None:
    """A row whose parent is no directory of the catalog; counters include it, so nothing else is wrong."""
    empty = make_object(b"", repo.algorithm)
    parent = md5_pair(os.urandom(16).hex())  # the path hash of no directory

    def add_orphan(db: sqlite3.Connection) -> None:
        insert_empty_file(db, f"{CID}/orphan.txt", parent, empty.hash.digest)

    new = repo.edit_catalog(CID, add_orphan, fix_counters=True)
    exc = broken(repo, what=f"catalog {CID} ({new.hex})", says="orphan")
    assert "1 row(s)" in str(exc)


@pytest.mark.parametrize(
    ("mount", "counter", "words"),
    [
        (CID, "self_regular", "self counters"),
        (CID, "self_file_size", "self counters"),
        (CID, "self_chunks", "self counters"),
        ("", "subtree_regular", "subtree counters"),
        ("", "self_dir", "self counters"),
    ],
)
def test_wrong_counters(repo: Tamper, mount: str, counter: str, words: str) -> None:
    def bump(db: sqlite3.Connection) -> None:
        db.execute("UPDATE statistics SET value = value + 1 WHERE counter = ?", (counter,))

    new = repo.edit_catalog(mount, bump)
    broken(repo, what=f"catalog {mount or '/'} ({new.hex})", says=words)


def test_wrong_directory_link_count(repo: Tamper) -> None:
    repo.edit_catalog(CID, lambda db: db.execute("UPDATE catalog SET hardlinks = 7 WHERE name = 'bin'"))
    broken(repo, what=f"{CID}/bin", says="link count")


def test_wrong_symlink_size(repo: Tamper) -> None:
    repo.edit_catalog(CID, lambda db: db.execute("UPDATE catalog SET size = 3 WHERE name = 'link'"))
    broken(repo, what=f"{CID}/link", says="symlink")


def test_chunk_gap(repo: Tamper) -> None:
    a, b = md5_pair(BIG)

    def drop_second(db: sqlite3.Connection) -> None:
        offset = db.execute(
            "SELECT offset FROM chunks WHERE md5path_1 = ? AND md5path_2 = ? ORDER BY offset"
            " LIMIT 1 OFFSET 1",
            (a, b),
        ).fetchone()[0]
        db.execute("DELETE FROM chunks WHERE md5path_1 = ? AND md5path_2 = ? AND offset = ?", (a, b, offset))

    repo.edit_catalog(CID, drop_second, fix_counters=True)
    broken(repo, what=BIG, says="gap")


def test_wrong_root_prefix(repo: Tamper) -> None:
    repo.edit_catalog(
        CID2, lambda db: db.execute("UPDATE properties SET value = '/x' WHERE key = 'root_prefix'")
    )
    exc = broken(repo)
    assert exc.what is not None and exc.what.startswith(f"catalog {CID2} (")
    assert "root_prefix" in str(exc)


def test_wrong_schema(repo: Tamper) -> None:
    repo.edit_catalog(CID, lambda db: db.execute("UPDATE properties SET value = '2.4' WHERE key = 'schema'"))
    assert "schema" in str(broken(repo))


def test_nested_link_without_mount_point(repo: Tamper) -> None:
    repo.edit_catalog(
        "",
        lambda db: db.execute(
            "INSERT INTO nested_catalogs (path, sha1, size)"
            " SELECT '/sw/ghost', sha1, size FROM nested_catalogs WHERE path = ?",
            (CID2,),
        ),
        fix_counters=True,
    )
    exc = broken(repo)
    assert exc.what == "/sw/ghost"


def test_root_catalog_revision_differs_from_manifest(repo: Tamper) -> None:
    s = repo.manifest().revision
    repo.edit_catalog("", lambda db: db.execute("UPDATE properties SET value = '7' WHERE key = 'revision'"))
    assert repo.manifest().revision == s
    exc = broken(repo, what="root catalog", says="revision 7")
    assert f"manifest revision {s}" in str(exc)


def test_manifest_revision_differs_from_root_catalog(repo: Tamper) -> None:
    repo.resign_manifest(revision=repo.manifest().revision + 1)
    assert broken(repo).what == "root catalog"


def test_manifest_timestamp_before_catalog(repo: Tamper) -> None:
    repo.resign_manifest(timestamp=1_600_000_000)
    broken(repo, what=".cvmfspublished", says="timestamp")


# -- damaged trust chain ---------------------------------------------------------------------------


def test_manifest_signed_by_another_key(repo: Tamper, stranger: rsa.RSAPrivateKey) -> None:
    repo.resign_manifest(key=stranger)
    broken(repo, what=".cvmfspublished", says="signature")


def test_manifest_tampered_without_resigning(repo: Tamper) -> None:
    raw = repo.store.get(".cvmfspublished")
    repo.store.put(".cvmfspublished", raw.replace(b"\nS2\n", b"\nS3\n", 1))
    broken(repo, what=".cvmfspublished", says="hash mismatch")


def test_new_certificate_not_in_whitelist(repo: Tamper, stranger: rsa.RSAPrivateKey) -> None:
    """A properly published certificate and signature, but the whitelist lists only the old certificate."""
    cert = keys.make_certificate(NAME, stranger)
    obj = make_object(keys.certificate_pem(cert), repo.algorithm)
    repo.store.put(obj.hash.object_name(ObjectKind.CERTIFICATE), obj.data)
    repo.resign_manifest(key=stranger, certificate=obj.hash)
    broken(repo, what=".cvmfswhitelist", says=keys.fingerprint(cert))
    # listing the new fingerprint repairs it
    repo.resign_whitelist(fingerprints=(keys.fingerprint(cert),))
    verify(repo)


def test_expired_whitelist(repo: Tamper) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    repo.resign_whitelist(created=now - dt.timedelta(days=31), expires=now - dt.timedelta(hours=1))
    broken(repo, what=".cvmfswhitelist", says="expired")
    # the expiry is the only defect
    verify(repo, now=now - dt.timedelta(hours=2))


def test_whitelist_expiring_this_hour(repo: Tamper) -> None:
    now = dt.datetime(2030, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
    repo.resign_whitelist(created=now - dt.timedelta(days=30), expires=now.replace(minute=59))
    assert broken(repo, now=now + dt.timedelta(minutes=10)).what == ".cvmfswhitelist"
    verify(repo, now=now - dt.timedelta(minutes=1))


def test_whitelist_lists_a_different_fingerprint(repo: Tamper) -> None:
    repo.resign_whitelist(fingerprints=(":".join(["AB"] * 20),))
    broken(repo, what=".cvmfswhitelist", says="not listed")


def test_whitelist_signed_by_another_master_key(repo: Tamper, stranger: rsa.RSAPrivateKey) -> None:
    repo.resign_whitelist(key=stranger)
    broken(repo, what=".cvmfswhitelist", says="master")
    verify_repository(source_of(repo), NAME, [stranger.public_key()])  # with the other key it is fine


def test_whitelist_for_another_repository(repo: Tamper) -> None:
    repo.resign_whitelist(name="other.example.org")
    broken(repo, what=".cvmfswhitelist", says="other.example.org")


def test_manifest_for_another_repository(repo: Tamper) -> None:
    repo.resign_manifest(repository_name="other.example.org")
    broken(repo, what=".cvmfspublished", says="other.example.org")


def test_verify_under_the_wrong_name(repo: Tamper) -> None:
    with pytest.raises(IntegrityError) as exc:
        verify_repository(source_of(repo), "other.example.org", [repo.master_public])
    assert exc.value.what == ".cvmfspublished"


def test_certificate_object_corrupted(repo: Tamper) -> None:
    name = repo.manifest().certificate.object_name(ObjectKind.CERTIFICATE)
    flip_byte(repo.public / name)
    assert broken(repo).what == name


# -- stock fixtures, damaged copies -------------------------------------------------------------------


@pytest.fixture
def stock_copy(tmp_path: Path) -> Path:
    return copy_tree(FIXTURES / "stock.example.org", tmp_path / "stock.example.org")


def _verify_stock(root: Path) -> VerifyReport:
    master = [keys.load_public_key_file(FIXTURES / "stock.example.org.pub")]
    return verify_repository(StoreSource(LocalStore(root)), "stock.example.org", master)


def _stock_entry_objects(root: Path, path: str) -> list[str]:
    master = [keys.load_public_key_file(FIXTURES / "stock.example.org.pub")]
    with open_view(StoreSource(LocalStore(root)), "stock.example.org", master) as v:
        d = v.lookup(path)
        if d.is_chunked:
            return [c.hash.object_name(ObjectKind.PARTIAL) for c in v.catalog_for(path).chunks(d)]
        assert d.hash is not None
        return [d.hash.object_name()]


def test_stock_copy_corrupted_object(stock_copy: Path) -> None:
    _verify_stock(stock_copy)
    path = "/sw/grp/cidB/tool.py"
    flip_byte(stock_copy / _stock_entry_objects(stock_copy, path)[0])
    with pytest.raises(IntegrityError) as exc:
        _verify_stock(stock_copy)
    assert exc.value.what == path


def test_stock_copy_corrupted_chunk(stock_copy: Path) -> None:
    path = "/sw/grp/cidA/data/random.bin"
    flip_byte(stock_copy / _stock_entry_objects(stock_copy, path)[4], 10)
    with pytest.raises(IntegrityError) as exc:
        _verify_stock(stock_copy)
    assert exc.value.what == path


def test_stock_copy_deleted_object(stock_copy: Path) -> None:
    path = "/sw/grp/cidA/private.txt"
    os.unlink(stock_copy / _stock_entry_objects(stock_copy, path)[0])
    with pytest.raises(IntegrityError) as exc:
        _verify_stock(stock_copy)
    assert exc.value.what == path


# -- over HTTP ------------------------------------------------------------------------------------------


@pytest.fixture
def served(repo: Tamper) -> Iterator[tuple[Tamper, HttpSource]]:
    server: RepositoryServer = make_server({NAME: repo.public})
    server.start_background()
    source = HttpSource.for_url(server.url_for(NAME))
    try:
        yield repo, source
    finally:
        source.close()
        server.stop()


def test_verify_over_http(served: tuple[Tamper, HttpSource]) -> None:
    repo, source = served
    remote = verify(repo, source)
    local = verify(repo)
    assert (remote.revision, remote.catalogs, remote.entries, remote.objects, remote.bytes) == (
        local.revision,
        local.catalogs,
        local.entries,
        local.objects,
        local.bytes,
    )


def test_verify_over_http_corrupted_object(served: tuple[Tamper, HttpSource]) -> None:
    repo, source = served
    flip_byte(repo.public / repo.file_object(RUN))
    exc = broken(repo, source)
    assert exc.what == RUN


def test_verify_over_http_corrupted_chunk(served: tuple[Tamper, HttpSource]) -> None:
    repo, source = served
    flip_byte(repo.public / repo.chunk_objects(BIG)[0])
    assert broken(repo, source).what == BIG


def test_verify_over_http_deleted_object(served: tuple[Tamper, HttpSource]) -> None:
    repo, source = served
    (repo.public / repo.file_object(RUN)).unlink()
    assert broken(repo, source).what == RUN


def test_verify_over_http_bad_manifest(
    served: tuple[Tamper, HttpSource], stranger: rsa.RSAPrivateKey
) -> None:
    repo, source = served
    repo.resign_manifest(key=stranger)
    assert broken(repo, source).what == ".cvmfspublished"


@pytest.mark.parametrize("name", ["stock.example.org", "shake.example.org"])
def test_stock_fixture_over_http(name: str) -> None:
    server = make_server({name: FIXTURES / name})
    server.start_background()
    source = HttpSource.for_url(server.url_for(name))
    try:
        report = verify_repository(source, name, [keys.load_public_key_file(FIXTURES / f"{name}.pub")])
        assert report.catalogs == 3
    finally:
        source.close()
        server.stop()
