"""CPU of the ingest's tree and catalog work alone, this checkout's ``src`` against another's.

Two stages of ``ingest_parts.py``, each in a fresh interpreter with one ``src`` first on the
path, on one core, the two sources alternating per round (so both see the same load):

* ``tar``: :func:`rcds.publish.tarsource.iter_tar` over the tarball, every file's data read;
* ``tree``: the same members through :class:`rcds.publish.tree_builder.TreeBuilder` into a fresh
  catalog with a writer that stores nothing, then the catalog finalised (the parent index,
  counters, VACUUM).

``tree - tar`` is what the main thread spends per ingest on catalog rows, path hashes, the tree's
bookkeeping and the finish, without compression or object writes. Each figure is the least CPU
of ``--repeat`` runs in the same interpreter::

    git -C /work/main archive main src | tar -x -C /tmp/main-src
    python ingest_tree_ab.py --base-src /tmp/main-src/src --tar /var/tmp/inputs/venv.tar --rounds 3
"""

from __future__ import annotations

import argparse
from pathlib import Path

from abrun import ab_arguments, rounds, run_child

CHILD = """
import sys, tempfile, shutil
from pathlib import Path
import ingest_parts as P
tar, repeat = Path(sys.argv[1]), int(sys.argv[2])
work = Path(tempfile.mkdtemp(prefix="rcds-bench-tree-"))
try:
    rt = min(P.timed(lambda: P.read_tar(tar))[1] for _ in range(repeat))
    bt = min(P.timed(lambda: P.build_tree(tar, work))[1] for _ in range(repeat))
finally:
    shutil.rmtree(work, ignore_errors=True)
print(f"{rt:.3f} {bt:.3f}")
"""


def one(src: Path, tar: Path, repeat: int) -> tuple[float, float]:
    """(tar, tree) CPU seconds with ``src`` first on the path."""
    tar_s, tree_s = run_child(src, CHILD, str(tar), str(repeat)).split()
    return float(tar_s), float(tree_s)


def main() -> None:
    """Alternate base and new per round; print one line per run."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ab_arguments(ap, rounds_default=2)
    ap.add_argument("--repeat", type=int, default=3, help="runs per stage in one interpreter (least CPU)")
    args = ap.parse_args()
    for rnd, name, src in rounds(args.rounds, args.base_src):
        tar_s, tree_s = one(src, args.tar, args.repeat)
        print(
            f"round {rnd} {name:4} tar={tar_s:.2f} tree={tree_s:.2f} tree-tar={tree_s - tar_s:.2f} CPU s",
            flush=True,
        )


if __name__ == "__main__":
    main()
