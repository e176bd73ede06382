"""resolve_many: batched resolution gives exactly what resolving one path at a time gives."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from rcds.client.tree.mounted import Located
from rcds.client.tree.resolve_many import resolve_many
from rcds.errors import NotFoundError
from rcds.repo.catalog import Catalog

from clientkit import C1, C2, FILES, LINKS

if TYPE_CHECKING:
    from conftest import Site

pytestmark = pytest.mark.timeout(60)

MIXED = [
    f"{C1}/a/hello.txt",
    f"{C1}/a/link",  # symlink at the end: followed
    f"{C1}/alib/run.sh",  # symlink in the middle
    f"{C1}/abs",  # absolute symlink into the repository
    f"{C1}/b/c/d.txt",  # directories not seen yet, three levels
    f"{C2}/x.txt",  # the second nested catalog
    C1,  # a nested catalog mount point itself
    "/sw",
    f"{C1}/a/../a/hl",  # not canonical
    f"{C1}//a/./empty",
    "sw/g/c1/a/run.sh",  # relative: from the root
    f"{C1}/a/hello.txt",  # twice
]


def _key(loc: Located) -> tuple[object, str]:
    return loc.entry, loc.catalog.mountpoint


def test_batched_answers_equal_one_by_one(site: Site) -> None:
    one, many = site.open(cache_dir=site.work / "c1"), site.open(cache_dir=site.work / "c2")
    with one.using() as a, many.using() as b:
        expected = [_key(a.resolve(p)) for p in MIXED]
        assert [_key(loc) for loc in resolve_many(b, MIXED)] == expected
        # and resolve() afterwards answers from what the batch found
        assert [_key(b.resolve(p)) for p in MIXED] == expected
        assert a.resolve(MIXED[1]).entry.path == f"{C1}/a/hello.txt"
        assert a.resolve(MIXED[2]).entry.path == f"{C1}/a/run.sh"


def test_every_file_and_link_of_the_tree(site: Site) -> None:
    paths = sorted(FILES) + sorted(p for p in LINKS if "outside" not in p)
    one, many = site.open(cache_dir=site.work / "c1"), site.open(cache_dir=site.work / "c2")
    with one.using() as a, many.using() as b:
        assert [_key(loc) for loc in resolve_many(b, paths)] == [_key(a.resolve(p)) for p in paths]


@pytest.mark.parametrize(
    "bad",
    [f"{C1}/a/missing", f"{C1}/nodir/x", f"{C1}/a/hello.txt/x", f"{C1}/outside", "/nothing"],
)
def test_the_first_bad_path_raises_as_resolve_does(site: Site, bad: str) -> None:
    one, many = site.open(cache_dir=site.work / "c1"), site.open(cache_dir=site.work / "c2")
    with one.using() as a, many.using() as b:
        with pytest.raises(NotFoundError) as expected:
            a.resolve(bad)
        with pytest.raises(NotFoundError) as got:
            resolve_many(b, [f"{C1}/a/hello.txt", bad, f"{C1}/b/missing-too"])
    assert str(got.value) == str(expected.value)


def test_a_few_queries_instead_of_one_per_component(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"lookup": 0, "lookup_many": 0}
    single, batched = Catalog.lookup, Catalog.lookup_many

    def lookup(self: Catalog, path: str) -> object:
        calls["lookup"] += 1
        return single(self, path)

    def lookup_many(self: Catalog, paths: object) -> object:
        calls["lookup_many"] += 1
        return batched(self, paths)  # type: ignore[arg-type]

    monkeypatch.setattr(Catalog, "lookup", lookup)
    monkeypatch.setattr(Catalog, "lookup_many", lookup_many)
    repo = site.open()
    with repo.using() as m:
        m.directory("")
        before = dict(calls)
        found = resolve_many(m, [f"{C1}/a/hello.txt", f"{C1}/a/run.sh", f"{C1}/b/c/d.txt", f"{C2}/x.txt"])
    assert [loc.entry.path for loc in found] == [
        f"{C1}/a/hello.txt",
        f"{C1}/a/run.sh",
        f"{C1}/b/c/d.txt",
        f"{C2}/x.txt",
    ]
    assert calls["lookup"] - before["lookup"] <= 2  # the nested catalogs' root rows, when entered
    # levels /sw, /sw/g, /sw/g/c1|c2, /sw/g/c1/a|b, /sw/g/c1/b/c; then the files of two catalogs
    assert calls["lookup_many"] - before["lookup_many"] <= 8


def test_lookup_many_matches_lookup(site: Site) -> None:
    repo = site.open()
    with repo.using() as m:
        cat = m.directory(C1).catalog
        paths = [f"{C1}/a/hello.txt", f"{C1}/a/link", f"{C1}/b", f"{C1}/nothing", C2]
        found = cat.lookup_many([f"{C1}/none{i}" for i in range(900)] + paths)  # three queries
    assert (
        set(found)
        == {p for p in paths if cat.lookup(p) is not None}
        == {
            f"{C1}/a/hello.txt",
            f"{C1}/a/link",
            f"{C1}/b",
        }
    )
    assert all(found[p] == cat.lookup(p) for p in found)
