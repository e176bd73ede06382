"""walk_rows: the lean walk of ``rcds get`` (rows as tuples, names checked, hidden rows left out)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from rcds.client.get.materialize import materialize
from rcds.client.tree.mounted import Mounted
from rcds.client.tree.rows import walk_rows
from rcds.errors import IntegrityError
from rcds.format.dirent import FLAG_HIDDEN
from rcds.format.pathhash import md5_pair
from rcds.repo import catalog as catalog_mod

from repo_tamper import Tamper
from testkit import NAME

if TYPE_CHECKING:
    from conftest import Site

pytestmark = pytest.mark.timeout(60)

C1 = "/sw/g/c1"


def _lean(m: Mounted, top: str) -> dict[str, tuple[Any, ...]]:
    """Every entry below ``top`` by path, as walk_rows gives it; checks parents come first."""
    out: dict[str, tuple[Any, ...]] = {}
    start = m.inside(m.resolve(top, follow=True))
    for path, _, rows in walk_rows(m, start):
        assert path == start.entry.path or path in out, f"{path} walked before its parent"
        assert [r[0] for r in rows] == sorted(r[0] for r in rows)  # name order
        for name, mode, size, mtime, ns, flags, hardlinks, raw, symlink, _, _ in rows:
            out[f"{path}/{name}"] = (mode, size, mtime, ns, flags, hardlinks, raw, symlink)
    return out


def _full(m: Mounted, top: str) -> dict[str, tuple[Any, ...]]:
    """The same from Mounted.walk (a Dirent per entry, each checked against its path hash)."""
    out = {}
    start = m.resolve(top, follow=True)
    for loc in m.walk(start):
        e = loc.entry
        if e.path == m.inside(start).entry.path:
            continue
        raw = e.hash.digest if e.hash is not None else None
        out[e.path] = (e.mode, e.size, e.mtime, e.mtimens, e.flags, e.hardlinks, raw, e.symlink)
    return out


@pytest.mark.parametrize("bulk", [True, False])
@pytest.mark.parametrize("top", ["/", C1, f"{C1}/a", "/sw"])
def test_walk_rows_finds_what_the_full_walk_finds(
    site: Site, monkeypatch: pytest.MonkeyPatch, bulk: bool, top: str
) -> None:
    if not bulk:  # every directory by its own query
        monkeypatch.setattr(catalog_mod, "BULK_MAX_ROWS", 0)
    with site.open().using() as m:
        lean = _lean(m, top)
        full = _full(m, top)
    assert lean == full
    if top == "/":  # across the nested catalogs, whose mount points come as their root rows
        assert f"{C1}/a/hello.txt" in lean and "/sw/g/c2/x.txt" in lean
        assert lean[C1][4] & 32  # FLAG_NESTED_ROOT


def _hide(*paths: str) -> Any:
    def edit(db: sqlite3.Connection) -> None:
        for p in paths:
            cur = db.execute(
                "UPDATE catalog SET flags = flags | ? WHERE md5path_1 = ? AND md5path_2 = ?",
                (FLAG_HIDDEN, *md5_pair(p)),
            )
            assert cur.rowcount == 1

    return edit


@pytest.mark.parametrize("bulk", [True, False])
def test_hidden_rows_and_what_is_below_them_are_left_out(
    site: Site, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, bulk: bool
) -> None:
    if not bulk:
        monkeypatch.setattr(catalog_mod, "BULK_MAX_ROWS", 0)
    Tamper(site.root, NAME).edit_catalog(C1, _hide(f"{C1}/a/empty", f"{C1}/b"))
    with site.open(cache_dir=tmp_path / "cache").using() as m:
        lean = _lean(m, C1)
    assert f"{C1}/a/hello.txt" in lean
    assert f"{C1}/a/empty" not in lean and f"{C1}/b" not in lean and f"{C1}/b/c/d.txt" not in lean


def _duplicate(path: str, other: str) -> Any:
    """Store a second row named like ``path``, in the same directory, under ``other``'s path hash."""

    def edit(db: sqlite3.Connection) -> None:
        db.execute(
            "CREATE TEMP TABLE t AS SELECT * FROM catalog WHERE md5path_1 = ? AND md5path_2 = ?",
            md5_pair(path),
        )
        db.execute("UPDATE t SET md5path_1 = ?, md5path_2 = ?, size = 1", md5_pair(other))
        assert db.execute("INSERT INTO catalog SELECT * FROM t").rowcount == 1

    return edit


def test_a_name_listed_twice_in_a_directory_is_refused(site: Site, tmp_path: Path) -> None:
    # without a path-hash check per row, two rows of one name could both be copied, one over the
    # other (or a symlink over a directory already written into): the walk refuses the directory
    Tamper(site.root, NAME).edit_catalog(C1, _duplicate(f"{C1}/a/hello.txt", f"{C1}/a/other"))
    repo = site.open(cache_dir=tmp_path / "cache")
    with repo.using() as m, pytest.raises(IntegrityError, match=r"'hello\.txt' twice"):
        _lean(m, C1)
    dest = tmp_path / "area" / "out"
    with pytest.raises(IntegrityError, match="twice"):
        materialize(repo, C1, dest)
    assert sorted(p.name for p in (tmp_path / "area").iterdir()) == ["out"]
    assert not (dest / "a" / "hello.txt").exists()  # the directory's files were not planned
