"""``Repository.prefetch`` (rcds.client.fetch.prefetch): download on the calling thread, inflate on another.

Real engine servers on loopback, the tree of many small files of ``getkit``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from rcds.errors import IntegrityError
from rcds.format.compression import inflate_checked
from rcds.format.hashes import ContentHash, ObjectKind

from getkit import MANY, content, object_of

if TYPE_CHECKING:
    from conftest import Site

pytestmark = pytest.mark.timeout(120)


def _paths(many: dict[str, bytes]) -> list[str]:
    return [f"{MANY}/{rel}" for rel in many]


def test_prefetch_caches_everything_and_reads_need_no_request(site: Site, many: dict[str, bytes]) -> None:
    repo = site.open()
    n = repo.prefetch(_paths(many))
    assert n == len(set(many.values()) - {b""})
    assert repo.source.stats["network"] >= n
    before = site.fetched("data/")
    for p in _paths(many):
        assert repo.read_bytes(p) == many[p[len(MANY) + 1 :]]
    repo.source.flush()
    assert site.fetched("data/") == before
    assert repo.cache.check() == []
    assert not any(t.name == "rcds-inflate" for t in threading.enumerate())


def test_a_corrupt_object_is_fetched_again_from_the_other_server(
    site: Site, many: dict[str, bytes], tmp_path: Path
) -> None:
    bad = site.copy("bad")
    obj = object_of(site, content(77))
    target = bad / obj.relative_to(site.public)
    target.write_bytes(target.read_bytes()[:-2] + b"zz")  # the hash no longer matches
    repo = site.open([site.serve(bad), site.urls[0]], cache_dir=tmp_path / "cache")
    repo.prefetch(_paths(many))
    for rel, data in many.items():
        assert repo.read_bytes(f"{MANY}/{rel}") == data


def test_bytes_that_do_not_inflate_go_the_ordinary_way(
    site: Site, many: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hash-checked object that does not inflate right is fetched once more by the ordinary path,
    which checks it in full and fails over (here the second look finds it fine)."""
    repo = site.open()
    victim = repo.pieces(f"{MANY}/d1/f008.txt")[0].hash
    seen: list[int] = []

    def flaky(raw: bytes, *, size: int | None = None) -> bytes:
        if ContentHash.of(raw) == victim and not seen:
            seen.append(1)
            raise IntegrityError("test: does not inflate")
        return inflate_checked(raw, size=size)

    monkeypatch.setattr("rcds.client.fetch.prefetch.inflate_checked", flaky)
    name = victim.object_name(ObjectKind.FILE)
    repo.prefetch(_paths(many))
    assert seen and site.fetched(name) == 2
    assert repo.read_bytes(f"{MANY}/d1/f008.txt") == many["d1/f008.txt"]


def test_an_object_that_never_inflates_is_an_integrity_error(
    site: Site, many: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = site.open()
    victim = repo.pieces(f"{MANY}/d2/f009.txt")[0].hash
    monkeypatch.setattr(
        "rcds.client.cache.source.verify_object",
        lambda raw, h, **kw: (_ for _ in ()).throw(IntegrityError("test: corrupt", "x")),
    )

    def broken(raw: bytes, *, size: int | None = None) -> bytes:
        if ContentHash.of(raw) == victim:
            raise IntegrityError("test: does not inflate")
        return inflate_checked(raw, size=size)

    monkeypatch.setattr("rcds.client.fetch.prefetch.inflate_checked", broken)
    with pytest.raises(IntegrityError) as exc:
        repo.prefetch(_paths(many))
    assert victim.object_name(ObjectKind.FILE) in str(exc.value)
    repo.source.flush()
    assert not repo.source.is_cached(victim, ObjectKind.FILE)  # nothing unverified was kept
    assert repo.cache.check() == []


def test_a_failure_on_the_inflating_thread_reaches_the_caller(
    site: Site, many: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = site.open()

    def boom(*a: object, **kw: object) -> None:
        raise RuntimeError("test: the cache is gone")

    monkeypatch.setattr(repo.source.inserter, "commit", boom)
    with pytest.raises(RuntimeError, match="cache is gone"):
        repo.prefetch(_paths(many))
    assert not any(t.name == "rcds-inflate" for t in threading.enumerate())


def test_prefetch_through_the_alien_cache(site: Site, many: dict[str, bytes], tmp_path: Path) -> None:
    alien = tmp_path / "alien"
    first = site.open(cache_dir=tmp_path / "c1", alien_cache=alien)
    n = first.prefetch(_paths(many))
    first.source.flush()
    assert len(list(alien.glob("??/*"))) >= n
    second = site.open(cache_dir=tmp_path / "c2", alien_cache=alien)
    before, from_alien = site.fetched("data/"), second.source.stats["alien"]  # (the catalogs)
    assert second.prefetch(_paths(many)) == n
    assert n <= second.source.stats["alien"] - from_alien <= n + 1  # and the nested catalog of MANY
    assert site.fetched("data/") == before
    for rel, data in list(many.items())[:30]:
        assert second.read_bytes(f"{MANY}/{rel}") == data
