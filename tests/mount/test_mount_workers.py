"""The mount's download worker processes (:mod:`rcds.mount.fetchprocs`): real processes, real
HTTP servers, a real cache directory.

Asserted: what a worker brought is in the local cache (file and quota row) while the daemon's
own source downloaded nothing; a killed worker leaves reads working (in the daemon); a killed
daemon leaves no worker behind; by default (no ``RCDS_MOUNT_PROCESSES``) none is started. The
failure tests of the mount (tests/mount/test_mount_failures.py) and its prefetch bounds
(test_mount_prefetch.py) run with and without workers. Every wait is bounded.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from rcds.client.cache.local import object_name
from rcds.format.hashes import ObjectKind
from rcds.mount.inodes import InodeSpace
from rcds.mount.repomount import RepoMount

from mountkit import wait_for
from testkit import Entry, alive, live_children

FILE = ObjectKind.FILE
TOP = "sw/w"
NAMES = [f"f{i:02d}.txt" for i in range(10)]


@pytest.fixture
def w_site(site: Any) -> Any:
    """The test site with a directory of small files."""
    site.publish([Entry(f"d/{n}", f"content of {n}\n".encode()) for n in NAMES], TOP)
    return site


@pytest.fixture
def mounted(w_site: Any, tmp_path: Path) -> Any:
    """A repository with an empty cache and its RepoMount with 2 worker processes."""
    repo = w_site.open(cache_dir=tmp_path / "cache")
    rm = RepoMount(repo, InodeSpace(repo.fqrn, shared=False), owner=None, workers=2)
    yield repo, rm
    rm.close()


def test_a_cold_object_is_brought_by_a_worker_into_the_cache(mounted: Any, tmp_path: Path) -> None:
    repo, rm = mounted
    pf = rm.prefetcher
    assert pf.workers is not None and len(pf.workers.workers) == 2
    e = repo.entry(f"/{TOP}/d/{NAMES[0]}")
    repo.source.flush()  # what opening the repository queued for the cache (its certificate)
    network, size = repo.source.stats["network"], repo.cache.size()
    pf.wait(e.hash, FILE, 30, e.size, e.compressed)  # as a read does before it reads
    want = f"content of {NAMES[0]}\n".encode()
    assert (tmp_path / "cache" / object_name(e.hash, FILE)).read_bytes() == want
    assert pf.singles == 1 and pf.workers.sent == 1
    assert repo.source.stats["network"] == network  # the daemon's own source downloaded nothing
    assert repo.cache.size() == size + e.size  # the worker accounted it in the cache database
    assert repo.source.read_cached(e.hash, FILE, e.size) == f"content of {NAMES[0]}\n".encode()


def test_a_readers_run_and_the_lanes_go_to_the_workers(mounted: Any, w_site: Any, tmp_path: Path) -> None:
    repo, rm = mounted
    pf = rm.prefetcher
    entries = [repo.entry(f"/{TOP}/d/{n}") for n in NAMES]
    network = repo.source.stats["network"]
    before = w_site.fetched("data/")
    assert rm.prefetch_directory(f"/{TOP}/d", skip=NAMES[2]) == len(NAMES)
    pf.wait(entries[2].hash, FILE, 30, entries[2].size)  # queued: the reader's run, to a worker
    assert repo.source.is_cached(entries[2].hash, FILE)
    assert wait_for(lambda: not any(pf.pending(e.hash, FILE) for e in entries), timeout=30)
    assert all((tmp_path / "cache" / object_name(e.hash, FILE)).exists() for e in entries)
    assert w_site.fetched("data/") - before == len(NAMES)  # each object once
    assert repo.source.stats["network"] == network
    assert pf.workers is not None and pf.workers.sent == len(NAMES) and pf.failed == 0


def test_killed_workers_leave_reads_to_the_daemon(mounted: Any) -> None:
    repo, rm = mounted
    pf = rm.prefetcher
    assert pf.workers is not None
    for w in pf.workers.workers:
        os.kill(w.pid, signal.SIGKILL)
    assert wait_for(lambda: not pf.workers.alive, timeout=15)
    e = repo.entry(f"/{TOP}/d/{NAMES[1]}")
    pf.wait(e.hash, FILE, 30, e.size)  # no worker: returns, the read fetches in the daemon
    assert not repo.source.is_cached(e.hash, FILE)
    assert repo.source.read_object(e.hash, FILE, e.size) == f"content of {NAMES[1]}\n".encode()


@pytest.fixture
def with_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mount daemons started by the test run 2 download workers (the default is none)."""
    monkeypatch.setenv("RCDS_MOUNT_PROCESSES", "2")


def test_sigkill_of_the_daemon_leaves_no_worker(w_site: Any, mount_site: Any, with_workers: None) -> None:
    m = mount_site()
    assert wait_for(lambda: len(live_children(m.proc.pid)) == 2, timeout=15), live_children(m.proc.pid)
    workers = live_children(m.proc.pid)
    assert (m.mp / TOP / "d" / NAMES[3]).read_bytes() == f"content of {NAMES[3]}\n".encode()
    m.proc.stop(signal.SIGKILL)
    assert wait_for(lambda: not any(alive(p) for p in workers), timeout=15)


def test_sigterm_stops_the_workers_and_logs_what_they_did(
    w_site: Any, mount_site: Any, with_workers: None
) -> None:
    m = mount_site()
    assert wait_for(lambda: len(live_children(m.proc.pid)) == 2, timeout=15)
    workers = live_children(m.proc.pid)
    for n in NAMES:
        assert (m.mp / TOP / "d" / n).read_bytes() == f"content of {n}\n".encode()
    assert m.proc.stop() == 0
    assert not any(alive(p) for p in workers)
    line = next(ln for ln in m.proc.logs().splitlines() if "sent to worker processes" in ln)
    assert int(line.rsplit(": ", 1)[1]) >= len(NAMES)


def test_no_workers_by_default(w_site: Any, mount_site: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RCDS_MOUNT_PROCESSES", raising=False)
    m = mount_site()
    assert (m.mp / TOP / "d" / NAMES[4]).read_bytes() == f"content of {NAMES[4]}\n".encode()
    assert live_children(m.proc.pid) == []
    assert m.proc.stop() == 0
    assert "sent to worker processes: 0" in m.proc.logs()


def test_workers_fill_and_use_the_alien_cache(w_site: Any, tmp_path: Path) -> None:
    alien = tmp_path / "alien"
    e = None
    for n, local in enumerate(("cache-a", "cache-b")):
        repo = w_site.open(cache_dir=tmp_path / local, alien_cache=alien)
        rm = RepoMount(repo, InodeSpace(repo.fqrn, shared=False), owner=None, workers=2)
        try:
            e = repo.entry(f"/{TOP}/d/{NAMES[5]}")
            before = w_site.fetched("data/")
            rm.prefetcher.wait(e.hash, FILE, 30, e.size, e.compressed)
            assert (tmp_path / local / object_name(e.hash, FILE)).exists()
            assert repo.source.alien is not None and repo.source.alien.contains(e.hash, FILE)
            # the first fetched it from a server, the second took the first's alien copy
            assert w_site.fetched("data/") - before == (1 if n == 0 else 0)
        finally:
            rm.close()
