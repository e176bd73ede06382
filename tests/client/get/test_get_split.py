"""Parts of the forked split of ``rcds get`` (:mod:`rcds.client.get.split`, :mod:`.share`).

The copies through the split, held to the same contract as the other routes, are in
``test_get_routes.py``.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import cast

from rcds.client.cache.inserter import BackgroundInserter
from rcds.client.cache.local import LocalCache
from rcds.client.get.share import ensure_dir, owners
from rcds.client.tree.rows import LeanDir
from rcds.format.hashes import Algorithm, ContentHash, ObjectKind
from rcds.repo.catalog import Catalog, LeanRow


def test_the_split_is_contiguous_and_balanced() -> None:
    def row(name: str, mode: int, size: int) -> LeanRow:
        return (name, mode, size, 0, None, 0, 0, None, "", 0, 0)

    cat = cast(Catalog, None)  # not read by the split
    dirs: list[LeanDir] = [("/t", cat, [row(f"d{i}", 0o40755, 0) for i in range(8)])]
    for i in range(8):
        dirs.append((f"/t/d{i}", cat, [row(f"f{j}", 0o100644, 100_000) for j in range(10)]))
    owner, rows_of = owners(dirs, 2)
    assert owner == sorted(owner) and set(owner) == {0, 1}
    assert abs(owner.count(0) - owner.count(1)) <= 1
    assert set(rows_of) == {f"/t/d{i}" for i in range(8)}
    assert owners(dirs[:1], 3)[0] == [1]  # one directory: one worker, the others get nothing


def test_ensure_dir_replaces_a_file_or_symlink_and_never_follows_it(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "a").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "b").write_bytes(b"x")
    for name in ("a", "b", "c", "c"):
        ensure_dir(str(tmp_path / name))
        assert (tmp_path / name).is_dir() and not (tmp_path / name).is_symlink()
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_the_cache_inserter_thread_is_parked_before_a_fork_and_comes_back(tmp_path: Path) -> None:
    cache = LocalCache(tmp_path / "cache")
    inserter = BackgroundInserter(cache)
    plain = b"some content"
    h = ContentHash(Algorithm.SHA1, hashlib.sha1(plain).digest())
    inserter.put(h, ObjectKind.FILE, plain)
    assert any(t.name == "rcds-cache-insert" for t in threading.enumerate())
    inserter.park()
    assert not any(t.name == "rcds-cache-insert" for t in threading.enumerate())
    assert cache.path_of(h, ObjectKind.FILE) is not None  # committed first
    other = b"more content"
    h2 = ContentHash(Algorithm.SHA1, hashlib.sha1(other).digest())
    inserter.put(h2, ObjectKind.FILE, other)  # a new thread
    inserter.flush()
    assert cache.path_of(h2, ObjectKind.FILE) is not None
    inserter.close()
    cache.close()
