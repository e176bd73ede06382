"""Listing catalog rows: Catalog.listdir, the whole-catalog CatalogTree and their checks."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

import pytest

from rcds.errors import IntegrityError
from rcds.format.catalog_schema import Tally
from rcds.format.dirent import (
    FLAG_DIR,
    FLAG_HIDDEN,
    FLAG_LINK,
    FLAG_NESTED_ROOT,
    FLAG_SPECIAL,
    Chunk,
    Dirent,
    file_flags,
    link_count_field,
)
from rcds.format.hashes import Algorithm, ContentHash
from rcds.format.pathhash import md5_pair
from rcds.publish.catalog_rw import WritableCatalog
from rcds.repo import catalog as catalog_mod
from rcds.repo.catalog import Catalog

TOP = "/sw/cid"
NAMES = ["a.txt", "Z", "é.txt", "z", "\U0001f600", "ﬀ", "\ufffd", "~", "\u00ff", "\u0100", "b c"]
"""Names whose code point order and UTF-8 byte order would differ if either were done wrong."""


T = 1_700_000_000
FILE = file_flags(Algorithm.SHA1)


def _file(path: str, data: bytes = b"x", *, hardlinks: int = 1, **kw: int | bytes) -> Dirent:
    name = path.rsplit("/", 1)[1]
    d = Dirent(path, name, stat.S_IFREG | 0o644, len(data), T, FILE, hardlinks, ContentHash.of(data))
    for key, value in kw.items():
        setattr(d, key, value)
    return d


def _dir(path: str, links: int = 2) -> Dirent:
    return Dirent(path, path.rsplit("/", 1)[1], stat.S_IFDIR | 0o755, 4096, T, FLAG_DIR, hardlinks=links)


def _rows() -> list[Dirent]:
    """Every row below the catalog root: all kinds of entry, odd names, optional columns."""
    rmd = ContentHash.of(b"rmd", Algorithm.RMD160)
    rows = [_file(f"{TOP}/{n}", n.encode()) for n in NAMES]
    rows += [
        _dir(f"{TOP}/d", 3),
        _dir(f"{TOP}/d/sub"),
        _dir(f"{TOP}/d/empty"),
        _file(f"{TOP}/d/sub/deep", b"deep", uid=1000, gid=2000, mtimens=123_456_789, xattr=b"\x01xattr"),
        Dirent(f"{TOP}/d/rmd", "rmd", stat.S_IFREG | 0o600, 3, 5, file_flags(Algorithm.RMD160), hash=rmd),
        Dirent(f"{TOP}/d/big", "big", stat.S_IFREG | 0o644, 30, 1, file_flags(Algorithm.SHA1, chunked=True)),
        Dirent(f"{TOP}/d/empty.txt", "empty.txt", stat.S_IFREG | 0o644, 0, 1, FILE),
        Dirent(f"{TOP}/d/link", "link", stat.S_IFLNK | 0o777, 5, 1, FLAG_LINK, symlink="rmd/x"),
        Dirent(f"{TOP}/d/tty", "tty", stat.S_IFCHR | 0o620, 0, 1, FLAG_SPECIAL),
        Dirent(f"{TOP}/d/fifo", "fifo", stat.S_IFIFO | 0o644, 0, 1, FLAG_SPECIAL),
        _file(f"{TOP}/d/hl1", b"hl", hardlinks=link_count_field(2, 7)),
        _file(f"{TOP}/d/hl2", b"hl", hardlinks=link_count_field(2, 7)),
        Dirent(f"{TOP}/d/.hidden", ".hidden", stat.S_IFREG | 0o644, 0, 1, FILE | FLAG_HIDDEN),
    ]
    return rows


@pytest.fixture
def cat_path(tmp_path: Path) -> Path:
    path = tmp_path / "cat.db"
    root = Dirent(TOP, "cid", stat.S_IFDIR | 0o755, 4096, T, FLAG_DIR | FLAG_NESTED_ROOT, hardlinks=3)
    w = WritableCatalog.create(path, root)
    for d in _rows():
        w.insert(d)
    w.insert_chunks(f"{TOP}/d/big", [Chunk(0, 20, ContentHash.of(b"1")), Chunk(20, 10, ContentHash.of(b"2"))])
    w.finalize(revision=1, previous=None, last_modified=1, subtree=Tally())
    w.close()
    return path


def _expected(parent: str) -> list[Dirent]:
    children = [d for d in _rows() if d.path.rsplit("/", 1)[0] == parent]
    return sorted(children, key=lambda d: d.name.encode("utf-8"))


def _directories() -> list[str]:
    return [TOP] + [d.path for d in _rows() if d.is_dir]


def test_listdir_reads_every_column_in_byte_order(cat_path: Path) -> None:
    with Catalog(cat_path, TOP) as cat:
        for path in _directories():
            assert cat.listdir(path) == _expected(path), path
        assert cat.listdir(f"{TOP}/nothing") == []
        assert cat.listdir(f"{TOP}/a.txt") == []
        deep = cat.listdir(f"{TOP}/d/sub")[0]
        assert (deep.uid, deep.gid, deep.mtimens, deep.xattr) == (1000, 2000, 123_456_789, b"\x01xattr")
        rmd = cat.lookup(f"{TOP}/d/rmd")
        assert rmd is not None and rmd.hash is not None and rmd.hash.algorithm is Algorithm.RMD160
        assert [d.name for d in cat.listdir(TOP)][:2] == ["Z", "a.txt"]


def test_tree_lists_like_listdir(cat_path: Path) -> None:
    with Catalog(cat_path, TOP) as cat:
        tree = cat.tree()
        assert tree is not None
        for path in _directories():
            assert tree.listdir(path) == cat.listdir(path), path
            assert tree.listdir(path) == cat.listdir(path)  # listing twice gives the same
        assert tree.listdir(f"{TOP}/nothing") == []
        assert tree.listdir(f"{TOP}/d/sub/deep") == []


def test_tree_is_refused_for_very_large_catalogs(cat_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(catalog_mod, "BULK_MAX_ROWS", len(_rows()))  # the root row makes one more
    with Catalog(cat_path, TOP) as cat:
        assert cat.tree() is None
    monkeypatch.setattr(catalog_mod, "BULK_MAX_ROWS", len(_rows()) + 1)
    with Catalog(cat_path, TOP) as cat:
        assert cat.tree() is not None


def test_lookup_and_iter_entries(cat_path: Path) -> None:
    rows = {d.path: d for d in _rows()}
    with Catalog(cat_path, TOP) as cat:
        for path, d in rows.items():
            assert cat.lookup(path) == d
        assert cat.lookup(f"{TOP}/nothing") is None
        root = cat.lookup(TOP)
        assert root is not None and root.name == "cid" and root.is_nested_root
        seen = {}
        for entry, own, parent in cat.iter_entries():
            seen[entry.name] = (entry, own, parent)
        for path, d in rows.items():
            entry, own, parent = seen[d.name]
            assert own == md5_pair(path)
            assert parent == md5_pair(path.rsplit("/", 1)[0])
            assert entry.path == "" and entry.mode == d.mode and entry.hash == d.hash


def test_a_row_under_the_wrong_path_hash_is_refused(cat_path: Path) -> None:
    with sqlite3.connect(cat_path) as db:  # rename a row without rehashing it
        db.execute("UPDATE catalog SET name = 'renamed' WHERE name = 'deep'")
    with Catalog(cat_path, TOP) as cat:
        with pytest.raises(IntegrityError, match="wrong path hash"):
            cat.listdir(f"{TOP}/d/sub")
        tree = cat.tree()
        assert tree is not None
        with pytest.raises(IntegrityError, match="wrong path hash"):
            tree.listdir(f"{TOP}/d/sub")
        assert tree.listdir(f"{TOP}/d") == _expected(f"{TOP}/d")  # the other directories are fine


@pytest.mark.parametrize("value", [b"short", "a" * 20, 7])
def test_a_malformed_hash_column_is_refused(cat_path: Path, value: object) -> None:
    with sqlite3.connect(cat_path) as db:
        db.execute("UPDATE catalog SET hash = ? WHERE name = 'deep'", (value,))
    with Catalog(cat_path, TOP) as cat:
        with pytest.raises(IntegrityError, match="malformed hash"):
            cat.listdir(f"{TOP}/d/sub")
        with pytest.raises(IntegrityError, match="malformed hash"):
            cat.lookup(f"{TOP}/d/sub/deep")


def test_unknown_hash_algorithm_is_refused(cat_path: Path) -> None:
    with sqlite3.connect(cat_path) as db:
        db.execute("UPDATE catalog SET flags = flags | (5 << 8) WHERE name = 'deep'")
    with Catalog(cat_path, TOP) as cat, pytest.raises(IntegrityError, match="algorithm"):
        cat.listdir(f"{TOP}/d/sub")


def test_columns_are_typed_as_stock_reads_them(cat_path: Path) -> None:
    """NULL numbers read as 0 and NULL texts as empty, numeric texts as numbers; a NULL
    ``mtimens`` stays absent and a non-blob ``xattr`` is ignored."""
    with sqlite3.connect(cat_path) as db:
        db.execute(
            "UPDATE catalog SET uid = NULL, gid = '42', symlink = NULL, mtimens = NULL, xattr = 'text', "
            "mtime = 12.0 WHERE name = 'deep'"
        )
    with Catalog(cat_path, TOP) as cat:
        (deep,) = cat.listdir(f"{TOP}/d/sub")
    assert (deep.uid, deep.gid, deep.symlink, deep.mtimens, deep.xattr) == (0, 42, "", None, None)
    assert deep.mtime == 12
    assert all(type(v) is int for v in (deep.mode, deep.size, deep.mtime, deep.flags, deep.hardlinks))


def test_catalog_without_mtimens_column(cat_path: Path) -> None:
    with sqlite3.connect(cat_path) as db:
        db.execute("ALTER TABLE catalog DROP COLUMN mtimens")
    with Catalog(cat_path, TOP) as cat:
        (deep,) = cat.listdir(f"{TOP}/d/sub")
        assert deep.mtimens is None and deep.uid == 1000
        tree = cat.tree()
        assert tree is not None and tree.listdir(f"{TOP}/d/sub") == [deep]
