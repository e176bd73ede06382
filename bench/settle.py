"""Mass deletions by the benches, and the wait before a measurement that creates many files.

On this machine ``/`` is ext4 without a journal: for ~1-5 minutes after many files are deleted,
creating files costs several times more kernel CPU (the allocator skips recently deleted inodes,
and checking them is not free). So a bench that deletes a repository or an output tree on disk
records it here (:func:`remove_tree` or :func:`record_deletion`: a stamp file, one line per
deletion, under ``~/.cache/rcds-bench/``, shared by every bench and every run), and before a
measurement that creates many files on disk it calls :func:`settle`, which waits until
:data:`SETTLE_SECONDS` have passed since the last recorded deletion (or, with ``--no-settle``,
says that the figures may be disturbed and goes on). On a tmpfs none of this applies: deletions
there are not recorded, and nothing waits for a measurement that writes there.

Deletions by other programs (a teammate's test run, an ``rm -rf``) are not seen: check
``uptime`` and compare the system CPU of runs, as docs/performance.md says.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

SETTLE_SECONDS = 300.0
"""How long after a mass deletion on disk file creation is taken to be back to normal."""

STEP_SECONDS = 30.0
"""How often a waiting :func:`settle` says how long is left."""

MASS_FILES = 1000
"""A deletion of this many entries or more is recorded (a smaller one has no after-effect worth
waiting for)."""

MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})


def stamp_file() -> Path:
    """Where the deletions are recorded (``$RCDS_BENCH_STATE`` or ``~/.cache/rcds-bench``)."""
    base = os.environ.get("RCDS_BENCH_STATE") or Path.home() / ".cache" / "rcds-bench"
    return Path(base) / "mass-deletions"


def filesystem_type(path: Path) -> str:
    """The type of the filesystem that holds ``path`` (its nearest existing ancestor), from
    ``/proc/mounts``; "" if unknown."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    real = os.path.realpath(p)
    best, kind = "", ""
    try:
        with open("/proc/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 3:
                    continue
                mnt = fields[1].replace("\\040", " ")
                inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) >= len(best):
                    best, kind = mnt, fields[2]
    except OSError:
        return ""
    return kind


def in_memory(path: Path) -> bool:
    """Whether ``path`` is on a tmpfs (or ramfs): no after-effect of deletions there."""
    return filesystem_type(path) in MEMORY_FILESYSTEMS


def record_deletion(path: Path, now: float | None = None) -> None:
    """Record that a large tree at ``path`` was just deleted (nothing for a tmpfs)."""
    if in_memory(path):
        return
    stamp = stamp_file()
    stamp.parent.mkdir(parents=True, exist_ok=True)
    when = time.time() if now is None else now
    with open(stamp, "a") as f:
        f.write(f"{when:.0f} {os.path.abspath(path)}\n")


def count_entries(path: Path, limit: int) -> int:
    """How many entries the tree at ``path`` holds, counting stops at ``limit``."""
    n = 0
    for _, dirs, files in os.walk(path):
        n += len(dirs) + len(files)
        if n >= limit:
            break
    return n


def remove_tree(path: Path, mass: int = MASS_FILES) -> None:
    """Delete the tree at ``path`` (if it is there); record the deletion if it held ``mass``
    entries or more."""
    if not os.path.lexists(path):
        return
    large = count_entries(path, mass) >= mass
    shutil.rmtree(path, ignore_errors=True)
    if large:
        record_deletion(path)


def last_deletion() -> tuple[float, str] | None:
    """The time and path of the last recorded deletion, or None."""
    try:
        lines = stamp_file().read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        when, _, where = line.partition(" ")
        try:
            return float(when), where
        except ValueError:
            continue
    return None


def settle(
    where: Path,
    wait: bool = True,
    seconds: float = SETTLE_SECONDS,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """Before creating many files under ``where``: wait until ``seconds`` have passed since the
    last recorded deletion (``wait=False``: only warn). Prints what it does; returns the seconds
    it waited (0 for a tmpfs, or when the last deletion is long enough ago)."""
    if in_memory(where):
        return 0.0
    last = last_deletion()
    if last is None:
        return 0.0
    when, what = last
    left = when + seconds - clock()
    if left <= 0:
        return 0.0
    ago = seconds - left
    if not wait:
        print(
            f"  settle: {what} was deleted {ago:.0f} s ago (< {seconds:.0f} s): file creation on this"
            " disk may still be slow (--no-settle: measuring anyway; compare the system CPU)",
            flush=True,
        )
        return 0.0
    print(f"  settle: {what} was deleted {ago:.0f} s ago; waiting {left:.0f} s before measuring", flush=True)
    waited = 0.0
    while waited < left:
        step = min(STEP_SECONDS, left - waited)
        sleep(step)
        waited += step
        if waited < left:
            print(f"  settle: {left - waited:.0f} s left", flush=True)
    return waited


def add_settle_argument(ap: argparse.ArgumentParser) -> None:
    """``--no-settle``: do not wait after mass deletions, only warn."""
    ap.add_argument(
        "--no-settle",
        action="store_true",
        help=f"do not wait {SETTLE_SECONDS:.0f} s after the benches' last mass deletion on disk before"
        " a measurement that creates many files (bench/settle.py); warn instead",
    )
