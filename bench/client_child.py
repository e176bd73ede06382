"""The timed child processes of ``bench/client.py``: each run is a fresh process, as a job is.

Run as ``python bench/client_child.py MODE ARGS...``; prints one JSON line of figures. This file
imports only what the child measures (the standard library's ``json`` and ``pathlib``, and
rcds for the rcds modes): not the harness (``argparse``, ``subprocess``, ``statistics``,
``concurrent.futures`` cost ~70 ms of start-up that a job reading files does not pay).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

TREE = "/sw/bench/venv"
"""The path of the tree in the repository (``bench/client.py`` publishes it there)."""


def child_read(args: list[str]) -> None:
    """``read URL KEY CACHE LIST THREADS``: open the repository, read the listed files; print JSON.

    ``THREADS`` 0 means: prefetch the list first (pipelined), then read sequentially.
    """
    from rcds.client.repository import Repository

    url, key, cache, listing, threads = args
    paths = json.loads(Path(listing).read_text())
    t0 = time.perf_counter()
    repo = Repository.open_urls([url], [key], cache_dir=Path(cache), probe=False)
    nbytes = 0
    if int(threads) == 0:
        repo.prefetch(paths)

    def read(path: str) -> int:
        with repo.open(path) as f:
            return len(f.read())

    if int(threads) > 1:
        import concurrent.futures as cf

        with cf.ThreadPoolExecutor(int(threads)) as pool:
            nbytes = sum(pool.map(read, paths))
    else:
        nbytes = sum(read(p) for p in paths)
    seconds = time.perf_counter() - t0
    repo.close()
    print(json.dumps({"seconds": seconds, "bytes": nbytes, "files": len(paths)}))


def child_walk(args: list[str]) -> None:
    """``walk URL KEY CACHE``: open the repository, walk it and read every file sequentially."""
    from rcds.client.repository import Repository

    url, key, cache = args
    t0 = time.perf_counter()
    repo = Repository.open_urls([url], [key], cache_dir=Path(cache), probe=False)
    nbytes = files = 0
    todo = [TREE]
    while todo:
        for e in repo.scandir(todo.pop()):
            if e.is_dir():
                todo.append(e.path)
            elif e.is_file():
                with repo.open(e.path) as f:
                    nbytes += len(f.read())
                files += 1
    seconds = time.perf_counter() - t0
    repo.close()
    print(json.dumps({"seconds": seconds, "bytes": nbytes, "files": files}))


def child_local(args: list[str]) -> None:
    """``local DIR [LIST]``: read every regular file below DIR (or the listed ones) sequentially."""
    root = Path(args[0])
    t0 = time.perf_counter()
    nbytes = files = 0
    if len(args) > 1:
        paths = [root / p for p in json.loads(Path(args[1]).read_text())]
    else:
        paths = [Path(d, n) for d, _, names in os.walk(root) for n in names]
    for p in paths:
        if p.is_symlink() or not p.is_file():
            continue
        with open(p, "rb") as f:
            nbytes += len(f.read())
        files += 1
    print(json.dumps({"seconds": time.perf_counter() - t0, "bytes": nbytes, "files": files}))


def main() -> None:
    """``MODE ARGS...``: run one child mode."""
    {"read": child_read, "walk": child_walk, "local": child_local}[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    main()
