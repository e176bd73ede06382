"""How the client uses the local cache: batched inserts in the background, batched LRU updates."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from rcds.client.cache.inserter import BackgroundInserter
from rcds.client.cache.local import LocalCache, object_name
from rcds.format.hashes import ContentHash, ObjectKind

if TYPE_CHECKING:
    from conftest import Site

pytestmark = pytest.mark.timeout(60)


def blob(i: int, size: int = 10_000) -> tuple[ContentHash, ObjectKind, bytes]:
    data = bytes([i % 256]) * size
    return ContentHash.of(data + i.to_bytes(4, "little")), ObjectKind.FILE, data


def test_insert_many_keeps_the_quota(tmp_path: Path) -> None:
    with LocalCache(tmp_path / "c", 50_000) as cache:
        assert cache.insert_many([blob(i) for i in range(3)]) == 3
        assert cache.size() == 30_000
        # A batch that overflows evicts the oldest; objects above the quota are skipped.
        stored = cache.insert_many([blob(i) for i in range(3, 9)] + [blob(99, 60_000)])
        assert cache.size() <= 50_000
        assert 0 < stored <= 6
        assert not cache.contains(blob(0)[0], ObjectKind.FILE)
        assert not cache.contains(blob(99)[0], ObjectKind.FILE)
        assert cache.check() == []
        assert not list((tmp_path / "c" / "txn").iterdir())
        for h, kind, data in [blob(8)]:
            f = cache.open(h, kind)
            assert f is not None and f.read() == data
            f.close()


def test_background_inserter_serves_queued_objects_and_commits_them(tmp_path: Path) -> None:
    with LocalCache(tmp_path / "c") as cache:
        ins = BackgroundInserter(cache, max_pending=25_000)
        items = [blob(i) for i in range(20)]
        for h, kind, data in items:
            ins.put(h, kind, data)  # blocks while more than 25 kB wait
            got = ins.get(h, kind)
            assert got is None or got == data
        ins.flush()
        assert all(cache.contains(h, k) for h, k, _ in items)
        assert ins.get(items[0][0], ObjectKind.FILE) is None
        ins.close()
        ins.put(*blob(50))  # ignored after close
        assert not cache.contains(blob(50)[0], ObjectKind.FILE)
        assert cache.check() == []


def test_background_inserter_commits_in_few_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The thread is not woken per object: objects put in a burst go in one or two transactions."""
    with LocalCache(tmp_path / "c") as cache:
        calls: list[int] = []
        real = cache.insert_many

        def counting(items: list[tuple[ContentHash, ObjectKind, bytes]]) -> int:
            calls.append(len(items))
            return real(items)

        monkeypatch.setattr(cache, "insert_many", counting)
        ins = BackgroundInserter(cache)
        items = [blob(i, 1000) for i in range(100)]
        for h, kind, data in items:
            ins.put(h, kind, data)
        assert all(ins.get(h, kind) == data or cache.contains(h, kind) for h, kind, data in items)
        ins.flush()
        assert sum(calls) == 100 and len(calls) <= 3
        assert all(cache.contains(h, k) for h, k, _ in items)
        # a lone object is committed after a short delay, without flush()
        h, kind, data = blob(500, 1000)
        ins.put(h, kind, data)
        for _ in range(200):
            if cache.contains(h, kind):
                break
            time.sleep(0.01)
        assert cache.contains(h, kind)
        ins.close()
        assert cache.check() == []


def test_kept_objects_are_served_once_from_memory_after_their_commit(tmp_path: Path) -> None:
    with LocalCache(tmp_path / "c") as cache:
        ins = BackgroundInserter(cache, max_pending=50_000)
        kept = [blob(i) for i in range(3)]
        for h, kind, data in kept:
            ins.put(h, kind, data, keep=True)
        plain = blob(9)
        ins.put(*plain)
        ins.flush()
        assert all(cache.contains(h, k) for h, k, _ in [*kept, plain])
        assert ins.get(plain[0], plain[1]) is None and ins.take(plain[0], plain[1]) is None
        h, kind, data = kept[0]
        assert ins.get(h, kind) == data
        assert ins.take(h, kind) == (data, True)  # committed, handed out once
        assert ins.take(h, kind) is None and ins.get(h, kind) is None
        # kept bytes give way to new ones: the oldest go first, the bound holds
        for i in range(10, 16):
            ins.put(*blob(i))
        assert ins.get(kept[1][0], kept[1][1]) is None
        assert ins._pending_bytes + ins._kept_bytes <= 50_000 + 10_000
        ins.flush()
        ins.close()
        assert ins.get(kept[2][0], kept[2][1]) is None  # close() forgets them
        assert cache.check() == []


def test_cache_hits_update_the_lru_order_in_batches(site: Site) -> None:
    repo = site.open()
    paths = [p for p, d in site.files.items() if d and "big" not in p]
    for p in paths:
        repo.read_bytes(p)
    repo.source.flush()
    first = repo.pieces(paths[0])[0].hash
    name = object_name(first, ObjectKind.FILE)
    before = {e.name: e.acseq for e in repo.cache.entries()}
    repo.read_bytes(paths[0])  # a hit: the file is opened directly, the LRU update is queued
    assert {e.name: e.acseq for e in repo.cache.entries()}[name] == before[name]
    repo.source.flush()
    after = {e.name: e.acseq for e in repo.cache.entries()}
    assert after[name] == max(after.values()) > before[name]
    # A cache file with the wrong size is quarantined and fetched again.
    path = repo.cache.dir / name
    os.truncate(path, 1)
    assert repo.read_bytes(paths[0]) == site.files[paths[0]]
    assert list((repo.cache.dir / "quarantaine").iterdir())


def test_background_inserter_survives_one_object_put_twice_while_waiting_for_room(tmp_path: Path) -> None:
    """Two threads that put the same object while both wait for room queue it once: the inserter
    thread keeps running (it used to die on the duplicate, leaving every later put blocked)."""
    import fcntl
    import threading

    with LocalCache(tmp_path / "c") as cache:
        ins = BackgroundInserter(cache, max_pending=15_000)
        lock_fd = os.open(tmp_path / "c" / "lock_cachemgr", os.O_RDWR)
        fcntl.flock(lock_fd, fcntl.LOCK_EX)  # the inserter's first commit waits for this
        try:
            ins.put(*blob(0))
            ins.put(*blob(1))
            twins = [threading.Thread(target=ins.put, args=blob(2)) for _ in range(2)]
            for t in twins:
                t.start()
            time.sleep(0.3)
            assert all(t.is_alive() for t in twins)  # both wait for room
        finally:
            fcntl.flock(lock_fd, fcntl.LOCK_UN)
            os.close(lock_fd)
        for t in twins:
            t.join(10)
        assert not any(t.is_alive() for t in twins)
        later = threading.Thread(target=lambda: [ins.put(*blob(i)) for i in range(3, 8)])
        later.start()
        later.join(10)
        assert not later.is_alive()
        ins.flush(10)
        assert all(cache.contains(blob(i)[0], ObjectKind.FILE) for i in range(8))
        assert ins.errors == 0
        ins.close()
        assert cache.check() == []
