"""Where an ingest's wall time goes, on a timeline: phases of the main thread, CPU of every thread
and worker process, and the core-seconds left idle in each phase.

Run: ``python bench/ingest_timeline.py --tar venv.tar --compressions isal:2,libdeflate:5
[--root-dir /dev/shm/x] [--bins 0.25]``

One ``Stratum0.ingest_tar`` per setting into a fresh repository, in a child process (as
``bench/ingest.py``). The child marks its phases (process start, imports, repository open, lock
and chain, first member, worker pool up, last member, workers drained, catalog finalised and
stored, chain committed, ``syncfs``, manifest signed and stored) by wrapping those functions from
the outside (nothing in ``rcds`` changes; no cost in a normal run) and logs each batch's send and
answer per worker. This process samples ``/proc/PID/task/TID/schedstat`` (CPU time in ns) of the
child's threads and of its worker processes every ``--interval`` seconds (it runs outside the
ingest, so it takes no GIL from it).

Printed per setting: the phases (start, length, CPU of the main thread, of the ingest's other
threads and of the workers, the idle core-seconds of a 2-core machine: ``2 * wall - CPU``, and
the time the main thread was runnable but waited for a core: ``m.wait``), then CPU per bin of
``--bins`` seconds per thread/process, and the workers' batches in flight.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from abrun import child_command, child_env
from procs import children, tasks

HERE = Path(__file__).resolve().parent
CORES = 2


# -- the child: one ingest with phase marks -----------------------------------------------------


def child(root: str, tar: str, path: str, out: str, t_start: float) -> None:
    """Ingest ``tar`` with marks; write the marks and batch log as JSON to ``out``."""
    marks: list[tuple[str, float]] = [("process start", t_start), ("python up", time.monotonic())]
    batches: list[tuple[int, str, float, int]] = []

    def mark(name: str) -> None:
        marks.append((name, time.monotonic()))

    from rcds.publish import catalog_rw, chain, objects, stratum0, tree_builder, workers
    from rcds.storage import local

    mark("imports done")

    def wrap(owner: Any, attr: str, before: str | None, after: str | None, once: bool = False) -> None:
        fn: Callable[..., Any] = getattr(owner, attr)
        seen = [False]

        def wrapper(*a: Any, **k: Any) -> Any:
            first = not seen[0]
            seen[0] = True
            if before and (first or not once):
                mark(before)
            r = fn(*a, **k)
            if after and (first or not once):
                mark(after)
            return r

        setattr(owner, attr, wrapper)

    wrap(stratum0.Stratum0, "_begin", "lock taken", "chain open")
    wrap(tree_builder.TreeBuilder, "add", "first member", None, once=True)
    wrap(workers, "lease", "pool lease", "pool up", once=True)
    wrap(tree_builder.TreeBuilder, "finish", "last member read", "tree finished")
    wrap(objects.ContentWriter, "drain", None, None)
    wrap(catalog_rw.WritableCatalog, "finalize", "finalize", "finalized")
    wrap(chain.CatalogChain, "commit", "chain commit", "chain committed")
    wrap(local.LocalStore, "sync", "syncfs", "synced")
    wrap(stratum0, "_signing_key", "repository key", None)

    send, receive = workers._Worker.send, workers._Worker.receive

    def logged_send(self: Any, batch: Any) -> None:
        batches.append((self.process.pid, "send", time.monotonic(), batch.count))
        send(self, batch)

    def logged_receive(self: Any) -> None:
        receive(self)
        batches.append((self.process.pid, "answer", time.monotonic(), 0))

    workers._Worker.send = logged_send  # type: ignore[method-assign]
    workers._Worker.receive = logged_receive  # type: ignore[method-assign]

    s0 = stratum0.Stratum0(Path(root), "bench.example.org")
    mark("repository open")
    with open(tar, "rb") as f:
        result = s0.ingest_tar(f, path)
    mark("ingest returned")
    pids = workers.pids()
    workers.shutdown()
    Path(out).write_text(
        json.dumps(
            {
                "marks": marks,
                "batches": batches,
                "pids": pids,
                "files": result.stats.files,
                "objects_written": result.stats.objects_written,
            }
        )
    )


# -- this process: sampling ---------------------------------------------------------------------


def _schedstat_ns(path: str, field: int = 0) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().split()[field])
    except (OSError, ValueError, IndexError):
        return None


def sample(proc: subprocess.Popen[bytes], interval: float) -> dict[str, list[tuple[float, int]]]:
    """CPU ns per thread of the child ("main", "thread N") and per worker ("worker PID"), over time."""
    series: dict[str, list[tuple[float, int]]] = {}
    names: dict[int, str] = {}
    pid = proc.pid
    while proc.poll() is None:
        now = time.monotonic()
        for tid in tasks(pid):
            key = names.get(tid, "main" if tid == pid else f"thread {tid}")
            names[tid] = key
            ns = _schedstat_ns(f"/proc/{pid}/task/{tid}/schedstat")
            if ns is not None:
                series.setdefault(key, []).append((now, ns))
            if tid == pid:  # time runnable but waiting for a core
                waited = _schedstat_ns(f"/proc/{pid}/task/{tid}/schedstat", 1) or 0
                series.setdefault("main wait", []).append((now, waited))
        for kid in children(pid):
            total = 0
            for tid in tasks(kid):
                total += _schedstat_ns(f"/proc/{kid}/task/{tid}/schedstat") or 0
            series.setdefault(f"worker {kid}", []).append((now, total))
        time.sleep(interval)
    return series


def cpu_between(points: list[tuple[float, int]], t0: float, t1: float) -> float:
    """CPU seconds of a series between two instants (linear between samples)."""

    def at(t: float) -> float:
        if not points or t <= points[0][0]:
            return float(points[0][1]) if points else 0.0
        for (ta, va), (tb, vb) in itertools.pairwise(points):
            if ta <= t <= tb:
                return va + (vb - va) * (t - ta) / (tb - ta) if tb > ta else float(vb)
        return float(points[-1][1])

    return max(0.0, at(t1) - at(t0)) / 1e9


def report(
    compression: str, data: dict[str, Any], series: dict[str, list[tuple[float, int]]], bins: float
) -> None:
    """Print the phases and the binned CPU of one run."""
    marks: list[tuple[str, float]] = [(n, t) for n, t in data["marks"]]
    marks.sort(key=lambda m: m[1])
    t0 = marks[0][1]
    end = marks[-1][1]
    main = series.get("main", [])
    wait = series.get("main wait", [])
    threads = [k for k in series if k.startswith("thread")]
    workers = [k for k in series if k.startswith("worker")]
    total_wall = end - t0
    files, objects = data["files"], data["objects_written"]
    print(f"\n== {compression}: {files} files, {objects} objects, wall {total_wall:.2f} s")
    heads = ("start", "len", "main", "thr", "workers", "idle", "m.wait")
    print(f"{'phase (from the mark)':28} " + " ".join(f"{h:>6}" for h in heads))
    sums = [0.0] * 6
    for (name, ta), (_, tb) in itertools.pairwise(marks):
        m = cpu_between(main, ta, tb)
        th = sum(cpu_between(series[k], ta, tb) for k in threads)
        w = sum(cpu_between(series[k], ta, tb) for k in workers)
        idle = CORES * (tb - ta) - m - th - w
        mw = cpu_between(wait, ta, tb)
        for i, v in enumerate((tb - ta, m, th, w, idle, mw)):
            sums[i] += v
        print(f"{name:28} {ta - t0:6.2f} {tb - ta:6.2f} {m:6.2f} {th:6.2f} {w:6.2f} {idle:6.2f} {mw:6.2f}")
    print(f"{'total':28} {'':6} " + " ".join(f"{v:6.2f}" for v in sums))
    depth: dict[int, int] = {}
    events = sorted(data["batches"], key=lambda e: e[2])
    print(f"\nCPU per {bins:.2f} s bin (cores busy), workers' batches in flight at the bin's end:")
    cols = ["t", "main", "thr"] + [f"w{i}" for i in range(len(workers))]
    print(" ".join(f"{c:>5}" for c in cols) + "  queue")
    t = t0
    ei = 0
    while t < end:
        u = min(end, t + bins)
        while ei < len(events) and events[ei][2] <= u:
            pid, what = events[ei][0], events[ei][1]
            depth[pid] = depth.get(pid, 0) + (1 if what == "send" else -1)
            ei += 1
        cells = [cpu_between(main, t, u), sum(cpu_between(series[k], t, u) for k in threads)]
        cells += [cpu_between(series[k], t, u) for k in workers]
        q = ",".join(str(depth.get(int(k.split()[1]), 0)) for k in workers)
        print(f"{t - t0:5.2f} " + " ".join(f"{c / (u - t):5.2f}" for c in cells) + f"  {q}")
        t = u


def run(src: Path, compression: str, tar: Path, root_dir: Path, interval: float, bins: float) -> None:
    """One ingest with ``src`` first on the path, sampled; print its timeline."""
    sys.path[:0] = [str(src), str(HERE)]
    import ingest as bench_ingest

    root = root_dir / "repo"
    bench_ingest.new_repository(root, compression)
    out = root_dir / "marks.json"
    os.sync()
    code = "import sys, time; t = time.monotonic(); import ingest_timeline as T; T.child(*sys.argv[1:5], t)"
    try:
        command = child_command(code, str(root), str(tar), "/sw/x", str(out))
        proc = subprocess.Popen(command, env=child_env(src), cwd=HERE)
        series = sample(proc, interval)
        if proc.wait() != 0:
            raise SystemExit(f"the ingest failed (exit {proc.returncode})")
        report(compression, json.loads(out.read_text()), series, bins)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    """Parse arguments; one sampled ingest per setting."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tar", type=Path, required=True, help="an uncompressed input tarball")
    ap.add_argument("--compressions", default="isal:2,libdeflate:5")
    ap.add_argument("--src", type=Path, default=HERE.parent / "src", help="the rcds src to run")
    ap.add_argument("--root-dir", type=Path, help="where the repository goes (default: a temp dir)")
    ap.add_argument("--interval", type=float, default=0.01, help="sampling interval, s")
    ap.add_argument("--bins", type=float, default=0.25, help="timeline bin, s")
    args = ap.parse_args()
    root_dir = Path(tempfile.mkdtemp(prefix="ingest-timeline-", dir=args.root_dir))
    try:
        for c in args.compressions.split(","):
            run(args.src.resolve(), c, args.tar.resolve(), root_dir, args.interval, args.bins)
    finally:
        shutil.rmtree(root_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
