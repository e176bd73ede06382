"""Mounted.walk (whole catalogs read at once), listing and the listed-directory shortcut of resolve."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from rcds.client.tree.mounted import Located, Mounted
from rcds.errors import NotFoundError
from rcds.format.dirent import FLAG_HIDDEN, Dirent
from rcds.repo import catalog as catalog_mod

if TYPE_CHECKING:
    from conftest import Site

pytestmark = pytest.mark.timeout(60)

C1 = "/sw/g/c1"
C2 = "/sw/g/c2"


def _reference_walk(m: Mounted, top: Located) -> list[Located]:
    """The walk as it was written before whole-catalog reads: one listing per directory."""
    top = m.inside(top)
    out = [top]
    if not top.entry.is_dir:
        return out
    stack = [iter(m.listdir(top))]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            continue
        if item.entry.is_nested_mountpoint:
            item = m.enter(item)
        out.append(item)
        if item.entry.is_dir:
            stack.append(iter(m.listdir(item)))
    return out


def _key(locs: list[Located]) -> list[tuple[object, str]]:
    return [(loc.entry, loc.catalog.mountpoint) for loc in locs]


@pytest.mark.parametrize("bulk", [True, False])
@pytest.mark.parametrize(
    "top", ["/", "/sw", "/sw/g", C1, f"{C1}/a", f"{C1}/b", f"{C1}/a/hello.txt", f"{C1}/a/link", C2]
)
def test_walk_matches_a_walk_by_listings(
    site: Site, monkeypatch: pytest.MonkeyPatch, top: str, bulk: bool
) -> None:
    if not bulk:  # every catalog too large to be read whole: a query per directory
        monkeypatch.setattr(catalog_mod, "BULK_MAX_ROWS", 0)
    repo = site.open()
    with repo.using() as m:
        start = m.resolve(top, follow=False)
        walked = list(m.walk(start))
        assert _key(walked) == _key(_reference_walk(m, start))
    paths = [loc.entry.path for loc in walked]
    assert len(paths) == len(set(paths))
    if top == "/":
        assert set(site.files) <= set(paths) and set(site.links) <= set(paths)
        assert paths.index(C1) < paths.index(f"{C1}/a") < paths.index(f"{C1}/a/big.bin") < paths.index(C2)
        c1 = next(loc for loc in walked if loc.entry.path == C1)
        assert c1.entry.is_nested_root and c1.catalog.mountpoint == C1  # entered, not the mount point row
        hl = [loc.entry for loc in walked if loc.entry.path in (f"{C1}/a/hello.txt", f"{C1}/a/hl")]
        assert len(hl) == 2 and hl[0].hardlink_group == hl[1].hardlink_group != 0
        big = next(loc.entry for loc in walked if loc.entry.path == f"{C1}/a/big.bin")
        assert big.is_chunked


def test_walk_enters_nested_catalogs_only_when_it_reaches_them(site: Site) -> None:
    repo = site.open()
    with repo.using() as m:
        walk = m.walk(m.resolve("/sw/g", follow=True))
        assert site.fetched("C") == 1
        seen = []
        for loc in walk:
            seen.append(loc.entry.path)
            if loc.entry.path == f"{C1}/a":
                break
        assert site.fetched("C") == 2  # c1 only
        assert seen[:3] == ["/sw/g", C1, f"{C1}/.cvmfscatalog"]
        rest = [loc.entry.path for loc in walk]
        assert rest[-3:] == [C2, f"{C2}/.cvmfscatalog", f"{C2}/x.txt"]
        assert site.fetched("C") == 3


def test_walk_from_a_catalog_root_reads_it_whole(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = site.open()
    calls: list[str] = []
    real_listdir = catalog_mod.Catalog.listdir

    def listdir(self: catalog_mod.Catalog, path: str) -> list[Dirent]:
        calls.append(path)
        return real_listdir(self, path)

    monkeypatch.setattr(catalog_mod.Catalog, "listdir", listdir)
    with repo.using() as m:
        assert len(list(m.walk(m.resolve(C1, follow=True)))) > 10
        assert calls == []  # one query for the catalog, none per directory
        list(m.walk(m.resolve(f"{C1}/a", follow=True)))  # a subtree: listed directory by directory
        assert calls == [f"{C1}/a"]


PATHS = [
    f"{C1}/a/hello.txt",
    f"{C1}/a/link",
    f"{C1}/a/./hello.txt",
    f"{C1}/a//hello.txt",
    f"{C1}/a/hello.txt/",
    f"{C1}/b/../a/hello.txt",
    f"{C1}/a/../a/link",
    f"{C1}/alib/hello.txt",
    f"{C1}/alib",
    f"{C1}/a",
    f"{C1}/a/",
    "sw/g/c1/a/hello.txt",
    "/sw",
    "/sw/g/c2",
    "c1",
]


@pytest.mark.parametrize("follow", [True, False])
def test_resolve_of_listed_directories_answers_as_a_full_resolution(site: Site, follow: bool) -> None:
    repo = site.open()
    with repo.using() as m:
        for d in ("/", "/sw", "/sw/g", C1, f"{C1}/a", f"{C1}/b"):
            m.listdir(m.resolve(d, follow=True))
        for path in PATHS:
            try:
                expected = m._resolve(path, follow)
            except NotFoundError as exc:
                with pytest.raises(NotFoundError, match="no such file"):
                    m.resolve(path, follow=follow)
                assert "no such file" in str(exc)
                continue
            got = m.resolve(path, follow=follow)
            assert (got.entry, got.catalog) == (expected.entry, expected.catalog), path
        with pytest.raises(NotFoundError, match="no such file"):
            m.resolve(f"{C1}/a/missing", follow=follow)
        link = m.resolve(f"{C1}/a/link", follow=follow)
        assert link.entry.is_symlink != follow


@pytest.mark.parametrize("bulk", [True, False])
def test_hidden_rows_are_neither_listed_nor_walked(
    site: Site, monkeypatch: pytest.MonkeyPatch, bulk: bool
) -> None:
    if not bulk:
        monkeypatch.setattr(catalog_mod, "BULK_MAX_ROWS", 0)
    real_entries = catalog_mod._entries

    def entries(rows: list[catalog_mod.Row], parent: str, what: str) -> list[Dirent]:
        out = real_entries(rows, parent, what)
        for d in out:
            if d.name in ("empty", "b"):  # as if the catalog had them hidden
                d.flags |= FLAG_HIDDEN
        return out

    monkeypatch.setattr(catalog_mod, "_entries", entries)
    repo = site.open()
    with repo.using() as m:
        a = m.resolve(f"{C1}/a", follow=True)
        assert [loc.entry.name for loc in m.listdir(a)] == ["big.bin", "hello.txt", "hl", "link", "run.sh"]
        assert m.resolve(f"{C1}/a/empty").entry.is_hidden  # still found by its path
        walked = [loc.entry.path for loc in m.walk(m.resolve(C1, follow=True))]
    assert f"{C1}/a/empty" not in walked and f"{C1}/b" not in walked and f"{C1}/b/c/d.txt" not in walked
    assert f"{C1}/a/hello.txt" in walked
    with repo.using() as m, pytest.raises(NotFoundError, match="not a directory"):
        m.listdir(m.resolve(f"{C1}/a/hello.txt", follow=True))
