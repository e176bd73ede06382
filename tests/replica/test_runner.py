"""The replica runner: pulls on a trigger at once, falls back to the interval, reports failures."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rcds.errors import IntegrityError, RcdsError
from rcds.publish.stratum0 import Stratum0
from rcds.replica.registry import add_replica
from rcds.replica.replicator import ReplicaSpec
from rcds.replica.runner import PullTrigger, ReplicaRunner
from rcds.replica.snapshot import SnapshotResult
from rcds.serve.handler import AccessRecord
from rcds.serve.http import RepositoryServer, make_server

from replkit import Recorder, cid_entries, key_file, revision_of
from testkit import publish, wait_until

pytestmark = pytest.mark.timeout(60)


def wait_for(cond: Callable[[], bool], timeout: float = 15.0) -> None:
    assert wait_until(cond, timeout), "condition not reached in time"


@pytest.fixture
def upstream(repo: Stratum0) -> Iterator[tuple[Stratum0, RepositoryServer, Recorder]]:
    publish(repo, cid_entries("a"), "/sw/g/a")
    recorder = Recorder()
    server = make_server({repo.name: repo.layout.public}, access_log=recorder)
    server.start_background()
    yield repo, server, recorder
    server.stop()


def spec_for(s0: Stratum0, server: RepositoryServer, root: Path) -> ReplicaSpec:
    return add_replica(root, s0.name, server.url_for(s0.name), key_file(s0)).spec()


def test_a_trigger_pulls_at_once_and_stale_hints_are_ignored(
    upstream: tuple[Stratum0, RepositoryServer, Recorder], tmp_path: Path
) -> None:
    s0, server, _ = upstream
    spec = spec_for(s0, server, tmp_path / "s1")
    results: list[tuple[str, SnapshotResult | RcdsError]] = []
    runner = ReplicaRunner([spec], interval=3600, on_result=lambda name, res: results.append((name, res)))
    trigger: PullTrigger = runner
    with runner:
        wait_for(lambda: len(results) == 1)  # the first pull happens at start
        assert revision_of(spec.dest) == s0.manifest().revision
        old_manifest = (spec.dest / ".cvmfspublished").read_bytes()

        publish(s0, cid_entries("b"), "/sw/g/b")
        new_manifest = (s0.layout.public / ".cvmfspublished").read_bytes()
        start = time.monotonic()
        assert trigger.notify(s0.name, new_manifest)
        wait_for(lambda: len(results) == 2)
        assert time.monotonic() - start < 5  # not the hour of the interval
        assert revision_of(spec.dest) == s0.manifest().revision
        assert isinstance(results[1][1], SnapshotResult) and results[1][1].catalogs_fetched == 2

        # Hints that cannot be newer, or are not for us, change nothing.
        assert not trigger.notify(s0.name, old_manifest)
        assert not trigger.notify(s0.name, new_manifest)
        assert not trigger.notify("other.example.org", new_manifest)
        assert not trigger.notify(s0.name, b"not a manifest")
        assert trigger.notify(s0.name)  # no manifest: always a pull (cheap when nothing changed)
        wait_for(lambda: len(results) == 3)
        status = runner.status()[0]
        assert (status.revision, status.pulls, status.failures) == (s0.manifest().revision, 3, 0)


def test_the_interval_pulls_without_a_trigger(
    upstream: tuple[Stratum0, RepositoryServer, Recorder], tmp_path: Path
) -> None:
    s0, server, _ = upstream
    spec = spec_for(s0, server, tmp_path / "s1")
    with ReplicaRunner([spec], interval=0.3) as runner:
        wait_for(lambda: runner.status()[0].pulls >= 1)
        publish(s0, cid_entries("b"), "/sw/g/b")
        wait_for(lambda: runner.status()[0].revision == s0.manifest().revision)


def test_a_trigger_during_a_pull_makes_another_pull_follow(
    upstream: tuple[Stratum0, RepositoryServer, Recorder], tmp_path: Path
) -> None:
    s0, server, recorder = upstream
    spec = spec_for(s0, server, tmp_path / "s1")
    manifest_served = threading.Event()
    release = threading.Event()

    def slow_first_pull(record: AccessRecord, n: int) -> None:
        if record.target.endswith(".cvmfspublished") and not manifest_served.is_set():
            manifest_served.set()
            release.wait(10)  # the upstream stalls after handing out the old manifest

    recorder.hook = slow_first_pull
    with ReplicaRunner([spec], interval=3600) as runner:
        assert manifest_served.wait(10)
        publish(s0, cid_entries("b"), "/sw/g/b")
        assert runner.notify(s0.name, (s0.layout.public / ".cvmfspublished").read_bytes())
        release.set()
        wait_for(lambda: runner.status()[0].pulls == 2)
        assert revision_of(spec.dest) == s0.manifest().revision


def test_a_stale_upstream_is_refused_and_reported(
    upstream: tuple[Stratum0, RepositoryServer, Recorder], tmp_path: Path
) -> None:
    s0, server, _ = upstream
    stale = tmp_path / "stale"
    shutil.copytree(s0.layout.public, stale)  # the current revision, frozen
    publish(s0, cid_entries("b"), "/sw/g/b")
    spec = spec_for(s0, server, tmp_path / "s1")
    with ReplicaRunner([spec], interval=3600) as runner:
        wait_for(lambda: runner.status()[0].pulls == 1)
    held = revision_of(spec.dest)
    with make_server({s0.name: stale}) as old:
        old.start_background()
        stale_spec = ReplicaSpec(spec.fqrn, old.url_for(s0.name), spec.master_keys, spec.dest)
        errors: list[RcdsError] = []
        runner = ReplicaRunner(
            [stale_spec],
            interval=3600,
            on_result=lambda _n, r: errors.append(r) if isinstance(r, RcdsError) else None,
        )
        with runner:
            wait_for(lambda: runner.status()[0].pulls == 1)
        assert len(errors) == 1 and isinstance(errors[0], IntegrityError)
        assert "older than the replica's" in (runner.status()[0].last_error or "")
    assert revision_of(spec.dest) == held


def test_bad_runner_settings_are_refused(tmp_path: Path) -> None:
    spec = ReplicaSpec(
        "x.example.org", "http://127.0.0.1:9/cvmfs/x.example.org", tmp_path / "k", tmp_path / "d"
    )
    with pytest.raises(RcdsError, match="positive"):
        ReplicaRunner([spec], interval=0)
    with pytest.raises(RcdsError, match="twice"):
        ReplicaRunner([spec, spec])
