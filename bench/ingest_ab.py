"""CPU of one ingest, this checkout's ``src`` against another (e.g. main's), alternating.

Each run is ``ingest.py``'s own measurement (``new_repository`` then ``run_ingest``: one
``ingest_tar`` into a fresh repository in a child process, CPU read from ``/proc`` including the
worker processes); the two sources alternate per compression setting and round, so both see the
same load. On a shared machine compare the CPU seconds, not the wall::

    git -C /work/main archive main src | tar -x -C /tmp/main-src
    python ingest_ab.py --base-src /tmp/main-src/src --tar /var/tmp/inputs/venv.tar \\
        --compressions libdeflate:5,isal:2,zlib:6 --rounds 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

from abrun import ab_arguments, run_child, sources
from settle import add_settle_argument, remove_tree, settle

KEYS = ("cpu_seconds", "main_cpu_seconds", "worker_cpu_seconds", "other_cpu_seconds", "objects_written")
CHILD = (
    "import json, sys; from pathlib import Path; import ingest as B;"
    " B.new_repository(Path(sys.argv[1]), sys.argv[2]);"
    " print(json.dumps(B.run_ingest(Path(sys.argv[1]), Path(sys.argv[3]), 'sw/x')))"
)


def one(src: Path, compression: str, tar: Path, root: Path) -> dict[str, float]:
    """One ingest into a new repository ``root`` with ``src`` first on the path (the child and
    its workers inherit it). ``root`` is kept: deleting it now would slow the next ingest's
    file creation (bench/settle.py); the caller deletes them all at the end."""
    out = run_child(src, CHILD, str(root), compression, str(tar))
    figures: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return figures


def main() -> None:
    """Alternate base and new per setting and round; print one line per ingest."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ab_arguments(ap, rounds_default=1)
    ap.add_argument("--compressions", default="libdeflate:5,isal:2,zlib:6")
    add_settle_argument(ap)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ingest-ab-"))
    numbers = itertools.count(1)
    try:
        settle(work, wait=not args.no_settle)
        for rnd in range(1, args.rounds + 1):
            for compression in args.compressions.split(","):
                for name, src in sources(args.base_src):
                    f = one(src, compression, args.tar, work / f"repo-{next(numbers)}")
                    figures = " ".join(f"{k}={f[k]:.2f}" for k in KEYS)
                    print(
                        f"round {rnd} {name:4} {compression:13} wall={f['seconds']:.2f} {figures}", flush=True
                    )
    finally:
        remove_tree(work)


if __name__ == "__main__":
    main()
