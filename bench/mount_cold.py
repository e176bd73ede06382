"""The mount's cold read of a tree, A/B between source trees, with CPU per process.

Run as root (FUSE mounts, dropping the page cache)::

    python bench/mount_cold.py --repo DIR --rounds N [--warm] [--get] NAME=SRC [NAME=SRC ...]

``--repo`` is a published repository (``public/`` and ``keys/``, e.g. the ``repo`` directory
of ``bench/mount.py --keep``), served on loopback by the engine's HTTP server in a process of
its own (a fresh one per run, so its CPU is the run's). Each round runs every ``NAME=SRC`` in
turn (``rcds mount --foreground`` with ``PYTHONPATH=SRC``, a fresh empty cache, page cache
dropped; the reader of ``bench/mount.py``, 16 threads, over the whole tree) and prints wall
seconds, the daemon's, its download workers' (its child processes, if any) and the server's CPU
seconds (``/proc/PID/stat``) and the daemon's last
log lines (the prefetcher's counters at unmount). ``--warm`` adds a second read on a new mount
over the now full cache (page cache dropped): the floor the cold read is compared with.
``--get`` adds ``rcds get`` of the same tree (empty cache, page cache dropped) per round.
``SRC`` may be followed by ``:VARIABLE=VALUE`` settings for the daemon's environment.
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

from common import proc_cpu_seconds as cpu
from procs import children
from procs import cpu_seconds as cpus
from realtree import IMPORTS

from mount import READER, REPO, TREE, drop_page_cache


def variant(spec: str) -> tuple[str, dict[str, str]]:
    """A variant's ``SRC[:VAR=VALUE...]``: the source tree, and the environment to run it in."""
    src, *assignments = spec.split(":")
    return src, {**os.environ, "PYTHONPATH": src, **dict(a.split("=", 1) for a in assignments)}


def serve(public: Path, src: str) -> tuple[subprocess.Popen[str], str]:
    code = (
        "import sys; from pathlib import Path; from rcds.serve.http import make_server; "
        f"s = make_server({{{REPO!r}: Path(sys.argv[1])}}); print(s.url_for({REPO!r}), flush=True); "
        "s.serve_forever()"
    )
    env = {**os.environ, "PYTHONPATH": src}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(public)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def start_mount(
    url: str, key: Path, cache: Path, mnt: Path, log: Path, mount_args: list[str], env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """``rcds mount --foreground`` of the bench's repository at ``mnt``, once it is mounted (<= 60 s;
    else the daemon is killed and the bench stops)."""
    cmd = [sys.executable, "-m", "rcds.cli.main", "mount", REPO, str(mnt), "--foreground"]
    cmd += ["--server", url, "--key", str(key), "--cache", str(cache), "--log-file", str(log), *mount_args]
    daemon = subprocess.Popen(cmd, env=env)
    deadline = time.monotonic() + 60
    while not os.path.ismount(mnt):
        if daemon.poll() is not None or time.monotonic() > deadline:
            daemon.kill()
            daemon.wait()
            raise SystemExit(f"rcds mount did not come up: {cmd}")
        time.sleep(0.02)
    return daemon


def one(
    repo: Path,
    src: str,
    work: Path,
    warm: bool,
    label: str,
    spy: list[str],
    job: str = "read",
    spy_warm: bool = False,
    mount_args: list[str] | None = None,
) -> None:
    mount_args = mount_args or []
    src, env = variant(src)
    server, url = serve(repo / "public", src)
    key = repo / "keys" / f"{REPO}.pub"
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    try:
        for phase in ["cold", "warm"] if warm else ["cold"]:
            mnt = work / "mnt"
            mnt.mkdir(exist_ok=True)
            log = work / f"daemon-{phase}.log"
            log.unlink(missing_ok=True)
            daemon = start_mount(url, key, cache, mnt, log, mount_args, env)
            drop_page_cache()
            profiler = None
            if spy and (phase == "cold" or spy_warm):
                out = f"{work.parent}/spy-{label}-{phase}-{time.strftime('%H%M%S')}.txt"
                profiler = subprocess.Popen(
                    [*spy, "-o", out, "--format", "raw", "-p", str(daemon.pid)], stdout=subprocess.DEVNULL
                )
                time.sleep(1)
            workers = children(daemon.pid)
            s0, d0, w0 = cpu(server.pid), cpu(daemon.pid), cpus(workers)
            t0 = time.perf_counter()
            tree = str(mnt / TREE.lstrip("/"))
            if job == "import":  # aim (1)'s job start: imports, few files of the tree
                job_env = {**os.environ, "PYTHONPATH": tree, "MPLBACKEND": "Agg"}
                job_env["MPLCONFIGDIR"] = str(work / "mplconfig")
                job_cmd = [sys.executable, "-c", IMPORTS]
            else:
                job_env, job_cmd = None, [sys.executable, "-c", READER, tree, "16"]
            subprocess.run(job_cmd, check=True, stdout=subprocess.DEVNULL, timeout=600, env=job_env)
            wall = time.perf_counter() - t0
            # workers started during the read (bulk prefetch starts its own) count whole
            workers = sorted(set(workers) | set(children(daemon.pid)))
            s1, d1, w1 = cpu(server.pid), cpu(daemon.pid), cpus(workers)
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                profiler.wait(60)
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(60)
            tail = [ln for ln in log.read_text().splitlines() if "prefetched" in ln or "bulk prefetch:" in ln]
            print(
                f"{label:>10} {phase}: {wall:6.2f} s  daemon {d1 - d0:5.2f} CPU-s"
                f"  workers ({len(workers)}) {w1 - w0:5.2f} CPU-s  server {s1 - s0:5.2f} CPU-s"
                f"  load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
            for ln in tail:
                print(f"{'':>12}{ln.split(': ', 1)[-1][:400]}", flush=True)
    finally:
        server.terminate()
        server.wait()


def get(repo: Path, src: str, work: Path) -> None:
    server, url = serve(repo / "public", src)
    key = repo / "keys" / f"{REPO}.pub"
    dest, cache = work / "get", work / "getcache"
    for p in (dest, cache):
        shutil.rmtree(p, ignore_errors=True)
    try:
        drop_page_cache()
        s0 = cpu(server.pid)
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "rcds.cli.main", "get", "--no-progress", "--server", url]
        cmd += ["--key", str(key), "--cache", str(cache), f"{REPO}:{TREE}", str(dest)]
        r0 = os.times()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": src})
        r1 = os.times()
        wall = time.perf_counter() - t0
        s1 = cpu(server.pid)
        c = (r1.children_user - r0.children_user) + (r1.children_system - r0.children_system)
        print(
            f"{'rcds get':>10}: {wall:6.2f} s  client {c:5.2f} CPU-s  server {s1 - s0:5.2f} CPU-s"
            f"  load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    finally:
        server.terminate()
        server.wait()
        for p in (dest, cache):
            shutil.rmtree(p, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", type=Path, required=True, help="published repository (public/, keys/)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--warm", action="store_true", help="also read again from the full cache")
    ap.add_argument("--get", action="store_true", help="also time rcds get of the tree")
    ap.add_argument(
        "--spy", default="", help="py-spy record command for the cold read (e.g. 'py-spy record --gil')"
    )
    ap.add_argument("--mount-args", default="", help="more rcds mount arguments (e.g. --passthrough)")
    ap.add_argument("--spy-warm", action="store_true", help="with --warm: profile the warm read too")
    ap.add_argument(
        "--job",
        choices=["read", "import"],
        default="read",
        help="read: every file, 16 threads (aim 2); import: aim (1)'s imports (laziness: objects fetched)",
    )
    ap.add_argument("variants", nargs="+", metavar="NAME=SRC")
    args = ap.parse_args()
    variants = [v.split("=", 1) for v in args.variants]
    with tempfile.TemporaryDirectory(prefix="mount-cold-", dir="/tmp") as tmp:
        work = Path(tmp)
        for _ in range(args.rounds):
            for name, src in variants:
                one(
                    args.repo,
                    src,
                    work,
                    args.warm,
                    name,
                    args.spy.split(),
                    args.job,
                    args.spy_warm,
                    args.mount_args.split(),
                )
            if args.get:
                get(args.repo, variant(variants[0][1])[0], work)


if __name__ == "__main__":
    main()
