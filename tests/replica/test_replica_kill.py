"""``rcds replica snapshot`` killed with SIGKILL at several points, then resumed.

The upstream is a real loopback server; the snapshot runs as a separate ``rcds`` process, which
the server's access-log hook kills (SIGKILL) right after answering its K-th request. After each
kill the replica must still verify at its previous revision with every stored catalog complete,
and no attempt may download anything the replica already held when it started.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
from pathlib import Path

import pytest

from rcds.format.hashes import parse_object_name
from rcds.publish.stratum0 import Stratum0
from rcds.serve.handler import AccessRecord
from rcds.serve.http import make_server
from rcds.storage.local import LocalStore

from replkit import Recorder, assert_closed, cid_entries, key_file, replica_add, revision_of, verify_dir
from testkit import RCDS, publish, rcds

pytestmark = pytest.mark.timeout(180)


def _data_targets(records: list[AccessRecord], fqrn: str) -> list[str]:
    prefix = f"/cvmfs/{fqrn}/"
    return [r.target[len(prefix) :] for r in records if r.status == 200 and "/data/" in r.target]


def test_snapshot_killed_at_several_points_resumes_without_downloading_twice(
    repo: Stratum0, tmp_path: Path
) -> None:
    fqrn = repo.name
    for tag in ("a", "b"):
        publish(repo, cid_entries(tag, 10), f"/sw/g/{tag}")
    recorder = Recorder()
    server = make_server({fqrn: repo.layout.public}, access_log=recorder)
    server.start_background()
    root = tmp_path / "s1"
    try:
        replica_add(root, fqrn, server.url_for(fqrn), key_file(repo))
        rcds("replica", "snapshot", fqrn, "--root", str(root))
        replica = root / fqrn
        old_revision = revision_of(replica)
        old_manifest = (replica / ".cvmfspublished").read_bytes()
        for tag in ("c", "d", "e"):
            publish(repo, cid_entries(tag, 30), f"/sw/g/{tag}")
        new_revision = repo.manifest().revision
        store = LocalStore(replica)

        kills = 0
        for kill_after in (3, 5, 12, 20, 20):
            held = set(store.list_objects())
            recorder.take()
            proc = subprocess.Popen(
                [*RCDS, "replica", "snapshot", fqrn, "--root", str(root), "--workers", "4"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )

            def hook(
                record: AccessRecord, n: int, proc: subprocess.Popen[bytes] = proc, k: int = kill_after
            ) -> None:
                if n == k:
                    os.kill(proc.pid, signal.SIGKILL)

            recorder.hook = hook
            proc.wait(60)
            recorder.hook = None
            attempt = _data_targets(recorder.take(), fqrn)
            assert not held & set(attempt), "an attempt downloaded objects the replica already held"
            assert len(attempt) == len(set(attempt)), "an object was downloaded twice in one attempt"
            if proc.returncode == -signal.SIGKILL:
                kills += 1
                # The replica still serves the previous revision, complete and verified.
                assert (replica / ".cvmfspublished").read_bytes() == old_manifest
                assert verify_dir(replica, fqrn, key_file(repo)).revision == old_revision
                assert_closed(store, tmp_path)
            else:
                assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
            if proc.stderr:
                proc.stderr.close()
        assert kills >= 4

        held = set(store.list_objects())
        missing_before = len(held)
        result = rcds("replica", "snapshot", fqrn, "--root", str(root))
        fetched = _data_targets(recorder.take(), fqrn)
        assert not held & set(fetched)
        assert len(fetched) == len(set(fetched))
        assert f"revision {new_revision}" in result.stdout
        assert revision_of(replica) == new_revision
        assert verify_dir(replica, fqrn, key_file(repo)).revision == new_revision
        assert_closed(store, tmp_path)
        # Everything the new revision needs that was not held came in the resumed pull, once.
        now_held = set(store.list_objects())
        assert set(fetched) == now_held - held
        assert len(now_held) > missing_before
        # The killed attempts left no temp files behind once a pull completed.
        assert not any((replica / "data" / "txn").iterdir())
        assert not (replica / ".cvmfs_is_snapshotting").exists()
        assert all(parse_object_name(n) for n in now_held)
    finally:
        server.stop()


def test_snapshot_killed_at_random_moments_never_shows_a_partial_revision(
    repo: Stratum0, tmp_path: Path
) -> None:
    """Kills by timer (so also while catalogs, the certificate, whitelist or manifest are written)."""
    fqrn = repo.name
    publish(repo, cid_entries("a", 10), "/sw/g/a")
    recorder = Recorder()
    server = make_server({fqrn: repo.layout.public}, access_log=recorder)
    server.start_background()
    root = tmp_path / "s1"
    replica = root / fqrn
    try:
        replica_add(root, fqrn, server.url_for(fqrn), key_file(repo))
        rcds("replica", "snapshot", fqrn, "--root", str(root))
        store = LocalStore(replica)
        rng = random.Random(12)
        for round_ in range(6):
            if round_ % 2 == 0:
                publish(repo, cid_entries(f"r{round_}", 20), f"/sw/g/r{round_}")
            held = set(store.list_objects())
            before = (replica / ".cvmfspublished").read_bytes()
            recorder.take()
            proc = subprocess.Popen(
                [*RCDS, "replica", "snapshot", fqrn, "--root", str(root), "--workers", "4"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                proc.wait(rng.uniform(0.3, 2.0))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait(30)
            attempt = _data_targets(recorder.take(), fqrn)
            assert not held & set(attempt)
            after = (replica / ".cvmfspublished").read_bytes()
            # Either the old manifest or the complete new revision: nothing in between.
            assert after in (before, (repo.layout.public / ".cvmfspublished").read_bytes())
            assert verify_dir(replica, fqrn, key_file(repo)).revision <= repo.manifest().revision
            assert_closed(store, tmp_path)
        rcds("replica", "snapshot", fqrn, "--root", str(root))
        assert revision_of(replica) == repo.manifest().revision
        assert verify_dir(replica, fqrn, key_file(repo)).revision == repo.manifest().revision
    finally:
        server.stop()
