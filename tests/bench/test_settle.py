"""``bench/settle.py``: mass deletions recorded, and the wait before a file-creating measurement."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import settle

SHM = Path("/dev/shm")


@pytest.fixture
def stamps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stamp file, in this test's own state directory."""
    monkeypatch.setenv("RCDS_BENCH_STATE", str(tmp_path / "state"))
    return settle.stamp_file()


def _tree(root: Path, files: int) -> Path:
    for i in range(files):
        (root / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        (root / f"d{i % 3}" / f"f{i}").write_bytes(b"x")
    return root


def test_a_deleted_tree_on_disk_is_recorded_with_its_time(stamps: Path, tmp_path: Path) -> None:
    assert settle.filesystem_type(tmp_path) not in settle.MEMORY_FILESYSTEMS  # the test's premise
    small = _tree(tmp_path / "small", 10)
    settle.remove_tree(small, mass=20)  # 13 entries: not a mass deletion
    assert not small.exists() and settle.last_deletion() is None
    tree = _tree(tmp_path / "repo", 30)
    settle.remove_tree(tree, mass=20)
    assert not tree.exists()
    last = settle.last_deletion()
    assert last is not None and last[1] == str(tree)
    settle.remove_tree(tmp_path / "never-there")  # nothing deleted: nothing recorded
    assert len(stamps.read_text().splitlines()) == 1


@pytest.mark.skipif(not SHM.is_dir() or settle.filesystem_type(SHM) != "tmpfs", reason="no tmpfs at /dev/shm")
def test_deletions_on_a_tmpfs_are_not_recorded_and_writing_there_never_waits(stamps: Path) -> None:
    tree = _tree(Path(tempfile.mkdtemp(dir=SHM)), 5)
    settle.remove_tree(tree, mass=1)
    assert not tree.exists() and settle.last_deletion() is None
    settle.record_deletion(Path("/var/tmp/x"), now=1000.0)
    slept: list[float] = []
    assert settle.settle(SHM, clock=lambda: 1001.0, sleep=slept.append) == 0 and not slept


def test_settle_waits_out_the_rest_of_the_period_and_says_so(
    stamps: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settle.record_deletion(tmp_path / "old", now=1000.0)
    settle.record_deletion(tmp_path / "repo", now=2000.0)  # the last one counts
    now = [2000.0 + 200]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    waited = settle.settle(tmp_path, seconds=300, clock=lambda: now[0], sleep=sleep)
    assert waited == pytest.approx(100) and sum(slept) == pytest.approx(100)
    assert all(s <= settle.STEP_SECONDS for s in slept)
    out = capsys.readouterr().out
    assert f"{tmp_path / 'repo'} was deleted 200 s ago; waiting 100 s" in out
    # long enough after it: no wait, nothing said
    assert settle.settle(tmp_path, seconds=300, clock=lambda: 2300.0, sleep=sleep) == 0
    assert capsys.readouterr().out == ""


def test_without_waiting_it_warns_and_goes_on(
    stamps: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settle.record_deletion(tmp_path / "repo", now=5000.0)
    slept: list[float] = []
    assert settle.settle(tmp_path, wait=False, seconds=300, clock=lambda: 5010.0, sleep=slept.append) == 0
    assert not slept and "deleted 10 s ago (< 300 s)" in capsys.readouterr().out


def test_no_record_and_a_damaged_stamp_file_mean_no_wait(stamps: Path, tmp_path: Path) -> None:
    slept: list[float] = []
    assert settle.settle(tmp_path, sleep=slept.append) == 0
    stamps.parent.mkdir(parents=True)
    stamps.write_text("garbage line\n")
    assert settle.last_deletion() is None
    assert settle.settle(tmp_path, sleep=slept.append) == 0 and not slept


def test_the_ab_benches_take_the_shared_options() -> None:
    bench = Path(settle.__file__).parent
    for script in ("ingest_ab.py", "ingest_tree_ab.py"):
        out = subprocess.run(
            [sys.executable, str(bench / script), "--help"], capture_output=True, text=True, check=True
        ).stdout
        assert "--base-src" in out and "--tar" in out and "--rounds" in out
    assert (
        "--no-settle"
        in subprocess.run(
            [sys.executable, str(bench / "ingest_ab.py"), "--help"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
