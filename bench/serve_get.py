"""Server CPU per copy of the real tree: the engine's server (two source trees) against nginx.

Run: ``python bench/serve_get.py --keep DIR [--base-src SRC] [--rounds N] [--out DIR]``, where
``DIR`` is the work directory of an earlier ``bench/client.py --keep DIR`` run (its published
repository is reused). Up to three servers serve that repository on loopback at once, each in a
process of its own: the engine's :func:`rcds.serve.http.make_server` of this tree (``this``), the
same from ``--base-src`` (``base``, e.g. a copy of ``main``'s ``src``) and nginx
(``bench/nginx_site.py``, one process, ``sendfile on``). Each round copies the whole tree once
from each server in turn (alternating, so that a drift of the machine falls on all of them; the
order reversed every other round), with ``--cold`` after dropping the page cache of every object,
always with this tree's ``rcds get`` onto ``--out`` (default: ``/dev/shm``, a tmpfs). Per copy it
prints the wall time, the CPU seconds of the server (``/proc/<pid>/stat``, all threads, before
and after), per request (the requests of a copy are counted once from the engine's access log
in a separate copy first), the request rate over the copy, and the client's CPU (``rcds get``
process and its workers, rusage); then the medians over the rounds.

The server's CPU is what this bench is for: on two cores it is taken from the client.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from client_child import TREE
from client_runs import use_bytecode_cache
from common import proc_cpu_seconds as process_cpu
from get_cpu import COMMAND
from nginx_site import start_nginx

from client import REPO

_SERVE = r"""
import sys
from pathlib import Path
from rcds.serve.http import make_server
count = [0]
def log(record):
    count[0] += 1
s = make_server({sys.argv[2]: Path(sys.argv[1])}, access_log=log if sys.argv[3] == "1" else None)
print(s.url_for(sys.argv[2]), flush=True)
try:
    s.serve_forever()
except KeyboardInterrupt:
    pass
print(count[0], flush=True)
"""


def start_engine(public: Path, src: Path | None, count: bool = False) -> tuple[subprocess.Popen[str], str]:
    """The engine's server (of ``src``, else this tree) in a child process; its base URL."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVE, str(public), REPO, "1" if count else "0"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def copy(url: str, key: str, out: Path, server_pid: int) -> tuple[float, float, float]:
    """Copy the tree once with this tree's ``rcds get``; (wall, server CPU, client CPU)."""
    work = Path(tempfile.mkdtemp(prefix="rcds-serve-get-", dir=out))
    try:
        subprocess.run(["sync"], check=False)
        before = process_cpu(server_pid)
        t0 = time.perf_counter()
        done = subprocess.run(
            [
                *COMMAND,
                "--server",
                url,
                "--key",
                key,
                "--cache",
                str(work / "cache"),
                f"{REPO}:{TREE}",
                str(work / "out"),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        wall = time.perf_counter() - t0
        server = process_cpu(server_pid) - before
    finally:
        shutil.rmtree(work, ignore_errors=True)
    line = next(x for x in done.stderr.splitlines() if x.startswith("CPU "))
    _, main, workers = (float(v) for v in line.split()[1:])
    return wall, server, main + workers


def drop_cache(public: Path) -> None:
    """Drop the page cache of every object of the repository (``POSIX_FADV_DONTNEED``; the
    kernel's own eviction does the same to a tree left alone for a while on these machines)."""
    for path in public.glob("data/??/*"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def count_requests(public: Path, key: str, out: Path) -> int:
    """The requests of one copy, from the access log of a server of this tree."""
    proc, url = start_engine(public, None, count=True)
    try:
        copy(url, key, out, proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)  # the child prints its count on the way out
        stdout, _ = proc.communicate(timeout=30)
    return int(stdout.split()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", type=Path, required=True, help="the work directory of bench/client.py --keep")
    ap.add_argument("--base-src", type=Path, help="another rcds source tree (the directory holding rcds/)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--servers", default="this,base,nginx", help="which of this, base, nginx (comma-separated)"
    )
    ap.add_argument("--out", type=Path, default=Path("/dev/shm"), help="where the copies go (default: tmpfs)")
    ap.add_argument("--cold", action="store_true", help="drop the page cache of every object first")
    args = ap.parse_args()
    public = args.keep / "repo" / "public"
    key = str(args.keep / "repo" / "keys" / f"{REPO}.pub")
    wanted = args.servers.split(",")
    if "base" in wanted and args.base_src is None:
        wanted.remove("base")
    use_bytecode_cache(args.keep / "pycache", *([args.base_src.resolve()] if args.base_src else []))
    requests = count_requests(public, key, args.out)
    print(f"{requests} requests per copy", flush=True)
    servers: dict[str, tuple[subprocess.Popen[str] | subprocess.Popen[bytes], str]] = {}
    nginx_dir = Path(tempfile.mkdtemp(prefix="rcds-serve-get-nginx-"))
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in wanted}
    try:
        for name in wanted:
            if name == "nginx":
                servers[name] = start_nginx(public, REPO, nginx_dir, [])
            else:
                servers[name] = start_engine(public, args.base_src.resolve() if name == "base" else None)
        for rnd in range(args.rounds):
            for name in wanted if rnd % 2 == 0 else wanted[::-1]:  # no server always comes first
                proc, url = servers[name]
                if args.cold:
                    drop_cache(public)
                r = copy(url, key, args.out, proc.pid)
                results[name].append(r)
                show(name, requests, *r)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree(nginx_dir, ignore_errors=True)
    print(f"medians of {args.rounds} rounds:")
    for name, rows in results.items():
        show(name, requests, *(statistics.median(c) for c in zip(*rows, strict=True)))


def show(name: str, requests: int, wall: float, server: float, client: float) -> None:
    """Print one line of figures."""
    print(
        f"{name:>6}: wall {wall:.2f} s, server CPU {server:.2f} s ({server / requests * 1e6:.0f} µs/req), "
        f"{requests / wall:,.0f} req/s, client CPU {client:.2f} s",
        flush=True,
    )


if __name__ == "__main__":
    main()
