"""The same page-cache state for every route of a benchmark: the server's files read just before.

On these machines the kernel's DAMON ``pageout`` scheme evicts pages a few seconds after their
last use, so whether a server reads its files from memory or from disk depended on what ran
before: the tarball (one 490 MB file, read ahead) and the repository's objects (~12,400 small
files) were each sometimes cached and sometimes not, and ``curl | tar -x`` moved from 0.79 to
1.52 s between runs. :func:`warm` reads every file a route's server will serve (not timed) right
before the run, so that both routes start with their served files in the page cache.
"""

from __future__ import annotations

import os
from pathlib import Path

BLOCK = 1 << 20


def repository_files(public: Path, tarballs: tuple[str, ...]) -> list[Path]:
    """Every file of the served directory ``public`` but the tarballs: what ``rcds get`` reads."""
    out = []
    for d, _, names in os.walk(public):
        for n in names:
            if d != str(public) or n not in tarballs:
                out.append(Path(d, n))
    return out


def warm(paths: list[Path]) -> int:
    """Read ``paths`` whole (into the page cache); the bytes read."""
    total = 0
    buf = bytearray(BLOCK)
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        try:
            while n := os.readv(fd, [buf]):
                total += n
        finally:
            os.close(fd)
    return total
