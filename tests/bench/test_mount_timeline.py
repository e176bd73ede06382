"""``bench/mount_timeline.py``: the counting reader, the per-thread samples and their deltas."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import mount_timeline as tl


def test_the_reader_counts_the_files_it_read(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "d").mkdir(parents=True)
    for i in range(5):
        (tree / "d" / f"f{i}").write_bytes(b"x" * 100)
    progress = tmp_path / "progress"
    out = subprocess.run(
        [sys.executable, "-c", tl.TL_READER, str(tree), "2", str(progress)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.strip() == "500"
    time.sleep(0.05)
    done = tl._progress(progress)
    assert done and done[-1][1] == 5 and all(t > 0 for t, _ in done)


BUSY = """
import time
end = time.process_time() + 0.2
while time.process_time() < end:
    pass
"""


def test_a_sampler_sees_a_process_threads_and_their_cpu() -> None:
    child = subprocess.Popen([sys.executable, "-c", BUSY])
    sampler = tl.Sampler(0.01, {"reader": child.pid})
    sampler.start()
    assert child.wait(60) == 0
    sampler.stop()
    assert len(sampler.samples) >= 5
    deltas = tl._deltas(sampler.samples)
    run_ms = sum(
        run for _, _, per, _ in deltas for (role, _p, _t), (run, _w, _n) in per.items() if role == "reader"
    )
    assert 100 < run_ms < 5000  # most of the child's 200 ms busy loop (its start-up may come first)
