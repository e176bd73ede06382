"""A real software tree for the benches: ``pip install --target`` of a few scientific packages.

Made at bench time (``pip`` with the machine's configured index), once: it is kept in a cache
directory (``$RCDS_BENCH_CACHE/pip-target``, default ``~/.cache/rcds-bench/pip-target``) and
reused by later runs. It is built in a temp directory beside it and renamed into place when
complete, so an existing directory is a complete tree. About 480 MB in ~13,000 files (``.py``,
``.pyc``, ``.so``, data files, ``bin/`` scripts), as a job's software area looks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("numpy", "scipy", "pandas", "matplotlib", "sympy")
IMPORTS = "import numpy, scipy.linalg, scipy.sparse, pandas, matplotlib.pyplot, sympy"
"""What a job start imports from :data:`PACKAGES` (with ``MPLBACKEND=Agg``): bench/mount.py."""


def default_dir() -> Path:
    """Where the tree is kept between runs."""
    base = os.environ.get("RCDS_BENCH_CACHE") or os.path.expanduser("~/.cache/rcds-bench")
    return Path(base) / "pip-target"


def pip_tree(where: Path | None = None, packages: tuple[str, ...] = PACKAGES) -> Path:
    """The tree (made now with ``pip install --target`` unless ``where`` exists already).

    The versions are whatever the index offers when the tree is made (``where.txt`` lists them),
    so figures of different trees are compared within one run only."""
    where = where or default_dir()
    if where.is_dir():
        return where
    where.parent.mkdir(parents=True, exist_ok=True)
    tmp = where.with_name(f"{where.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    print(f"making the input: pip install --target {where} {' '.join(packages)}", flush=True)
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--target", str(tmp), *packages], check=True)
    versions = sorted(p.name.removesuffix(".dist-info") for p in tmp.glob("*.dist-info"))
    where.with_name(where.name + ".txt").write_text("\n".join(versions) + "\n")
    os.rename(tmp, where)
    print(f"made in {time.perf_counter() - t0:.0f} s", flush=True)
    return where


def tree_size(root: Path) -> tuple[int, int]:
    """(regular files, their bytes) below ``root`` (symlinks not followed)."""
    files = nbytes = 0
    for d, _, names in os.walk(root):
        for n in names:
            st = os.lstat(os.path.join(d, n))
            if st.st_mode & 0o170000 == 0o100000:
                files += 1
                nbytes += st.st_size
    return files, nbytes


def tar_tree(root: Path, out: Path) -> tuple[int, int]:
    """A plain tar of the tree's contents (names relative to ``root``, sorted, owner root);
    (regular files, their bytes)."""
    names = sorted(os.listdir(root))
    tar = ["tar", "--sort=name", "--owner=0", "--group=0", "--numeric-owner"]
    subprocess.run([*tar, "-C", str(root), "-cf", str(out), *names], check=True)
    return tree_size(root)
