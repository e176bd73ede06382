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
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
NEW_SRC = HERE.parent / "src"
KEYS = ("cpu_seconds", "main_cpu_seconds", "worker_cpu_seconds", "other_cpu_seconds", "objects_written")


def one(src: Path, compression: str, tar: Path, root: Path) -> dict[str, float]:
    """One ingest with ``src`` first on the path (the child and its workers inherit it)."""
    code = (
        "import json, sys; from pathlib import Path; import ingest as B;"
        " B.new_repository(Path(sys.argv[1]), sys.argv[2]);"
        " print(json.dumps(B.run_ingest(Path(sys.argv[1]), Path(sys.argv[3]), 'sw/x')))"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), str(HERE)]))
    try:
        out = subprocess.run(
            [sys.executable, "-c", code, str(root), compression, str(tar)],
            env=env,
            cwd=HERE,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    finally:
        shutil.rmtree(root, ignore_errors=True)
    figures: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return figures


def main() -> None:
    """Alternate base and new per setting and round; print one line per ingest."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-src", type=Path, required=True, help="the baseline's src directory")
    ap.add_argument("--tar", type=Path, required=True, help="an uncompressed input tarball")
    ap.add_argument("--compressions", default="libdeflate:5,isal:2,zlib:6")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ingest-ab-"))
    try:
        for rnd in range(1, args.rounds + 1):
            for compression in args.compressions.split(","):
                for name, src in (("base", args.base_src.resolve()), ("new", NEW_SRC)):
                    f = one(src, compression, args.tar, work / "repo")
                    figures = " ".join(f"{k}={f[k]:.2f}" for k in KEYS)
                    print(
                        f"round {rnd} {name:4} {compression:13} wall={f['seconds']:.2f} {figures}", flush=True
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
