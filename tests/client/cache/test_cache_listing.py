"""``CacheListing`` and ``CachedSource.presence``: the cache asked about many objects in a row."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from rcds.client.cache import listing as cache_listing
from rcds.client.cache.listing import CacheListing
from rcds.client.cache.local import LocalCache, object_name
from rcds.client.cache.source import CachedSource
from rcds.format.hashes import ContentHash, ObjectKind
from rcds.net.fetcher import Fetcher

FILE = ObjectKind.FILE


def _objects(n: int) -> list[tuple[ContentHash, bytes]]:
    out = []
    for i in range(n):
        data = hashlib.sha256(str(i).encode()).digest() * 4
        out.append((ContentHash.of(data), data))
    return out


@pytest.fixture
def cache(tmp_path: Path) -> LocalCache:
    return LocalCache(tmp_path / "cache")


@pytest.mark.parametrize("list_max", [cache_listing.LIST_MAX_BYTES, 0])  # listed whole, or stat'ed
def test_answers_match_the_cache(cache: LocalCache, list_max: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_listing, "LIST_MAX_BYTES", list_max)
    objects = _objects(600)  # ~2 per bucket: both kinds of answer in most buckets
    for h, data in objects[::2]:
        cache.insert_bytes(h, FILE, data)
    listing = CacheListing(str(cache.dir))
    answers = [object_name(h, FILE) in listing for h, _ in objects]
    assert answers == [cache.contains(h, FILE) for h, _ in objects]
    assert answers == [i % 2 == 0 for i in range(len(objects))]
    h, _ = objects[0]
    assert object_name(h, ObjectKind.CATALOG) not in listing  # another kind: another name


def test_the_listing_is_a_snapshot_per_directory(cache: LocalCache) -> None:
    (a, data_a), (b, data_b) = _objects(2)
    listing = CacheListing(str(cache.dir))
    assert object_name(a, FILE) not in listing  # its directory is listed now
    cache.insert_bytes(a, FILE, data_a)
    assert object_name(a, FILE) not in listing  # arrived after: counts as absent
    if a.hex[:2] != b.hex[:2]:
        cache.insert_bytes(b, FILE, data_b)
        assert object_name(b, FILE) in listing  # its directory was not listed yet
    assert object_name(a, FILE) in CacheListing(str(cache.dir))


def test_a_missing_cache_directory_holds_nothing(tmp_path: Path) -> None:
    ((h, _),) = _objects(1)
    assert object_name(h, FILE) not in CacheListing(str(tmp_path / "nowhere"))


def test_presence_counts_objects_still_queued_for_the_cache(cache: LocalCache) -> None:
    source = CachedSource(Fetcher(["http://127.0.0.1:9/unused"]), cache)
    try:
        (queued, data), (absent, _) = _objects(2)
        source.inserter.put(queued, FILE, data)
        has = source.presence()
        assert has(queued, FILE) and not has(absent, FILE)
        assert has(queued, FILE) == source.is_cached(queued, FILE)
        assert has(absent, FILE) == source.is_cached(absent, FILE)
    finally:
        source.close()


@pytest.mark.parametrize("list_max", [cache_listing.LIST_MAX_BYTES, 0])
def test_presence_skips_empty_directories_and_finds_the_rest(
    cache: LocalCache, list_max: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache_listing, "LIST_MAX_BYTES", list_max)
    objects = _objects(600)
    for h, data in objects[::3]:
        cache.insert_bytes(h, FILE, data)
    listing = CacheListing(str(cache.dir))
    for h, _ in objects:  # an empty directory never holds the object; a large one is not called empty
        if listing.bucket_is_empty(h.digest[0]):
            assert not cache.contains(h, FILE) and list_max
    source = CachedSource(Fetcher(["http://127.0.0.1:9/unused"]), cache)
    try:
        has = source.presence()
        assert [has(h, FILE) for h, _ in objects] == [i % 3 == 0 for i in range(len(objects))]
    finally:
        source.close()
