"""``rcds get`` through worker processes (:mod:`rcds.client.get.procs`), with real servers.

The threshold for using workers is lowered so that the few hundred files of the ``many`` tree
go through them in several small batches. The copies through them, held to the same contract as
the other routes, are in ``test_get_routes.py``; here what only this route has.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from getroutes import Route, set_up

from rcds.client.get import downloads as getdownloads
from rcds.client.get import procs as getprocs
from rcds.client.get import worker as getworker
from rcds.client.get.materialize import materialize
from rcds.client.get.procs import GetProcesses, batches
from rcds.client.get.worker import Job, Target
from rcds.errors import StorageError
from rcds.format.hashes import ContentHash, ObjectKind

from getkit import MANY, recorded, regular_files, stopped_while_writing

if TYPE_CHECKING:
    from conftest import Site


@pytest.fixture
def procs(monkeypatch: pytest.MonkeyPatch) -> Route:
    """Workers for small trees, small batches (what they started in ``.pools``)."""
    return set_up("procs", monkeypatch)


def test_batches_go_out_while_the_walk_goes_on(
    site: Site,
    many: dict[str, bytes],
    tmp_path: Path,
    procs: Route,
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


def test_workers_that_cannot_start_are_a_clear_error(
    site: Site,
    many: dict[str, bytes],
    tmp_path: Path,
    procs: Route,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(GetProcesses, "module", "rcds.no_such_module")  # e.g. a broken installation
    dest = tmp_path / "out"
    with pytest.raises(StorageError, match=r"worker process .* died .*RCDS_GET_PROCESSES=0"):
        materialize(site.open(cache_dir=tmp_path / "c"), MANY, dest, processes=2)
    assert not list(dest.rglob("*.tmp"))
    materialize(site.open(cache_dir=tmp_path / "c"), MANY, dest, processes=0)  # the way out it names
    assert regular_files(dest) == many


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
    with stopped_while_writing(monkeypatch):
        getworker.run_jobs(repo.source, getworker.read_jobs([job]), keep=False)
    assert (tmp_path / "first").read_bytes() == many[rel]  # finished, then stopped
    assert not (tmp_path / "second").exists()
    assert not list(tmp_path.glob(".*.tmp"))
