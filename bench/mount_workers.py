"""The bulk download workers of the mount alone: every small file of the tree into an empty cache.

Run as a driver (A/B between source trees, alternating, CPU per process)::

    cd bench && python mount_workers.py --repo DIR --rounds N NAME=SRC [NAME=SRC ...]

``--repo`` is a published repository (``public/``, ``keys/``; e.g. ``bench/mount.py --keep``'s
``repo``), served on loopback by the engine's HTTP server (a fresh process per run). Each run is
a child process with ``PYTHONPATH=SRC``: it opens the repository with an empty cache on disk,
lists the small files of the tree (what a walk of :mod:`rcds.mount.bulkahead` hands out), then
hands them to 2 :class:`~rcds.mount.fetchprocs.FetchWorkers` exactly as a walk does (batches of
:data:`~rcds.mount.bulkahead.BATCH_OBJECTS`, at most :data:`~rcds.mount.bulkahead.OUTSTANDING`
outstanding) and waits for every report. It prints the wall seconds of the hand-out, the CPU
seconds of the workers (started before the clock), of the child's own process (hand-out,
reports: what the daemon pays) and of the server, and the number of reports. No FUSE: this is
the download side of a cold read on its own, the part above the full-cache read.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import proc_user_system
from mount_cold import cpu, cpus, serve, variant

from mount import REPO, TREE

CHILD = r"""
import sys, time, threading, resource
from pathlib import Path
from rcds.client.repository import Repository
from rcds.client.fetch.bulk import Wanted
from rcds.format.hashes import ObjectKind
from rcds.mount import bulkahead
from rcds.mount.fetchprocs import FetchWorkers

url, key, cache, tree = sys.argv[1:5]
repo = Repository.open_urls([url], [Path(key)], cache_dir=Path(cache), probe=False)
items = []
for top, _, files in repo.walk(tree):
    for name in files:
        e = repo.entry(f"{top}/{name}")
        if e.is_regular and not e.is_chunked and e.hash is not None and 0 < e.size <= (1 << 20):
            items.append(Wanted(e.hash, ObjectKind.FILE, e.size, e.compressed))
repo.source.flush()
workers = FetchWorkers(repo.source, 2)
time.sleep(1.0)  # the workers are up
print("PIDS", *[w.pid for w in workers.workers], flush=True)
sys.stdin.readline()  # the driver took the CPU figures
cv = threading.Condition()
state = {"out": 0, "reports": 0}
def reported(done, ok):
    assert ok
    with cv:
        state["out"] -= len(done)
        state["reports"] += 1
        cv.notify_all()
r0 = resource.getrusage(resource.RUSAGE_SELF)
t0 = time.perf_counter()
for i in range(0, len(items), bulkahead.BATCH_OBJECTS):
    batch = items[i : i + bulkahead.BATCH_OBJECTS]
    with cv:
        while state["out"] >= bulkahead.OUTSTANDING:
            cv.wait(1.0)
        state["out"] += len(batch)
    assert workers.submit(batch, reported)
with cv:
    while state["out"] > 0:
        cv.wait(1.0)
wall = time.perf_counter() - t0
r1 = resource.getrusage(resource.RUSAGE_SELF)
own = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
print("RESULT", len(items), wall, own, state["reports"], flush=True)
sys.stdin.readline()
workers.close()
"""


def user_sys(pids: list[int]) -> tuple[float, float]:
    """User and system CPU seconds of ``pids`` (all alive)."""
    pairs = [proc_user_system(pid) for pid in pids]
    return sum(u for u, _ in pairs), sum(s for _, s in pairs)


def one(repo: Path, label: str, src: str, work: Path, spy: list[str]) -> None:
    src, env = variant(src)
    server, url = serve(repo / "public", src)
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    key = repo / "keys" / f"{REPO}.pub"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, str(key), str(cache), TREE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        line = child.stdout.readline().split()
        assert line and line[0] == "PIDS", line
        pids = [int(p) for p in line[1:]]
        profiler = None
        if spy:  # the workers only (the child's own share is small)
            out = f"{work.parent}/spy-workers-{label}-{time.strftime('%H%M%S')}.txt"
            cmd = [*spy, "--subprocesses", "-o", out, "--format", "raw", "-p", str(pids[0])]
            profiler = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
            time.sleep(1)
        s0, w0, us0 = cpu(server.pid), cpus(pids), user_sys(pids)
        child.stdin.write("\n")
        child.stdin.flush()
        result = child.stdout.readline().split()
        assert result and result[0] == "RESULT", result
        s1, w1, us1 = cpu(server.pid), cpus(pids), user_sys(pids)
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(60)
        n, wall, own, reports = int(result[1]), float(result[2]), float(result[3]), int(result[4])
        print(
            f"{label:>10}: {n} objects {wall:6.2f} s  workers {w1 - w0:5.2f} CPU-s"
            f" ({(w1 - w0) / n * 1e6:4.0f} us/object;"
            f" user {us1[0] - us0[0]:.2f} sys {us1[1] - us0[1]:.2f})"
            f"  hand-out {own:5.2f} CPU-s  server {s1 - s0:5.2f} CPU-s"
            f"  {reports} reports  load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        child.stdin.write("\n")
        child.stdin.flush()
        child.wait(60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        server.terminate()
        server.wait()
        shutil.rmtree(cache, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, required=True, help="published repository (public/, keys/)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--spy", default="", help="py-spy record command for the first worker")
    ap.add_argument("variants", nargs="+", metavar="NAME=SRC[:VAR=VALUE...]")
    args = ap.parse_args()
    variants = [v.split("=", 1) for v in args.variants]
    with tempfile.TemporaryDirectory(prefix="mount-workers-", dir="/tmp") as tmp:
        for _ in range(args.rounds):
            for name, src in variants:
                one(args.repo, name, src, Path(tmp), args.spy.split())


if __name__ == "__main__":
    main()
