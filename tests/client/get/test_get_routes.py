"""One contract for every route of ``rcds get``: in this process, worker processes, forked split.

Each scenario runs against each route (:mod:`getroutes`), with real engine servers on loopback
and the few hundred small files of the ``many`` tree; every test first checks that the copy took
the route it names. What differs between routes is said where it is asserted.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from getroutes import Route, gone, kill_outright

from rcds.client.get import materialize as mat
from rcds.client.get.materialize import materialize
from rcds.client.get.state import LEGACY_STATE_FILE, state_path
from rcds.errors import IntegrityError, NetworkError, StorageError
from rcds.format.hashes import ObjectKind

from clientkit import C1
from getkit import MANY, content, object_of, recorded, regular_files

if TYPE_CHECKING:
    from conftest import Site


def test_a_copy_is_identical_and_fills_the_cache_when_asked(
    site: Site, many: dict[str, bytes], tmp_path: Path, route: Route
) -> None:
    repo = site.open()
    before = site.fetched("data/")
    seen: list[int] = []
    out = tmp_path / "out"
    report = materialize(
        repo,
        MANY,
        out,
        processes=route.processes,
        keep_in_cache=True,
        progress=lambda p: seen.append(p.files_done),
    )
    assert route.took() and not route.running()  # started, then stopped
    assert regular_files(out) == many
    assert os.readlink(out / "lnk") == "d0/f000.txt"
    st = os.stat(out / "d0/f007.txt")
    assert st.st_mode & 0o777 == 0o600 and st.st_mtime == 1_700_000_000
    assert os.stat(out / "d3").st_mode & 0o777 == 0o750
    assert report.files == len(many) + 1  # with .cvmfscatalog
    assert report.directories == 1 + 8 and report.symlinks == 1
    assert seen and seen[-1] == report.files and seen == sorted(seen)
    distinct = len(set(many.values()) - {b""})  # none for the empty file
    fetched = site.fetched("data/") - before - 1  # the nested catalog of MANY
    if route.fetches_once:
        assert fetched == distinct
    else:  # once per share at most (here contents repeat across directories)
        assert distinct <= fetched <= 2 * distinct
    assert repo.source.stats["network"] >= distinct  # the workers' figures reach the caller
    assert not list(out.rglob("*.tmp"))
    assert not (out / LEGACY_STATE_FILE).exists()  # the state is in the cache directory
    assert set(many) <= set(recorded(site.cache_dir, out))
    # everything went into the cache: a second copy downloads no object, copies them from the cache
    repo.source.flush()
    before = site.fetched("data/")
    materialize(repo, MANY, tmp_path / "again", processes=route.processes)
    assert site.fetched("data/") == before
    assert regular_files(tmp_path / "again") == many


def test_without_fill_the_cache_gets_no_objects(
    site: Site, many: dict[str, bytes], tmp_path: Path, route: Route
) -> None:
    repo = site.open(cache_dir=tmp_path / "cache")
    materialize(repo, MANY, tmp_path / "out", processes=route.processes)
    assert route.took() and regular_files(tmp_path / "out") == many
    repo.source.flush()
    hashes = {repo.pieces(f"{MANY}/{rel}")[0].hash for rel, data in many.items() if data}
    assert not any(repo.source.is_cached(h, ObjectKind.FILE) for h in hashes)


def test_a_corrupt_object_is_fetched_again_from_the_other_server(
    site: Site, many: dict[str, bytes], tmp_path: Path, route: Route
) -> None:
    bad = site.copy("bad")
    obj = object_of(site, content(123))
    target = bad / obj.relative_to(site.public)
    target.write_bytes(target.read_bytes()[:-3] + b"xyz")
    repo = site.open([site.serve(bad), site.urls[0]], cache_dir=tmp_path / "cache")
    materialize(repo, MANY, tmp_path / "out", processes=route.processes, keep_in_cache=False)
    assert route.took() and regular_files(tmp_path / "out") == many


def test_a_dead_first_server_is_skipped(
    site: Site, many: dict[str, bytes], tmp_path: Path, route: Route
) -> None:
    repo = site.open(cache_dir=tmp_path / "cache")
    site.servers[0].stop()
    materialize(repo, MANY, tmp_path / "out", processes=route.processes)
    assert route.took() and regular_files(tmp_path / "out") == many


def test_dead_servers_are_a_clear_error(
    site: Site, many: dict[str, bytes], tmp_path: Path, route: Route
) -> None:
    repo = site.open(cache_dir=tmp_path / "cache")
    repo.info()  # the catalogs are loaded before the servers go
    with repo.using() as m:
        m.directory(MANY.strip("/"))
    for s in site.servers:
        s.stop()
    with pytest.raises(NetworkError):
        materialize(repo, MANY, tmp_path / "out", processes=route.processes)
    assert route.took() and not route.running()
    assert not list((tmp_path / "out").rglob("*.tmp"))


def test_corrupt_data_everywhere_is_reported_and_the_copy_resumes(
    site: Site, many: dict[str, bytes], tmp_path: Path, route: Route
) -> None:
    obj = object_of(site, content(42))
    good = obj.read_bytes()
    obj.write_bytes(good[:-3] + b"xyz")
    dest = tmp_path / "out"
    with pytest.raises(IntegrityError, match="corrupt"):
        materialize(site.open(cache_dir=tmp_path / "cache"), MANY, dest, processes=route.processes)
    assert route.took() and not route.running()  # every worker stopped and reaped
    # nothing unverified under a real name, no temp files left, the state file records what is done
    assert state_path(tmp_path / "cache", dest).is_file()
    assert not (dest / LEGACY_STATE_FILE).exists()
    assert "d0/f042.txt" not in regular_files(dest)
    for rel, data in regular_files(dest).items():
        assert data == many[rel]
    assert not list(dest.rglob("*.tmp"))
    done = recorded(tmp_path / "cache", dest)
    assert set(done) - {".cvmfscatalog"} <= set(regular_files(dest))
    obj.write_bytes(good)
    report = materialize(site.open(cache_dir=tmp_path / "cache"), MANY, dest, processes=route.processes)
    assert regular_files(dest) == many
    assert report.skipped == len(done) > 0


def test_an_interrupted_copy_stops_its_workers_and_resumes(
    site: Site, many: dict[str, bytes], tmp_path: Path, route: Route, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mat, "SAVE_EVERY", 0.0)
    dest = tmp_path / "out"
    pids: list[int] = []
    calls = 0

    def stop_midway(p: mat.Progress) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            pids.extend(route.running())
        if p.files_done >= 120:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        materialize(
            site.open(cache_dir=tmp_path / "c1"), MANY, dest, progress=stop_midway, processes=route.processes
        )
    assert route.took() and len(pids) == route.workers and all(gone(pid) for pid in pids)
    partial = regular_files(dest)
    assert len(partial) > 0
    if route.name != "split":  # the split's workers may be done before the parent hears of it
        assert len(partial) < len(many)
    assert all(many[r] == d for r, d in partial.items())
    assert set(recorded(tmp_path / "c1", dest)) - {".cvmfscatalog"} <= set(partial)
    assert not list(dest.rglob("*.tmp"))  # SIGTERM: the workers removed what they were writing
    before = site.fetched("data/")
    report = materialize(site.open(cache_dir=tmp_path / "c1"), MANY, dest, processes=route.processes)
    assert report.skipped >= 100
    assert regular_files(dest) == many
    assert not (dest / LEGACY_STATE_FILE).exists()
    # only what was missing was downloaded (the copy in the cache has no objects: no fill)
    assert site.fetched("data/") - before <= len(many) - report.skipped
    # a copy with another cache has no state: it writes every file again, and correctly
    report = materialize(site.open(cache_dir=tmp_path / "c2"), MANY, dest, processes=route.processes)
    assert report.skipped == 0 and regular_files(dest) == many


def _listing(root: Path) -> dict[str, tuple[int, int, int, str]]:
    out = {}
    for d, dirs, names in os.walk(root):
        for n in dirs + names:
            p = Path(d, n)
            st = p.lstat()
            link = os.readlink(p) if p.is_symlink() else ""
            out[p.relative_to(root).as_posix()] = (st.st_mode, st.st_size, st.st_mtime_ns, link)
    return out


@pytest.mark.parametrize("route", ["inprocess", "split"], indirect=True)  # too few objects for procs
def test_hard_links_chunked_files_symlinks_and_times_match_the_one_process_copy(
    site: Site, tmp_path: Path, route: Route
) -> None:
    ref = materialize(site.open(cache_dir=tmp_path / "c0"), C1, tmp_path / "ref", processes=0)
    report = materialize(site.open(cache_dir=tmp_path / "c1"), C1, tmp_path / "out", processes=3)
    assert route.took()
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


def test_a_worker_killed_outright_is_a_clear_error(
    site: Site, many: dict[str, bytes], tmp_path: Path, worker_route: Route
) -> None:
    killed: list[int] = []

    def kill_one(p: mat.Progress) -> None:
        pid = worker_route.busy_worker()
        if not killed and pid is not None:
            killed.append(pid)
            kill_outright(pid)

    with pytest.raises(StorageError, match=r"died \(exit code -9\)"):
        materialize(
            site.open(cache_dir=tmp_path / "c"),
            MANY,
            tmp_path / "out",
            progress=kill_one,
            processes=worker_route.processes,
        )
    assert worker_route.took() and killed and gone(killed[0])
    assert not worker_route.running()


def test_when_no_worker_can_start_the_copy_runs_in_this_process(
    site: Site, many: dict[str, bytes], tmp_path: Path, worker_route: Route
) -> None:
    calls = worker_route.refuse_workers()
    out = tmp_path / "out"
    report = materialize(site.open(cache_dir=tmp_path / "c"), MANY, out, processes=worker_route.processes)
    assert calls and not worker_route.pools and not worker_route.splits  # tried, refused, none left
    assert regular_files(out) == many
    assert report.files == len(many) + 1
