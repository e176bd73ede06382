"""The A/B harness of the ``rcds get`` benches (``get_cpu.py``, ``get_timeline.py``).

Both take ``--keep DIR`` (the work directory of an earlier ``bench/client.py --keep DIR`` run:
its published repository is reused), ``--base-src``, ``--rounds`` and ``--out``; nginx serves the
repository on loopback (``bench/nginx_site.py``) and each round copies the tree once per source
tree, in turn. :func:`run_rounds` is that part, written once.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from client_runs import use_bytecode_cache
from nginx_site import start_nginx

from client import REPO

R = TypeVar("R")

Copy = Callable[[Path | None, str, str, Path, int], R]
"""One copy: (source tree or None for this one, server URL, public key path, output directory,
server pid) -> what the bench measured."""


def run_rounds(
    description: str, prefix: str, copy: Copy[R], show: Callable[[str, R], None]
) -> dict[str, list[R]]:
    """Parse the common arguments, serve the kept repository with nginx, and run ``copy`` for
    each source tree in turn for ``--rounds`` rounds (``show`` prints each result); the results
    per source tree name (``this tree``, ``--base-src``)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--keep", type=Path, required=True, help="the work directory of bench/client.py --keep")
    ap.add_argument("--base-src", type=Path, help="another rcds source tree (the directory holding rcds/)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path("/dev/shm"), help="where the copies go (default: tmpfs)")
    args = ap.parse_args()
    public = args.keep / "repo" / "public"
    key = str(args.keep / "repo" / "keys" / f"{REPO}.pub")
    srcs: dict[str, Path | None] = {"this tree": None}
    if args.base_src is not None:
        srcs["--base-src"] = args.base_src.resolve()
    use_bytecode_cache(args.keep / "pycache", *[p for p in srcs.values() if p is not None])
    nginx_dir = Path(tempfile.mkdtemp(prefix=f"{prefix}-nginx-"))
    nginx, url = start_nginx(public, REPO, nginx_dir, [])
    results: dict[str, list[R]] = {name: [] for name in srcs}
    try:
        for _ in range(args.rounds):
            for name, src in srcs.items():
                got = copy(src, url, key, args.out, nginx.pid)
                results[name].append(got)
                show(name, got)
    finally:
        nginx.terminate()
        nginx.wait()
        shutil.rmtree(nginx_dir, ignore_errors=True)
    return results
