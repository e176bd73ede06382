"""System time of creating object files, by route: what ``LocalStore.put_object`` could do.

Two forked writers (as the ingest's two worker processes) each store half of ``--count`` objects
of ``--size`` random bytes under ``data/xx/`` of a fresh store in ``--dir``, by one route:

* ``txn``: temp file in the shared ``data/txn`` + ``rename`` (what ``put_object`` does);
* ``bucket``: temp file in the object's own ``data/xx`` + ``rename`` (one directory);
* ``tmpfile``: unnamed file (``O_TMPFILE``) in ``data/xx``, named by ``linkat(AT_EMPTY_PATH)``;
* ``tmpfile-fd``: the same, relative to a kept descriptor of each ``data/xx``.

Every route checks existence first (``access``), as the store does. The figures are the writers'
user and system CPU (``getrusage`` of the children). Put ``--dir`` on a file system where nothing
was deleted in the last minutes (ext4 without a journal skips recently deleted inodes one by
one: docs/performance.md), e.g. a fresh loop-mounted ext4 per route::

    python objfiles.py --dir /mnt/fresh/store --routes txn --count 18748
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import resource
import time

_LIBC = ctypes.CDLL(None, use_errno=True)
_LINKAT = _LIBC.linkat
_LINKAT.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
AT_FDCWD = -100
AT_EMPTY_PATH = 0x1000
CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
ANON = os.O_WRONLY | getattr(os, "O_TMPFILE", 0) | os.O_CLOEXEC


def _link(fd: int, dir_fd: int, name: bytes) -> None:
    if _LINKAT(fd, b"", dir_fd, name, AT_EMPTY_PATH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def writer(root: str, route: str, names: list[str], data: bytes) -> None:
    """Store ``data`` under each name (relative to ``root``) by ``route``."""
    base = root + "/"
    txn = f"{root}/data/txn/tmp.{os.getpid()}."
    dirs: dict[str, int] = {}
    for n, name in enumerate(names):
        final = base + name
        if os.access(final, os.F_OK):
            continue
        if route in ("txn", "bucket"):
            tmp = txn + str(n) if route == "txn" else f"{base}{name[:7]}/.tmp.{os.getpid()}.{n}"
            fd = os.open(tmp, CREATE, 0o644)
            os.write(fd, data)
            os.close(fd)
            os.rename(tmp, final)
        elif route == "tmpfile":
            fd = os.open(base + name[:7], ANON, 0o644)
            os.write(fd, data)
            _link(fd, AT_FDCWD, final.encode())
            os.close(fd)
        else:
            dfd = dirs.get(name[:7])
            if dfd is None:
                dfd = dirs[name[:7]] = os.open(base + name[:7], os.O_RDONLY | os.O_DIRECTORY)
            fd = os.open(".", ANON, 0o644, dir_fd=dfd)
            os.write(fd, data)
            _link(fd, dfd, name[8:].encode())
            os.close(fd)


def run(root: str, route: str, count: int, size: int, procs: int) -> tuple[float, float, float]:
    """Wall, user and system seconds of ``procs`` forked writers storing ``count`` objects."""
    for i in range(256):
        os.makedirs(f"{root}/data/{i:02x}", exist_ok=True)
    os.makedirs(f"{root}/data/txn", exist_ok=True)
    data = os.urandom(size)
    digests = (hashlib.sha1(b"%d" % i).hexdigest() for i in range(count))
    names = [f"data/{h[:2]}/{h[2:]}" for h in digests]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    pids = []
    for w in range(procs):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                writer(root, route, names[w::procs], data)
            except OSError as exc:
                print(f"{route}: {exc}", flush=True)
                code = 1
            os._exit(code)
        pids.append(pid)
    failed = [p for p in pids if os.waitpid(p, 0)[1] != 0]
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if failed:
        raise SystemExit(f"route {route} failed")
    return wall, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime


def main() -> None:
    """One line per route: wall, user, system seconds and system microseconds per object."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True, help="a new directory (one store per route under it)")
    ap.add_argument("--routes", default="txn,bucket,tmpfile,tmpfile-fd")
    ap.add_argument("--count", type=int, default=18748, help="objects (venv's new objects: 18,748)")
    ap.add_argument("--size", type=int, default=6400, help="bytes per object (venv's mean: ~6.4 KB)")
    ap.add_argument("--procs", type=int, default=2)
    args = ap.parse_args()
    for route in args.routes.split(","):
        wall, user, system = run(f"{args.dir}/{route}", route, args.count, args.size, args.procs)
        per = system / args.count * 1e6
        print(f"{route:11} wall={wall:.2f} user={user:.2f} sys={system:.2f} sys/object={per:.1f} us")


if __name__ == "__main__":
    main()
