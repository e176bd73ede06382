"""``rcds get`` through worker processes (:mod:`rcds.client.get.procs`), with real servers.

The threshold for using workers is lowered so that the few hundred files of the ``many`` tree
go through them in several small batches.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from rcds.client.get import downloads as getdownloads
from rcds.client.get import materialize as mat
from rcds.client.get import procs as getprocs
from rcds.client.get import worker as getworker
from rcds.client.get.materialize import materialize
from rcds.client.get.procs import GetProcesses, batches
from rcds.client.get.worker import Job, Target
from rcds.errors import IntegrityError, StorageError
from rcds.format.hashes import ContentHash, ObjectKind

from getkit import MANY, content, object_of, recorded, regular_files

if TYPE_CHECKING:
    from conftest import Site


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[GetProcesses]:
    """Workers for small trees, small batches; the pools that were started."""
    monkeypatch.setattr(getdownloads, "MIN_OBJECTS", 20)
    monkeypatch.setattr(getprocs, "MIN_BATCH", 8)
    monkeypatch.setattr(getprocs, "BATCH_OBJECTS", 40)
    pools: list[GetProcesses] = []
    real_init = GetProcesses.__init__

    def init(self: GetProcesses, count: int) -> None:
        real_init(self, count)
        pools.append(self)

    monkeypatch.setattr(GetProcesses, "__init__", init)
    return pools


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_workers_copy_an_identical_tree_and_fill_the_cache_when_asked(
    site: Site, many: dict[str, bytes], tmp_path: Path, started: list[GetProcesses]
) -> None:
    repo = site.open()
    before = site.fetched("data/")
    report = materialize(repo, MANY, tmp_path / "out", processes=2, keep_in_cache=True)
    assert len(started) == 1 and not started[0].workers  # started, then stopped
    assert regular_files(tmp_path / "out") == many
    assert os.readlink(tmp_path / "out/lnk") == "d0/f000.txt"
    st = os.stat(tmp_path / "out/d0/f007.txt")
    assert st.st_mode & 0o777 == 0o600 and st.st_mtime == 1_700_000_000
    assert report.files == len(many) + 1  # with .cvmfscatalog
    distinct = len(set(many.values()) - {b""})
    assert site.fetched("data/") - before - 1 == distinct  # each object once (plus the nested catalog)
    assert repo.source.stats["network"] >= distinct  # the workers' figures reach the caller
    assert not list((tmp_path / "out").rglob("*.tmp"))
    assert set(many) <= set(recorded(site.cache_dir, tmp_path / "out"))
    # the workers filled the cache: a second copy downloads no object
    before = site.fetched("data/")
    materialize(repo, MANY, tmp_path / "again", processes=2)
    assert site.fetched("data/") == before
    assert regular_files(tmp_path / "again") == many


def test_batches_go_out_while_the_walk_goes_on(
    site: Site,
    many: dict[str, bytes],
    tmp_path: Path,
    started: list[GetProcesses],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(getprocs, "STREAM_BATCH", 16)
    monkeypatch.setattr(getdownloads, "FEED_EVERY", 8)
    walking = [True]
    sent: list[bool] = []  # per batch: sent during the walk?
    real_send, real_finish = GetProcesses.send, GetProcesses.finish

    def send(self: GetProcesses, part: range, jobs: list[Job]) -> None:
        sent.append(walking[0])
        real_send(self, part, jobs)

    def finish(self: GetProcesses, *args: Any) -> None:
        walking[0] = False
        real_finish(self, *args)

    monkeypatch.setattr(GetProcesses, "send", send)
    monkeypatch.setattr(GetProcesses, "finish", finish)
    repo = site.open()
    before = site.fetched("data/")
    report = materialize(repo, MANY, tmp_path / "out", processes=2)
    assert sent.count(True) >= 2 and False in sent  # batches during the walk, the rest after it
    assert regular_files(tmp_path / "out") == many
    assert report.files == len(many) + 1 and report.skipped == 0
    # one download per object, again for a content met after its batch went out
    distinct = len(set(many.values()) - {b""})
    duplicates = sum(1 for data in many.values() if data) - distinct
    assert distinct <= site.fetched("data/") - before - 1 <= distinct + duplicates
    assert set(many) <= set(recorded(site.cache_dir, tmp_path / "out"))


def test_without_fill_the_cache_gets_no_objects(
    site: Site, many: dict[str, bytes], tmp_path: Path, started: list[GetProcesses]
) -> None:
    repo = site.open(cache_dir=tmp_path / "cache")
    materialize(repo, MANY, tmp_path / "out", processes=2)
    assert started and regular_files(tmp_path / "out") == many
    repo.source.flush()
    hashes = {repo.pieces(f"{MANY}/{rel}")[0].hash for rel, data in many.items() if data}
    assert not any(repo.source.is_cached(h, ObjectKind.FILE) for h in hashes)


def test_a_worker_fails_over_to_the_other_server_on_corrupt_data(
    site: Site, many: dict[str, bytes], tmp_path: Path, started: list[GetProcesses]
) -> None:
    bad = site.copy("bad")
    obj = object_of(site, content(123))
    target = bad / obj.relative_to(site.public)
    target.write_bytes(target.read_bytes()[:-3] + b"xyz")
    repo = site.open([site.serve(bad), site.urls[0]], cache_dir=tmp_path / "cache")
    materialize(repo, MANY, tmp_path / "out", processes=2)
    assert started and regular_files(tmp_path / "out") == many


def test_a_dead_first_server_is_skipped_by_the_workers(
    site: Site, many: dict[str, bytes], tmp_path: Path, started: list[GetProcesses]
) -> None:
    repo = site.open(cache_dir=tmp_path / "cache")
    site.servers[0].stop()
    materialize(repo, MANY, tmp_path / "out", processes=2)
    assert started and regular_files(tmp_path / "out") == many


def test_corrupt_data_everywhere_is_reported_and_the_copy_resumes(
    site: Site, many: dict[str, bytes], tmp_path: Path, started: list[GetProcesses]
) -> None:
    obj = object_of(site, content(42))
    good = obj.read_bytes()
    obj.write_bytes(good[:-3] + b"xyz")
    dest = tmp_path / "out"
    with pytest.raises(IntegrityError, match="corrupt"):
        materialize(site.open(cache_dir=tmp_path / "c1"), MANY, dest, processes=2)
    pids = [w.pid for pool in started for w in pool.workers]
    assert not pids  # every worker stopped
    assert "d0/f042.txt" not in regular_files(dest)
    for rel, data in regular_files(dest).items():
        assert data == many[rel]
    assert not list(dest.rglob("*.tmp"))
    obj.write_bytes(good)
    report = materialize(site.open(cache_dir=tmp_path / "c1"), MANY, dest, processes=2)  # its state
    assert regular_files(dest) == many
    assert report.skipped > 0


def test_workers_that_cannot_start_are_a_clear_error(
    site: Site,
    many: dict[str, bytes],
    tmp_path: Path,
    started: list[GetProcesses],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(GetProcesses, "module", "rcds.no_such_module")  # e.g. a broken installation
    dest = tmp_path / "out"
    with pytest.raises(StorageError, match=r"worker process .* died .*RCDS_GET_PROCESSES=0"):
        materialize(site.open(cache_dir=tmp_path / "c"), MANY, dest, processes=2)
    assert not list(dest.rglob("*.tmp"))
    materialize(site.open(cache_dir=tmp_path / "c"), MANY, dest, processes=0)  # the way out it names
    assert regular_files(dest) == many


def test_when_no_process_can_start_the_copy_runs_in_this_process(
    site: Site,
    many: dict[str, bytes],
    tmp_path: Path,
    started: list[GetProcesses],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(self: GetProcesses, count: int) -> None:
        raise BlockingIOError(11, "Resource temporarily unavailable")  # what fork says at the limit

    monkeypatch.setattr(GetProcesses, "__init__", refuse)
    materialize(site.open(cache_dir=tmp_path / "c"), MANY, tmp_path / "out", processes=2)
    assert regular_files(tmp_path / "out") == many


def test_an_interrupted_copy_stops_its_workers_and_resumes(
    site: Site,
    many: dict[str, bytes],
    tmp_path: Path,
    started: list[GetProcesses],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mat, "SAVE_EVERY", 0.0)
    dest = tmp_path / "out"
    pids: list[int] = []

    def stop_midway(p: mat.Progress) -> None:
        if not pids:
            pids.extend(w.pid for w in started[0].workers)
        if p.files_done >= 60:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        materialize(site.open(cache_dir=tmp_path / "c1"), MANY, dest, progress=stop_midway, processes=2)
    assert len(pids) == 2 and all(_gone(pid) for pid in pids)
    partial = regular_files(dest)
    assert 0 < len(partial) < len(many)
    assert all(many[r] == d for r, d in partial.items())
    assert not list(dest.rglob("*.tmp"))  # SIGTERM: the workers removed what they were writing
    report = materialize(site.open(cache_dir=tmp_path / "c1"), MANY, dest, processes=2)
    assert report.skipped >= 40
    assert regular_files(dest) == many


def test_a_worker_killed_outright_is_a_clear_error(
    site: Site, many: dict[str, bytes], tmp_path: Path, started: list[GetProcesses]
) -> None:
    killed: list[int] = []

    def kill_one(p: mat.Progress) -> None:
        if not killed and started and started[0].workers:
            killed.append(started[0].workers[0].pid)
            os.kill(killed[0], signal.SIGKILL)

    with pytest.raises(StorageError, match=r"died \(exit code -9\)"):
        materialize(
            site.open(cache_dir=tmp_path / "c"), MANY, tmp_path / "out", progress=kill_one, processes=2
        )
    assert killed and _gone(killed[0])


def _job(size: int) -> Job:
    h = ContentHash.parse("ab" * 20)
    return Job.of(h, ObjectKind.FILE, size, True, (Target("/x", "/x", 0o100644, size, 0, None),))


def test_batches_cover_every_job_in_order_shrinking_towards_the_end() -> None:
    jobs = [_job(100) for _ in range(5000)]
    parts = list(batches(jobs, 2, max_objects=1024))
    assert [i for p in parts for i in p] == list(range(5000))
    sizes = [len(p) for p in parts]
    assert max(sizes) == 1024 and sizes == sorted(sizes, reverse=True)
    assert sizes[-1] <= getprocs.MIN_BATCH


def test_batches_respect_the_byte_bound_but_hold_at_least_one_job() -> None:
    jobs = [_job(10 << 20), _job(10 << 20), _job(40 << 20), _job(1)]
    parts = list(batches(jobs, 1, max_bytes=25 << 20))
    assert [list(p) for p in parts] == [[0, 1], [2], [3]]


def test_the_worker_count_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RCDS_GET_PROCESSES", "3")
    assert getprocs.configured_processes() == 3
    monkeypatch.setenv("RCDS_GET_PROCESSES", "0")
    assert getprocs.configured_processes() == 0
    monkeypatch.setenv("RCDS_GET_PROCESSES", "many")
    assert getprocs.configured_processes() == 0
    monkeypatch.delenv("RCDS_GET_PROCESSES")
    assert 1 <= getprocs.configured_processes() <= getprocs.MAX_DEFAULT


def test_a_worker_told_to_stop_while_writing_finishes_that_file_first(
    site: Site, many: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = site.open(cache_dir=tmp_path / "cache")
    rel = "d0/f007.txt"
    entry = repo.lstat(f"{MANY}/{rel}")
    piece = repo.pieces(f"{MANY}/{rel}")[0]
    targets = tuple(
        Target(str(tmp_path / name), f"{MANY}/{rel}", entry.st_mode, entry.st_size, 1_700_000_000, None)
        for name in ("first", "second")
    )
    job = Job.of(piece.hash, ObjectKind.FILE, piece.size, True, targets)
    real_write = getworker.write_file

    def write(final: str, attrs: Target, data: bytes) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # the parent stops the workers: this one is writing
        real_write(final, attrs, data)

    monkeypatch.setattr(getworker, "write_file", write)
    previous = signal.signal(signal.SIGTERM, getworker._stop)  # the worker's handler, here
    try:
        with pytest.raises(SystemExit):
            getworker.run_jobs(repo.source, getworker.read_jobs([job]), keep=False)
    finally:
        signal.signal(signal.SIGTERM, previous)
        getworker._stopping = False  # set by the handler; not through monkeypatch, which would restore it
    assert (tmp_path / "first").read_bytes() == many[rel]  # finished, then stopped
    assert not (tmp_path / "second").exists()
    assert not list(tmp_path.glob(".*.tmp"))
