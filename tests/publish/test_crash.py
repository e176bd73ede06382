"""SIGKILL an ingest at many different moments: the repository always verifies afterwards."""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rcds.publish.stratum0 import Stratum0

from testkit import NAME, Entry, make_tar, publish, verify

KILLS = 20
KILLS_S3 = 6
"""Fewer on S3 (every ingest is slower there); the same moments, spread over the whole ingest."""

INGEST = r"""
import sys
from pathlib import Path
from rcds.publish.stratum0 import Stratum0
s0 = Stratum0(Path(sys.argv[1]), sys.argv[2])
with open(sys.argv[3], "rb") as f:
    s0.ingest_tar(f, sys.argv[4], replace=True)
print("done", flush=True)
"""


def _payload(tmp_path: Path, files: int = 1500, big: int = 6 << 20) -> Path:
    """A tarball that takes the engine a good fraction of a second: many files and a chunked one."""
    rng = random.Random(7)
    entries = [Entry(f"pkg/m{i}.py", (f"# module {i}\n" + f"x = {i}\n" * 200).encode()) for i in range(files)]
    entries.append(Entry("data/big.bin", rng.randbytes(big)))
    path = tmp_path / "payload.tar"
    path.write_bytes(make_tar(entries, "none"))
    return path


@pytest.mark.timeout(600)
@pytest.mark.parametrize(("backend", "kills"), [("local", KILLS), ("s3", KILLS_S3)])
def test_sigkill_at_random_moments_leaves_a_repository_that_verifies(
    backend: str, kills: int, request: pytest.FixtureRequest, view_factory, tmp_path
):
    repo: Stratum0 = request.getfixturevalue("repo" if backend == "local" else "s3_repo")
    publish(repo, [Entry("keep.txt", b"revision one\n")], "/sw/grp/stable")
    # on S3 each object is a round trip or two: a smaller input takes as long as the local one
    payload = _payload(tmp_path) if backend == "local" else _payload(tmp_path, 300, 2 << 20)
    # how long does a whole ingest take here?
    t0 = time.monotonic()
    subprocess.run(
        [sys.executable, "-c", INGEST, str(repo.layout.root), NAME, str(payload), "/sw/grp/probe"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    duration = time.monotonic() - t0
    rng = random.Random(2026)
    killed = runs = 0
    moments = []
    while killed < kills and runs < 2 * kills:
        before = repo.manifest().revision
        proc = subprocess.Popen(
            [sys.executable, "-c", INGEST, str(repo.layout.root), NAME, str(payload), f"/sw/grp/c{runs % 3}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        # moments spread evenly over start-up, object writing, catalog commit and manifest write
        fraction = (killed + rng.random()) / kills
        time.sleep(duration * fraction)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        out = proc.stdout.read() if proc.stdout else b""
        for pipe in (proc.stdout, proc.stderr):
            if pipe:
                pipe.close()
        runs += 1
        if proc.returncode == -signal.SIGKILL and b"done" not in out:
            killed += 1
            moments.append(fraction)
        else:
            duration *= 0.8  # the machine got faster than the probe: aim earlier
        after = repo.manifest().revision
        assert after in (before, before + 1), f"run {runs}: revision jumped from {before} to {after}"
        report = verify(repo)
        assert report.revision == after
        v = view_factory(repo)
        assert v.read("/sw/grp/stable/keep.txt") == b"revision one\n"
    assert killed >= kills, f"only {killed} of {runs} runs were killed before finishing"
    assert len({round(m, 2) for m in moments}) == len(moments)  # all different moments
    # a re-run of the ingest succeeds after all that, and leaves no garbage in the work areas
    result = repo.ingest_tar(io.BytesIO(payload.read_bytes()), "/sw/grp/c0", replace=True)
    assert result.revision == repo.manifest().revision
    if backend == "local":
        assert os.listdir(repo.layout.public / "data" / "txn") == []
    else:
        assert repo.store.clean_temp() == 0  # no unfinished upload is left
    verify(repo)
    gc = repo.gc(keep_revisions=1)
    assert gc.deleted > 0  # objects of killed runs and old revisions
    verify(repo)
