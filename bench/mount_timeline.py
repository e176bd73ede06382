"""One cold read of a tree through ``rcds mount`` on a timeline: where the two cores idle.

Run as root (FUSE mount, dropping the page cache)::

    python bench/mount_timeline.py --repo DIR [--src SRC] [--slice 0.1] [--every 0.01] [--json FILE]

Set up as ``bench/mount_cold.py`` does (the repository served on loopback by the engine's
server in a process of its own, ``rcds mount --foreground`` with ``PYTHONPATH=SRC`` and a fresh
empty cache, page cache dropped, the reader of ``bench/mount.py`` with 16 threads over the whole
tree). While the read runs, and then while the daemon unmounts, a thread samples every
``--every`` seconds the run and run-queue wait times of every thread of the daemon, of its
worker processes, of the server and of the reader (``/proc/PID/task/TID/schedstat``, ns), and
the machine's idle and iowait (``/proc/stat``). The reader counts the files it has done. The
daemon's threads carry their Python names as OS names (a ``sitecustomize`` on the daemon's
path, bench only), so the busiest threads are named. The prefetcher's walks come from the
daemon's log lines (their timestamps).

Printed: per ``--slice`` seconds, CPU ms per process (daemon, workers, server, reader), the
daemon's busiest threads, idle and iowait core-ms of the machine, the ms the processes spent
runnable but not running (``wait``), the reader's files done, and the walks' events; then idle
core-seconds by phase (before the first walk, during the walks, after the walks until the read
ends, the unmount).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

from mount_cold import serve, start_mount, variant
from procs import children, tasks
from settle import add_settle_argument, remove_tree, settle

from mount import READER, REPO, TREE, drop_page_cache

HERE = Path(__file__).resolve().parent
TICK = os.sysconf("SC_CLK_TCK")

# The reader of bench/mount.py, counting its files: a thread writes "<unix time> <files done>".
TL_READER = (
    READER.replace(
        "def read(p):\n",
        "import threading, time\n"
        "done = [0]\n"
        "stop = threading.Event()\n"
        "def _progress():\n"
        "    with open(sys.argv[3], 'w', buffering=1) as out:\n"
        "        while True:\n"
        "            out.write('%.4f %d\\n' % (time.time(), done[0]))\n"
        "            if stop.wait(0.01):\n"
        "                out.write('%.4f %d\\n' % (time.time(), done[0]))\n"
        "                return\n"
        "progress = threading.Thread(target=_progress, daemon=True)\n"
        "progress.start()\n"
        "def read(p):\n    done[0] += 1\n",
    )
    + "stop.set()\nprogress.join()\n"
)

# The daemon's (and its workers') Python thread names as OS thread names (15 bytes), bench only.
SITECUSTOMIZE = r"""
import ctypes, threading
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
    _inner = threading.Thread._bootstrap_inner
    def _named(self):
        try:
            _prctl(15, self.name.replace("rcds-", "").encode()[:15], 0, 0, 0)
        except Exception:
            pass
        _inner(self)
    threading.Thread._bootstrap_inner = _named
except Exception:
    pass
"""

Sample = tuple[float, dict[tuple[str, int, int], tuple[int, int, str]], tuple[int, int, int]]
"""Time, per (role, pid, tid) the thread's (run ns, wait ns, name), the machine's (idle, iowait,
all) ticks."""


def _machine() -> tuple[int, int, int]:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return v[3], v[4], sum(v)


_NAMES: dict[tuple[int, int], str] = {}
_TRIES: dict[tuple[int, int], int] = {}


def _thread(pid: int, tid: int) -> tuple[int, int, str] | None:
    """A thread's (run ns, wait ns, name), or None if it is gone (raw reads: the sampler's cost)."""
    try:
        fd = os.open(f"/proc/{pid}/task/{tid}/schedstat", os.O_RDONLY)
        try:
            run, wait, _ = os.read(fd, 128).split()
        finally:
            os.close(fd)
        name = _NAMES.get((pid, tid))
        tries = _TRIES[(pid, tid)] = _TRIES.get((pid, tid), 0) + 1
        if name is None or (name.startswith("python") and tries <= 20):  # a new thread names
            # itself just after it starts (sitecustomize): read again for its first samples
            fd = os.open(f"/proc/{pid}/task/{tid}/comm", os.O_RDONLY)
            try:
                name = _NAMES[(pid, tid)] = os.read(fd, 64).decode().strip()
            finally:
                os.close(fd)
    except (OSError, ValueError):
        return None
    return int(run), int(wait), name


class Sampler:
    """Samples the threads of the processes of a run every ``every`` seconds (see the docstring)."""

    def __init__(self, every: float, roles: dict[str, int]) -> None:
        self.every = every
        self.roles = dict(roles)
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _pids(self) -> list[tuple[str, int]]:
        pids = [(role, pid) for role, pid in self.roles.items()]
        daemon = self.roles.get("daemon")
        if daemon is not None:
            pids += [("workers", kid) for kid in children(daemon)]
        return pids

    def _run(self) -> None:
        n = 0
        pids = self._pids()
        while not self._stop.is_set():
            if n % 10 == 0:
                pids = self._pids()
            n += 1
            t = time.time()
            threads: dict[tuple[str, int, int], tuple[int, int, str]] = {}
            for role, pid in pids:
                for tid in tasks(pid):
                    got = _thread(pid, tid)
                    if got is not None:
                        threads[(role, pid, tid)] = got
            self.samples.append((t, threads, _machine()))
            self._stop.wait(max(0.0, self.every - (time.time() - t)))


def _walk_events(log: Path) -> list[tuple[float, str]]:
    """The daemon's prefetch log lines with their (local time) timestamps, as unix times."""
    events = []
    for line in log.read_text().splitlines():
        m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) rcds\[\d+\] \w+: (.*)", line)
        if m and ("bulk prefetch" in m.group(3) or "prefetch" in m.group(3)):
            t = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
            events.append((t, m.group(3)))
    return events


def _progress(path: Path) -> list[tuple[float, int]]:
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            out.append((float(parts[0]), int(parts[1])))
    return out


def run(repo: Path, src: str, work: Path, every: float, mount_args: list[str]) -> dict[str, object]:
    """One cold read on a timeline; the raw samples, marks, events and progress."""
    src, env = variant(src)
    site = work / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env["PYTHONPATH"] = f"{site}:{env['PYTHONPATH']}"
    server, url = serve(repo / "public", src)
    key = repo / "keys" / f"{REPO}.pub"
    cache, mnt, log = work / "cache", work / "mnt", work / "daemon.log"
    shutil.rmtree(cache, ignore_errors=True)
    mnt.mkdir(exist_ok=True)
    try:
        daemon = start_mount(url, key, cache, mnt, log, mount_args, env)
    except BaseException:
        server.terminate()
        server.wait()
        raise
    try:
        drop_page_cache()
        sampler = Sampler(every, {"daemon": daemon.pid, "server": server.pid, "bench": os.getpid()})
        sampler.start()
        time.sleep(0.05)
        progress = work / "progress"
        t0 = time.time()
        reader = subprocess.Popen(
            [sys.executable, "-c", TL_READER, str(mnt / TREE.lstrip("/")), "16", str(progress)],
            stdout=subprocess.DEVNULL,
        )
        sampler.roles["reader"] = reader.pid
        # the reader's CPU is counted whole: its threads are read until it exits (reaped below)
        if reader.wait(600) != 0:
            raise SystemExit("the reader failed")
        t_read = time.time()
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
        t_unmounted = time.time()
        time.sleep(0.05)
        sampler.stop()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        server.terminate()
        server.wait()
        subprocess.run(["umount", "-l", str(mnt)], stderr=subprocess.DEVNULL, check=False)
    return {
        "t0": t0,
        "read_end": t_read,
        "unmounted": t_unmounted,
        "samples": sampler.samples,
        "events": _walk_events(log),
        "progress": _progress(progress),
        "log_tail": [
            ln for ln in log.read_text().splitlines() if "prefetched" in ln or "bulk prefetch:" in ln
        ],
    }


def _deltas(
    samples: list[Sample],
) -> list[tuple[float, float, dict[tuple[str, int, int], tuple[float, float, str]], tuple[float, float]]]:
    """Per interval between samples: start, end, per thread (run ms, wait ms, name), machine
    (idle, iowait) core-ms."""
    out = []
    for (ta, a, ma), (tb, b, mb) in itertools.pairwise(samples):
        per: dict[tuple[str, int, int], tuple[float, float, str]] = {}
        for k, (run, wait, name) in b.items():
            r0, w0, _ = a.get(k, (0, 0, name))
            per[k] = ((run - r0) / 1e6, (wait - w0) / 1e6, name)
        idle = (mb[0] - ma[0]) * 1000 / TICK
        iowait = (mb[1] - ma[1]) * 1000 / TICK
        out.append((ta, tb, per, (idle, iowait)))
    return out


ROLES = ("daemon", "workers", "server", "reader", "bench")


def report(data: dict[str, object], width: float, top: int) -> None:
    """Print the timeline per slice of ``width`` s and the idle core-seconds by phase."""
    t0 = float(data["t0"])  # type: ignore[arg-type]
    read_end = float(data["read_end"]) - t0  # type: ignore[arg-type]
    unmounted = float(data["unmounted"]) - t0  # type: ignore[arg-type]
    samples: list[Sample] = data["samples"]  # type: ignore[assignment]
    events = [(t - t0, e) for t, e in data["events"]]  # type: ignore[attr-defined]
    progress = [(t - t0, n) for t, n in data["progress"]]  # type: ignore[attr-defined]
    slices: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    threads: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for ta, _tb, per, (idle, iowait) in _deltas(samples):
        k = int((ta - t0) // width)
        s = slices[k]
        s["idle"] += idle
        s["iowait"] += iowait
        for (role, _pid, tid), (run, wait, name) in per.items():
            s[role] += run
            if role != "bench":
                s["wait"] += wait
            if role == "daemon":
                threads[k][f"{name}/{tid % 1000}" if name.startswith("python") else name] += run
    walk_starts = [t for t, e in events if " walk " in e and (" from " in e or " goes on in " in e)]
    walk_ends = [t for t, e in events if " walk " in e and " over " in e]
    print(
        f"{'t (s)':>6} {'files':>6} {'daemon':>6} {'workrs':>6} {'server':>6} {'reader':>6} {'bench':>5}"
        f" {'idle':>5} {'iowt':>5} {'wait':>5}  (CPU ms per slice; idle/iowait: machine core-ms; wait: "
        "run-queue ms)  daemon's busiest threads / events"
    )
    for k in sorted(slices):
        a, b = k * width, (k + 1) * width
        s = slices[k]
        done = max((n for t, n in progress if t < b), default=0)
        busiest = sorted(threads[k].items(), key=lambda kv: -kv[1])[:top]
        names = " ".join(f"{n}:{v:.0f}" for n, v in busiest if v >= 1)
        evs = "; ".join(e[:60] for t, e in events if a <= t < b)
        mark = " READ END" if a <= read_end < b else (" UNMOUNTED" if a <= unmounted < b else "")
        print(
            f"{a:6.1f} {done:6d} {s['daemon']:6.0f} {s['workers']:6.0f} {s['server']:6.0f} {s['reader']:6.0f}"
            f" {s['bench']:5.0f} {s['idle']:5.0f} {s['iowait']:5.0f} {s['wait']:5.0f}  {names}"
            f"{'  | ' + evs if evs else ''}{mark}"
        )
    first = min(walk_starts, default=read_end)
    last = max(walk_ends, default=first)
    first_file = min((t for t, n in progress if n > 0), default=first)
    phases = [
        ("the reader's listing (no file read yet)", 0.0, min(first_file, first)),
        ("first reads, before the first walk", min(first_file, first), first),
        ("during the walks", first, min(last, read_end)),
        ("after the walks, until the read ends", min(last, read_end), read_end),
        ("the unmount", read_end, unmounted),
    ]
    print(f"\nread {read_end:.2f} s, unmount {unmounted - read_end:.2f} s; walks {len(walk_starts)}")
    print(
        f"{'phase':<40} {'wall':>5} {'idle':>5} {'iowt':>5} {'wait':>5} " + " ".join(f"{r:>7}" for r in ROLES)
    )
    for name, a, b in phases:
        tot: dict[str, float] = defaultdict(float)
        groups: dict[str, float] = defaultdict(float)
        for ta, tb, per, (idle, iowait) in _deltas(samples):
            mid = (ta + tb) / 2 - t0
            if a <= mid < b:
                tot["idle"] += idle / 1000
                tot["iowait"] += iowait / 1000
                for (role, _p, _t), (run, wait, n) in per.items():
                    tot[role] += run / 1000
                    if role in ("daemon", "workers"):
                        groups[f"{role[0]}:{re.sub(r'[-_]?[0-9]+$', '', n)}"] += run / 1000
                    if role != "bench":
                        tot["wait"] += wait / 1000
        print(
            f"{name:<40} {b - a:5.2f} {tot['idle']:5.2f} {tot['iowait']:5.2f} {tot['wait']:5.2f} "
            + " ".join(f"{tot[r]:7.2f}" for r in ROLES)
        )
        busiest = sorted(groups.items(), key=lambda kv: -kv[1])
        print(
            f"{'':>40}threads (d: daemon, w: workers): "
            + " ".join(f"{g} {v:.2f}" for g, v in busiest if v >= 0.01)
        )
    for ln in data["log_tail"]:  # type: ignore[attr-defined]
        print(f"  {ln.split(': ', 1)[-1][:300]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, required=True, help="published repository (public/, keys/)")
    ap.add_argument("--src", default=str(HERE.parent / "src"), help="SRC[:VAR=VALUE...] of the daemon")
    ap.add_argument("--every", type=float, default=0.01, help="sampling interval, s")
    ap.add_argument("--slice", type=float, default=0.1, help="printed slice, s")
    ap.add_argument("--top", type=int, default=3, help="the daemon's busiest threads per slice")
    ap.add_argument("--mount-args", default="", help="more rcds mount arguments")
    ap.add_argument("--json", type=Path, help="also write the raw samples here")
    ap.add_argument("--work", type=Path, default=Path("/tmp"), help="where the cache goes (a tmpfs: no disk)")
    add_settle_argument(ap)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mount-tl-", dir=args.work))
    try:
        settle(work, wait=not args.no_settle)  # the cache is ~13,000 new files
        data = run(args.repo, args.src, work, args.every, args.mount_args.split())
    finally:
        remove_tree(work)  # recorded: the next file-creating bench waits (bench/settle.py)
    if args.json:
        raw = {**data, "samples": [(t, [[*k, *v] for k, v in th.items()], m) for t, th, m in data["samples"]]}  # type: ignore[attr-defined]
        args.json.write_text(json.dumps(raw))
    print(f"load {os.getloadavg()[0]:.1f}, src {args.src}, {len(data['samples'])} samples")  # type: ignore[arg-type]
    report(data, args.slice, args.top)


if __name__ == "__main__":
    main()
