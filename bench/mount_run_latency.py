"""Latency of one reader's run on a cold mount, with and without the download worker processes.

Run from ``bench/`` with the ``src`` to measure on ``PYTHONPATH``::

    PYTHONPATH=../src python mount_run_latency.py --repo DIR [--dirs 150] [--rounds 2]

``--repo`` is a published repository (``public/``, ``keys/``; e.g. ``bench/mount.py --keep``'s
``repo``), served on loopback by the engine's HTTP server. For the first ``--dirs`` directories
of the tree with 4 or more small files, one after the other, it does what the mount does for a
cold read of the directory's first file: plan the directory's prefetch
(``RepoMount.prefetch_directory``), wait for the file's object (``Prefetcher.wait``: the reader
takes the run), read it. It prints the median, 90th percentile and mean seconds per directory
for 0 workers (in the daemon) and 2, alternating, each with an empty cache. No FUSE involved.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from mount_cold import serve

from mount import REPO, TREE
from rcds.client.repository import Repository
from rcds.format.hashes import ObjectKind
from rcds.mount.inodes import InodeSpace
from rcds.mount.repomount import RepoMount


def directories(repo: Repository, count: int) -> list[tuple[str, str]]:
    """(directory, its first small file) for the first ``count`` directories with 4 small files."""
    found: list[tuple[str, str]] = []
    for top, _, files in repo.walk(TREE):
        small = []
        for name in sorted(files):
            e = repo.entry(f"{top}/{name}")
            if 0 < e.size < (1 << 20) and not e.is_chunked:
                small.append(name)
        if len(small) >= 4:
            found.append((top, small[0]))
        if len(found) >= count:
            break
    return found


def one(url: str, key: Path, cache: Path, workers: int, count: int) -> list[float]:
    """Seconds per directory (see the module docstring)."""
    shutil.rmtree(cache, ignore_errors=True)
    repo = Repository.open_urls([url], [key], cache_dir=cache)
    rm = RepoMount(repo, InodeSpace(repo.fqrn, shared=False), owner=None, workers=workers)
    try:
        plan = directories(repo, count)
        time.sleep(1.0)  # the workers are up
        out = []
        for top, name in plan:
            e = repo.entry(f"{top}/{name}")
            assert e.hash is not None
            t0 = time.perf_counter()
            rm.prefetch_directory(top, skip=name)
            rm.prefetcher.wait(e.hash, ObjectKind.FILE, 30, e.size, e.compressed)
            data = repo.source.read_object(e.hash, ObjectKind.FILE, e.size)
            out.append(time.perf_counter() - t0)
            assert len(data) == e.size
        return out
    finally:
        rm.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, required=True, help="published repository (public/, keys/)")
    ap.add_argument("--dirs", type=int, default=150)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    server, url = serve(args.repo / "public", str(Path(__file__).resolve().parent.parent / "src"))
    key = args.repo / "keys" / f"{REPO}.pub"
    try:
        with tempfile.TemporaryDirectory(prefix="mount-run-latency-") as tmp:
            for _ in range(args.rounds):
                for workers in (0, 2):
                    lat = sorted(one(url, key, Path(tmp) / "cache", workers, args.dirs))
                    print(
                        f"workers={workers} runs={len(lat)} median {statistics.median(lat) * 1000:.1f} ms"
                        f"  p90 {lat[int(len(lat) * 0.9)] * 1000:.1f} ms"
                        f"  mean {statistics.mean(lat) * 1000:.1f} ms",
                        flush=True,
                    )
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
