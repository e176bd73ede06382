"""File catalog schema 2.5 revision 7 (reference sections 5.1-5.4, 12.4) as written by WritableCatalog."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from rcds.errors import IntegrityError
from rcds.format.catalog_schema import (
    COUNTER_FIELDS,
    COUNTER_NAMES,
    CREATE_STATEMENTS,
    SCHEMA,
    SCHEMA_OBJECTS,
    SCHEMA_REVISION,
    Counters,
    Tally,
)
from rcds.format.dirent import FLAG_DIR, FLAG_NESTED_ROOT, Chunk, Dirent, file_flags
from rcds.format.hashes import Algorithm, ContentHash
from rcds.format.pathhash import md5_pair
from rcds.publish.catalog_rw import WritableCatalog
from rcds.repo.catalog import Catalog

# Reference section 5.4, in its order.
REFERENCE_COUNTERS = [
    "self_regular",
    "self_symlink",
    "self_special",
    "self_dir",
    "self_nested",
    "self_chunked",
    "self_chunks",
    "self_file_size",
    "self_chunked_size",
    "self_xattr",
    "self_external",
    "self_external_file_size",
    "subtree_regular",
    "subtree_symlink",
    "subtree_special",
    "subtree_dir",
    "subtree_nested",
    "subtree_chunked",
    "subtree_chunks",
    "subtree_file_size",
    "subtree_chunked_size",
    "subtree_xattr",
    "subtree_external",
    "subtree_external_file_size",
]

EXPECTED_OBJECTS = {
    ("table", "properties"),
    ("table", "catalog"),
    ("index", "idx_catalog_parent"),
    ("table", "chunks"),
    ("table", "nested_catalogs"),
    ("table", "bind_mountpoints"),
    ("table", "statistics"),
}


def _root(path: str = "") -> Dirent:
    flags = FLAG_DIR | (FLAG_NESTED_ROOT if path else 0)
    return Dirent(
        path, path.rsplit("/", 1)[-1], stat.S_IFDIR | 0o755, 4096, 1_700_000_000, flags, hardlinks=2
    )


def _finalize(cat: WritableCatalog, revision: int = 0) -> None:
    cat.finalize(revision=revision, previous=None, last_modified=1_700_000_000, subtree=Tally())


def _objects(path: Path) -> dict[tuple[str, str], str | None]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT type, name, sql FROM sqlite_master").fetchall()
    return {(t, n): sql for t, n, sql in rows if not n.startswith("sqlite_autoindex_")}


def test_counter_names_match_reference() -> None:
    assert len(COUNTER_NAMES) == 24
    assert list(COUNTER_NAMES) == REFERENCE_COUNTERS
    assert len(COUNTER_FIELDS) == 12
    assert set(SCHEMA_OBJECTS) == EXPECTED_OBJECTS
    assert len(CREATE_STATEMENTS) == 7
    assert CREATE_STATEMENTS[0].startswith("CREATE TABLE properties")


@pytest.mark.parametrize("mountpoint", ["", "/sw/grp/cid"])
def test_created_catalog_schema(tmp_path: Path, mountpoint: str) -> None:
    path = tmp_path / "cat.db"
    cat = WritableCatalog.create(path, _root(mountpoint))
    _finalize(cat, revision=3)
    objects = _objects(path)
    assert set(objects) == EXPECTED_OBJECTS
    # the statements are stock's (sqlite stores them without the trailing semicolon)
    assert sorted(sql for sql in objects.values() if sql) == sorted(s.rstrip(";") for s in CREATE_STATEMENTS)
    with sqlite3.connect(path) as db:
        stats = dict(db.execute("SELECT counter, value FROM statistics").fetchall())
        props = dict(db.execute("SELECT key, value FROM properties").fetchall())
        cols = [r[1] for r in db.execute("PRAGMA table_info(catalog)")]
        rows = db.execute(
            "SELECT md5path_1, md5path_2, parent_1, parent_2, name, symlink FROM catalog"
        ).fetchall()
    assert sorted(stats) == sorted(REFERENCE_COUNTERS)
    assert len(stats) == 24
    assert stats["self_dir"] == 1
    assert sum(stats.values()) == 1
    assert props["schema"] == "2.5" == SCHEMA
    assert props["schema_revision"] == "7" == str(SCHEMA_REVISION)
    assert props["revision"] == "3"
    assert props["last_modified"] == "1700000000"
    assert "previous_revision" not in props
    if mountpoint:
        assert props["root_prefix"] == mountpoint
    else:
        assert "root_prefix" not in props
    assert "mtimens" in cols and "xattr" in cols
    root_pair = md5_pair(mountpoint)
    expected_parent = (0, 0) if not mountpoint else md5_pair(mountpoint.rsplit("/", 1)[0])
    assert rows == [(*root_pair, *expected_parent, mountpoint.rsplit("/", 1)[-1], "")]


def test_created_catalog_is_not_wal(tmp_path: Path) -> None:
    path = tmp_path / "cat.db"
    cat = WritableCatalog.create(path, _root())
    _finalize(cat)
    header = path.read_bytes()[:100]
    assert header.startswith(b"SQLite format 3\x00")
    assert header[18] == 1 and header[19] == 1  # legacy (rollback journal) read/write versions, 2 = WAL
    assert not (tmp_path / "cat.db-wal").exists()
    assert not (tmp_path / "cat.db-journal").exists()
    assert not (tmp_path / "cat.db-shm").exists()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal"
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_catalog_with_rows_keeps_rowids_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "cat.db"
    cat = WritableCatalog.create(path, _root("/sw"))
    h = ContentHash.of(b"x")
    cat.insert(Dirent("/sw/a.txt", "a.txt", stat.S_IFREG | 0o644, 10, 1, file_flags(Algorithm.SHA1), hash=h))
    cat.insert(Dirent("/sw/bin", "bin", stat.S_IFDIR | 0o755, 4096, 1, FLAG_DIR, hardlinks=2))
    cat.insert(
        Dirent("/sw/big", "big", stat.S_IFREG | 0o644, 30, 1, file_flags(Algorithm.SHA1, chunked=True))
    )
    cat.insert_chunks("/sw/big", [Chunk(0, 20, h), Chunk(20, 10, h)])
    cat.insert(Dirent("/sw/l", "l", stat.S_IFLNK | 0o777, 5, 1, 12, symlink="a.txt"))
    cat.fix_directory_links()
    counters = cat.finalize(revision=1, previous=h, last_modified=2, subtree=Tally())
    assert counters.self["regular"] == 2
    assert counters.self["dir"] == 2
    assert counters.self["symlink"] == 1
    assert counters.self["chunked"] == 1
    assert counters.self["chunks"] == 2
    assert counters.self["file_size"] == 40
    assert counters.self["chunked_size"] == 30
    with Catalog(path, "/sw") as ro:
        assert ro.counters() == counters
        assert ro.previous_revision == h
        assert ro.lookup("/sw").link_count == 3  # type: ignore[union-attr]
        assert [d.name for d in ro.listdir("/sw")] == ["a.txt", "big", "bin", "l"]
        assert [c.offset for c in ro.chunks(ro.lookup("/sw/big"))] == [0, 20]  # type: ignore[arg-type]
        rowids = [r[0] for r in ro.db.execute("SELECT rowid FROM catalog ORDER BY rowid")]
        assert rowids == [1, 2, 3, 4, 5]
    with sqlite3.connect(path) as db:
        sql = db.execute("SELECT sql FROM sqlite_master WHERE name = 'catalog'").fetchone()[0]
    assert "WITHOUT ROWID" not in sql.upper()


def test_reader_refuses_missing_schema_object_or_counter(tmp_path: Path) -> None:
    path = tmp_path / "cat.db"
    _finalize(WritableCatalog.create(path, _root()))
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM statistics WHERE counter = 'subtree_xattr'")
    with Catalog(path, "") as cat, pytest.raises(IntegrityError, match="subtree_xattr"):
        cat.counters()
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE bind_mountpoints")
    with pytest.raises(IntegrityError, match="bind_mountpoints"):
        Catalog(path, "")
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(IntegrityError):
        Catalog(tmp_path / "junk.db", "")


def test_counters_arithmetic() -> None:
    a = Tally({f: i for i, f in enumerate(COUNTER_FIELDS)})
    b = Tally({f: 1 for f in COUNTER_FIELDS})
    assert (a + b)["regular"] == 1
    assert (a + b - b) == a
    c = Counters(a, b)
    assert c.total() == a + b
    rows = c.rows()
    assert [name for name, _ in rows] == list(COUNTER_NAMES)
    assert Counters.from_rows(dict(rows)) == c
    with pytest.raises(KeyError):
        Counters.from_rows(dict(rows[:-1]))
