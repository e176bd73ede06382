"""CPU of one ingest, this checkout's ``src`` against another (e.g. main's), alternating.

Each run ingests the tarball into a fresh repository in a child process (``ingest.py``'s
``new_repository``, then ``Stratum0.ingest_tar`` as ``ingest.py --child`` does it) and reads the
CPU of the main process (all its threads) and of each worker process, split into user and system
time (``/proc``); the two sources alternate per compression setting and round, so both see the
same load. Without ``--fresh-fs`` the repositories are kept until the end of the bench and
the bench first waits out its own recent mass deletions (bench/settle.py). On a shared machine
compare the CPU seconds, not the wall::

    git -C /work/main archive main src | tar -x -C /tmp/main-src
    python ingest_ab.py --base-src /tmp/main-src/src --tar /var/tmp/inputs/venv.tar \\
        --compressions libdeflate:5,isal:2,zlib:6 --rounds 2

Creating files on ext4 without a journal (this machine's ``/``) costs several times more system
time for minutes after a mass deletion (recently deleted inodes are skipped one by one:
docs/performance.md), so runs in a row disturb each other. ``--fresh-fs IMAGE`` (root only)
gives every run a new ext4 without a journal, made in ``IMAGE`` (put it on a tmpfs, e.g.
``/dev/shm/ab.img``) and mounted on a loop device: the system times are then comparable run to
run. Its block device is memory, so wall times there are not those of a disk. With
``--after-deletion N`` each run instead follows the creation and deletion of ``N`` files on
that file system (a repository deleted, a garbage collection just before a publish)::

    python ingest_ab.py --base-src /tmp/main-src/src --tar venv.tar --compressions isal:2 \\
        --rounds 2 --fresh-fs /dev/shm/ab.img --after-deletion 40000
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from abrun import ab_arguments, run_child, sources
from settle import add_settle_argument, remove_tree, settle

HERE = Path(__file__).resolve().parent
KEYS = (
    "cpu_seconds",
    "main_user",
    "main_sys",
    "worker_user",
    "worker_sys",
    "objects_written",
)
FS_BYTES = 4 << 30
CHILD = "import sys, ingest_ab; ingest_ab.child(*sys.argv[1:])"


def child(root: str, compression: str, tar: str) -> None:
    """In the child: a fresh repository, one ingest; print its figures as JSON."""
    sys.path.insert(0, str(HERE))
    import ingest as bench
    from common import proc_stat_fields

    from rcds.publish import workers
    from rcds.publish.stratum0 import Stratum0

    bench.new_repository(Path(root), compression)
    os.sync()
    s0 = Stratum0(Path(root), bench.REPO)
    t0, r0 = time.perf_counter(), os.times()
    with open(tar, "rb") as f:
        result = s0.ingest_tar(f, "sw/x")
    seconds, r1 = time.perf_counter() - t0, os.times()
    tick = os.sysconf("SC_CLK_TCK")
    stats = [proc_stat_fields(p) for p in workers.pids()]
    wu = sum(int(s[11]) for s in stats if s) / tick
    ws = sum(int(s[12]) for s in stats if s) / tick
    mu, ms = r1.user - r0.user, r1.system - r0.system
    figures = {
        "seconds": seconds,
        "cpu_seconds": mu + ms + wu + ws,
        "main_user": mu,
        "main_sys": ms,
        "worker_user": wu,
        "worker_sys": ws,
        "objects_written": result.stats.objects_written,
    }
    workers.shutdown()
    print(json.dumps(figures))


def fresh_fs(image: Path, mount: Path) -> None:
    """A new ext4 without a journal in ``image``, mounted on ``mount`` (unmounted first)."""
    subprocess.run(["umount", str(mount)], capture_output=True, check=False)
    with open(image, "wb") as f:
        f.truncate(FS_BYTES)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-E", "lazy_itable_init=0", str(image)],
        check=True,
    )
    mount.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)


def delete_files(where: Path, count: int) -> None:
    """Create ``count`` small files in 256 directories under ``where`` and delete them all."""
    dirs = [where / f"{i:02x}" for i in range(256)]
    for d in dirs:
        d.mkdir(parents=True)
    for i in range(count):
        (dirs[i % 256] / str(i)).write_bytes(b"x" * 4096)
    os.sync()
    shutil.rmtree(where)


def one(src: Path, compression: str, tar: Path, root: Path) -> dict[str, float]:
    """One ingest into a new repository ``root`` with ``src`` first on the path (the child and
    its workers inherit it)."""
    out = run_child(src, CHILD, str(root), compression, str(tar))
    figures: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return figures


def main() -> None:
    """Alternate base and new per setting and round; print one line per ingest."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ab_arguments(ap, rounds_default=1)
    ap.add_argument("--compressions", default="libdeflate:5,isal:2,zlib:6")
    ap.add_argument("--fresh-fs", type=Path, help="a new ext4 in this image file for every run (root)")
    ap.add_argument("--after-deletion", type=int, default=0, help="with --fresh-fs: files deleted first")
    add_settle_argument(ap)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ingest-ab-"))
    mount = work / "fs"
    numbers = itertools.count(1)
    try:
        if args.fresh_fs is None:
            settle(work, wait=not args.no_settle)
        for rnd in range(1, args.rounds + 1):
            for compression in args.compressions.split(","):
                for name, src in sources(args.base_src):
                    if args.fresh_fs is not None:
                        fresh_fs(args.fresh_fs, mount)
                        if args.after_deletion:
                            delete_files(mount / "deleted", args.after_deletion)
                        root = mount / "repo"
                    else:
                        root = work / f"repo-{next(numbers)}"  # kept: see bench/settle.py
                    f = one(src, compression, args.tar, root)
                    figures = " ".join(f"{k}={f[k]:.2f}" for k in KEYS)
                    print(
                        f"round {rnd} {name:4} {compression:13} wall={f['seconds']:.2f} {figures}", flush=True
                    )
    finally:
        if args.fresh_fs is not None:
            subprocess.run(["umount", str(mount)], capture_output=True, check=False)
            args.fresh_fs.unlink(missing_ok=True)
        remove_tree(work)


if __name__ == "__main__":
    main()
