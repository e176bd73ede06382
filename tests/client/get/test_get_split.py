"""``rcds get`` by forked workers that plan their own shares (:mod:`rcds.client.get.split`).

The threshold for the split is lowered so that the few hundred files of the ``many`` tree are
split; the test's servers run in threads of this process, which the forked workers never touch.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pytest

from rcds.client.cache.inserter import BackgroundInserter
from rcds.client.cache.local import LocalCache
from rcds.client.get import materialize as mat
from rcds.client.get import procs as getprocs
from rcds.client.get import share as getshare
from rcds.client.get import split as getsplit
from rcds.client.get.materialize import materialize
from rcds.client.get.share import ensure_dir, owners
from rcds.client.get.split import SplitWorkers
from rcds.client.tree.rows import LeanDir
from rcds.errors import IntegrityError, NetworkError, StorageError
from rcds.format.hashes import Algorithm, ContentHash, ObjectKind
from rcds.repo.catalog import Catalog, LeanRow

from clientkit import C1
from getkit import MANY, content, object_of, recorded, regular_files

if TYPE_CHECKING:
    from conftest import Site


@pytest.fixture
def forked(monkeypatch: pytest.MonkeyPatch) -> list[SplitWorkers]:
    """Split even small trees; the worker sets that were started (the old workers refused)."""
    monkeypatch.setattr(getsplit, "SPLIT_MIN_ROWS", 1)
    monkeypatch.setattr(getsplit, "FORK_WITH_THREADS", True)
    monkeypatch.setattr(getshare, "REPORT_EVERY", 16)
    monkeypatch.setattr(getprocs.GetProcesses, "module", "rcds.no_such_module")  # never used here
    sets: list[SplitWorkers] = []
    real_init = SplitWorkers.__init__

    def init(self: SplitWorkers, task: getshare.ShareTask, count: int) -> None:
        real_init(self, task, count)
        sets.append(self)

    monkeypatch.setattr(SplitWorkers, "__init__", init)
    return sets


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_split_workers_copy_an_identical_tree_and_fill_the_cache_when_asked(
    site: Site, many: dict[str, bytes], tmp_path: Path, forked: list[SplitWorkers]
) -> None:
    repo = site.open()
    before = site.fetched("data/")
    seen: list[int] = []
    report = materialize(
        repo,
        MANY,
        tmp_path / "out",
        processes=2,
        keep_in_cache=True,
        progress=lambda p: seen.append(p.files_done),
    )
    assert len(forked) == 1 and not forked[0].kids  # forked, then reaped
    assert regular_files(tmp_path / "out") == many
    assert os.readlink(tmp_path / "out/lnk") == "d0/f000.txt"
    st = os.stat(tmp_path / "out/d0/f007.txt")
    assert st.st_mode & 0o777 == 0o600 and st.st_mtime == 1_700_000_000
    assert os.stat(tmp_path / "out/d3").st_mode & 0o777 == 0o750
    assert report.files == len(many) + 1  # with .cvmfscatalog
    assert report.directories == 1 + 8 and report.symlinks == 1
    assert seen and seen[-1] == report.files and seen == sorted(seen)
    distinct = len(set(many.values()) - {b""})
    fetched = site.fetched("data/") - before - 1  # the nested catalog
    assert (
        distinct <= fetched <= 2 * distinct
    )  # once per share at most (here contents repeat across directories)
    assert repo.source.stats["network"] >= distinct  # the workers' figures reach the caller
    assert not list((tmp_path / "out").rglob("*.tmp"))
    assert set(many) <= set(recorded(site.cache_dir, tmp_path / "out"))
    # the workers filled the cache: a second copy downloads no object, copies them from the cache
    before = site.fetched("data/")
    materialize(repo, MANY, tmp_path / "again", processes=2)
    assert site.fetched("data/") == before
    assert regular_files(tmp_path / "again") == many


def test_without_fill_the_cache_gets_no_objects(
    site: Site, many: dict[str, bytes], tmp_path: Path, forked: list[SplitWorkers]
) -> None:
    repo = site.open(cache_dir=tmp_path / "cache")
    materialize(repo, MANY, tmp_path / "out", processes=3)
    assert forked and regular_files(tmp_path / "out") == many
    repo.source.flush()
    hashes = {repo.pieces(f"{MANY}/{rel}")[0].hash for rel, data in many.items() if data}
    assert not any(repo.source.is_cached(h, ObjectKind.FILE) for h in hashes)


def test_a_split_copy_fails_over_from_corrupt_data_and_a_dead_server(
    site: Site, many: dict[str, bytes], tmp_path: Path, forked: list[SplitWorkers]
) -> None:
    bad = site.copy("bad")
    obj = object_of(site, content(123))
    target = bad / obj.relative_to(site.public)
    target.write_bytes(target.read_bytes()[:-3] + b"xyz")
    repo = site.open([site.serve(bad), site.urls[0]], cache_dir=tmp_path / "cache")
    materialize(repo, MANY, tmp_path / "out", processes=2)
    assert forked and regular_files(tmp_path / "out") == many
    repo = site.open(cache_dir=tmp_path / "cache2")
    site.servers[0].stop()
    materialize(repo, MANY, tmp_path / "out2", processes=2)
    assert len(forked) == 2 and regular_files(tmp_path / "out2") == many


def test_dead_servers_are_a_clear_error(
    site: Site, many: dict[str, bytes], tmp_path: Path, forked: list[SplitWorkers]
) -> None:
    repo = site.open(cache_dir=tmp_path / "cache")
    repo.info()  # the catalogs are loaded before the servers go
    with repo.using() as m:
        m.directory(MANY.strip("/"))
    for s in site.servers:
        s.stop()
    with pytest.raises(NetworkError):
        materialize(repo, MANY, tmp_path / "out", processes=2)
    assert forked and not forked[0].kids
    assert not list((tmp_path / "out").rglob("*.tmp"))


def test_corrupt_data_everywhere_is_reported_and_the_copy_resumes(
    site: Site, many: dict[str, bytes], tmp_path: Path, forked: list[SplitWorkers]
) -> None:
    obj = object_of(site, content(42))
    good = obj.read_bytes()
    obj.write_bytes(good[:-3] + b"xyz")
    dest = tmp_path / "out"
    with pytest.raises(IntegrityError, match="corrupt"):
        materialize(site.open(cache_dir=tmp_path / "c1"), MANY, dest, processes=2)
    assert forked and not forked[0].kids  # every worker stopped and reaped
    assert "d0/f042.txt" not in regular_files(dest)
    for rel, data in regular_files(dest).items():
        assert data == many[rel]
    assert not list(dest.rglob("*.tmp"))
    obj.write_bytes(good)
    report = materialize(site.open(cache_dir=tmp_path / "c1"), MANY, dest, processes=2)  # its state
    assert regular_files(dest) == many
    assert report.skipped > 0


def test_an_interrupted_split_copy_stops_its_workers_and_resumes(
    site: Site,
    many: dict[str, bytes],
    tmp_path: Path,
    forked: list[SplitWorkers],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mat, "SAVE_EVERY", 0.0)
    dest = tmp_path / "out"
    pids: list[int] = []

    def stop_midway(p: mat.Progress) -> None:
        if not pids:
            pids.extend(forked[0].kids)
        if p.files_done >= 60:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        materialize(site.open(cache_dir=tmp_path / "c1"), MANY, dest, progress=stop_midway, processes=2)
    assert len(pids) == 2 and all(_gone(pid) for pid in pids)
    partial = regular_files(dest)
    assert len(partial) > 0
    assert all(many[r] == d for r, d in partial.items())
    assert not list(dest.rglob("*.tmp"))  # SIGTERM: the workers removed what they were writing
    report = materialize(site.open(cache_dir=tmp_path / "c1"), MANY, dest, processes=2)
    assert report.skipped >= 40
    assert regular_files(dest) == many


def test_a_split_worker_killed_outright_is_a_clear_error(
    site: Site, many: dict[str, bytes], tmp_path: Path, forked: list[SplitWorkers]
) -> None:
    killed: list[int] = []

    def kill_one(p: mat.Progress) -> None:
        if not killed and forked and forked[0].kids:
            pid = next(iter(forked[0].kids))
            if pid not in forked[0].finished:
                killed.append(pid)
                os.kill(pid, signal.SIGKILL)

    with pytest.raises(StorageError, match=r"died \(exit code -9\)"):
        materialize(
            site.open(cache_dir=tmp_path / "c"), MANY, tmp_path / "out", progress=kill_one, processes=2
        )
    assert killed and _gone(killed[0])


def _listing(root: Path) -> dict[str, tuple[int, int, int, str]]:
    out = {}
    for d, dirs, names in os.walk(root):
        for n in dirs + names:
            p = Path(d, n)
            st = p.lstat()
            link = os.readlink(p) if p.is_symlink() else ""
            out[p.relative_to(root).as_posix()] = (st.st_mode, st.st_size, st.st_mtime_ns, link)
    return out


def test_hard_links_chunked_files_symlinks_and_times_match_the_one_process_copy(
    site: Site, tmp_path: Path, forked: list[SplitWorkers]
) -> None:
    ref = materialize(site.open(cache_dir=tmp_path / "c0"), C1, tmp_path / "ref", processes=0)
    report = materialize(site.open(cache_dir=tmp_path / "c1"), C1, tmp_path / "out", processes=3)
    assert forked
    out = tmp_path / "out"
    assert _listing(out) == _listing(tmp_path / "ref")  # modes, sizes, times (directories too), links
    assert regular_files(out) == regular_files(tmp_path / "ref")
    assert (out / "a/big.bin").read_bytes() == site.big  # chunked: written by the main process
    assert os.stat(out / "a/hl").st_ino == os.stat(out / "a/hello.txt").st_ino
    assert (report.files, report.directories, report.symlinks, report.hardlinks) == (
        ref.files,
        ref.directories,
        ref.symlinks,
        ref.hardlinks,
    )


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


def test_when_no_process_can_be_forked_the_copy_runs_in_this_process(
    site: Site,
    many: dict[str, bytes],
    tmp_path: Path,
    forked: list[SplitWorkers],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []

    def refuse() -> int:
        calls.append(1)
        raise BlockingIOError(11, "Resource temporarily unavailable")  # what fork says at the limit

    monkeypatch.setattr(getsplit.os, "fork", refuse)
    report = materialize(site.open(cache_dir=tmp_path / "c"), MANY, tmp_path / "out", processes=2)
    assert calls and not forked  # tried, refused, nothing left running
    assert regular_files(tmp_path / "out") == many
    assert report.files == len(many) + 1
