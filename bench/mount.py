"""``rcds mount`` (FUSE) on a real software tree, side by side with a local copy and ``rcds get``.

Run as root (FUSE mounts, dropping the page cache):
``python bench/mount.py [--repeat N] [--keep DIR] [--markdown] [--scenarios 1,2,3,4,5]``.

The tree is a ``pip install --target`` of numpy, scipy, pandas, matplotlib and sympy (with the
bytecode pip compiles; ~13,000 files), made at the first run and kept in ``--keep DIR``,
published into a fresh repository (default settings) and served by the engine's HTTP server on
loopback, in a process of its own. The local copy is the installed tree itself. Every figure is
the median of ``--repeat`` interleaved runs (min in brackets), in fresh processes.

1. Job start, cold: ``python -c "import numpy, scipy.linalg, ..., sympy"`` with ``PYTHONPATH`` on
   a fresh mount with an empty cache, against the local copy; the page cache dropped before both.
2. Cold read of every file (16 reader threads) on a fresh mount with an empty cache, against
   ``rcds get`` of the same tree (empty cache, page cache dropped before both).
3. Warm read of every file (local cache filled, page cache warm: the second of two passes),
   against the same two passes over the local copy.
4. Warm ``stat`` of every entry (``find DIR -ls``, second of two passes), mount against local copy.
5. The daemon's cost per file: read of every file (16 reader threads) on a fresh mount whose
   local cache is already full, page cache dropped, against the same read of the local copy
   (page cache dropped); also prints the daemon's CPU seconds (user + system, from
   ``/proc/PID/stat``) and the FUSE requests per file (``rcds_mount_requests_total``).
   ``--full-cache DIR`` keeps the full cache in DIR and reuses it in later runs (A/B runs then
   skip the cold fill); ``--mount-args`` passes options to ``rcds mount`` (``--passthrough``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from common import MB, format_table, machine, proc_user_system
from realtree import IMPORTS, pip_tree, tree_size
from settle import add_settle_argument, remove_tree, settle

REPO = "bench.example.org"
TREE = "/sw/tree"
AIMS: dict[int, float | None] = {1: 2.0, 2: 1.5, 3: 2.0, 4: 2.5, 5: None}
FILLED = ".bench-filled"
"""Marks a ``--full-cache`` directory as filled by a whole read of the tree."""
CPU_KEYS = ("cpu", "user", "sys")

READER = r"""
import os, sys
from concurrent.futures import ThreadPoolExecutor
root, threads = sys.argv[1], int(sys.argv[2])
paths = [os.path.join(d, n) for d, _, names in os.walk(root) for n in names]
def read(p):
    if os.path.islink(p):
        return 0
    with open(p, "rb", buffering=0) as f:
        n = 0
        while b := f.read(1 << 20):
            n += len(b)
    return n
if threads > 1:
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(read, paths, chunksize=16))
else:
    total = sum(map(read, paths))
print(total)
"""


def drop_page_cache() -> None:
    """Write back and drop the page cache, dentries and inodes (root only)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t0


def serve_in_child(public: Path) -> tuple[subprocess.Popen[str], str]:
    code = (
        "import sys; from pathlib import Path; from rcds.serve.http import make_server; "
        f"s = make_server({{{REPO!r}: Path(sys.argv[1])}}); print(s.url_for({REPO!r}), flush=True); "
        "s.serve_forever()"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(public)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


class Bench:
    """The served repository, the mount and the scratch directories."""

    def __init__(self, work: Path, tree_dir: Path | None, mount_args: list[str] | None = None) -> None:
        self.work = work
        self.mount_args = mount_args or []
        self.tree_dir = tree_dir
        self.mnt = work / "mnt"
        self.mnt.mkdir(exist_ok=True)
        self.trash = work / "trash"
        self.trash.mkdir(exist_ok=True)
        self.daemon: subprocess.Popen[bytes] | None = None
        self.n = 0

    def setup(self) -> None:
        from rcds.publish.create import create_repository
        from rcds.publish.layout import Settings
        from rcds.publish.stratum0 import Stratum0

        self.local = pip_tree(self.tree_dir)
        t0 = time.perf_counter()
        files, nbytes = tree_size(self.local)
        print(f"input: {files} files, {nbytes / MB:.0f} MB ({time.perf_counter() - t0:.0f} s)", flush=True)
        root = self.work / "repo"
        if not (root / "public" / ".cvmfspublished").exists():
            shutil.rmtree(root, ignore_errors=True)
            create_repository(root, Settings(name=REPO))
            t0 = time.perf_counter()
            Stratum0(root, REPO).ingest_dir(self.local, TREE)
            print(f"published in {time.perf_counter() - t0:.0f} s", flush=True)
        self.key = str(root / "keys" / f"{REPO}.pub")
        self.server, self.url = serve_in_child(root / "public")
        self.mpl = self.work / "mplconfig"  # matplotlib's font cache, built once, untimed
        self.env = {**os.environ, "MPLBACKEND": "Agg", "MPLCONFIGDIR": str(self.mpl)}
        subprocess.run(
            [sys.executable, "-c", IMPORTS], check=True, env={**self.env, "PYTHONPATH": str(self.local)}
        )

    def fresh(self, name: str) -> Path:
        self.n += 1
        p = self.work / f"{name}-{self.n}"
        shutil.rmtree(p, ignore_errors=True)
        return p

    def mount(self, cache: Path, metrics_port: int | None = None) -> Path:
        """A fresh ``rcds mount`` with the cache ``cache``; the tree's path on it."""
        self.unmount()
        cmd = [sys.executable, "-m", "rcds.cli.main", "mount", REPO, str(self.mnt), "--foreground"]
        cmd += ["--server", self.url, "--key", self.key, "--cache", str(cache), *self.mount_args]
        if metrics_port is not None:
            cmd += ["--metrics-port", str(metrics_port)]
        self.daemon = subprocess.Popen(cmd)
        deadline = time.monotonic() + 60
        while not os.path.ismount(self.mnt):
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"rcds mount did not come up: {cmd}")
            time.sleep(0.02)
        return self.mnt / TREE.lstrip("/")

    def unmount(self) -> None:
        if self.daemon is not None:
            self.daemon.send_signal(signal.SIGTERM)
            self.daemon.wait(30)
            self.daemon = None

    def cold_mount(self) -> Path:
        tree = self.mount(self.fresh("cache"))
        drop_page_cache()
        return tree

    def import_on(self, where: Path) -> float:
        return timed([sys.executable, "-c", IMPORTS], env={**self.env, "PYTHONPATH": str(where)})

    def read_all(self, where: Path, threads: int) -> float:
        return timed([sys.executable, "-c", READER, str(where), str(threads)])

    def find_ls(self, where: Path) -> float:
        return timed(["find", str(where), "-ls"])

    def rcds_get(self) -> float:
        dest, cache = self.fresh("get"), self.fresh("cache")
        drop_page_cache()
        cmd = [sys.executable, "-m", "rcds.cli.main", "get", "--no-progress", "--server", self.url]
        cmd += ["--key", self.key, "--cache", str(cache), f"{REPO}:{TREE}", str(dest)]
        seconds = timed(cmd)
        if dest.exists():  # deleted at the end: no timed run right after a mass deletion
            dest.rename(self.trash / dest.name)
        return seconds

    def daemon_cpu(self) -> tuple[float, float]:
        """CPU seconds (user, system) the mount daemon used so far."""
        assert self.daemon is not None
        return proc_user_system(self.daemon.pid)

    def full_cache_read(self, cache: Path, out: dict[str, list[float]]) -> float:
        """Scenario 5, one run: wall seconds; appends the daemon's CPU seconds and requests."""
        port = _free_port()
        tree = self.mount(cache, port)
        before = _requests(port)
        drop_page_cache()
        user, system = self.daemon_cpu()
        seconds = self.read_all(tree, 16)
        user2, system2 = self.daemon_cpu()
        out["cpu"].append(user2 - user + system2 - system)
        out.setdefault("user", []).append(user2 - user)
        out.setdefault("sys", []).append(system2 - system)
        after = _requests(port)
        for op in set(after) | set(before):
            out.setdefault(op, []).append(after.get(op, 0) - before.get(op, 0))
        self.unmount()
        return seconds

    def close(self) -> None:
        self.unmount()
        self.server.terminate()
        self.server.wait()
        remove_tree(self.trash)  # recorded: the next file-creating bench waits (bench/settle.py)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _requests(port: int) -> dict[str, float]:
    """The daemon's FUSE requests so far by opcode (its ``/metrics``, up within 10 s)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                text = r.read().decode()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    pattern = r'^rcds_mount_requests_total\{opcode="(\w+)"\} (\S+)$'
    return {m.group(1): float(m.group(2)) for m in re.finditer(pattern, text, re.MULTILINE)}


def cell(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f})"


def interleaved(n: int, **runs: Callable[[], float]) -> dict[str, list[float]]:
    """``n`` rounds of every run in turn, so drift of the machine falls on all alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(n):
        for name, fn in runs.items():
            times[name].append(fn())
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure (median reported)")
    ap.add_argument("--keep", type=Path, metavar="DIR", help="work in DIR and keep it (the tree is reused)")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    ap.add_argument(
        "--tree", type=Path, metavar="DIR", help="the pip --target tree (default: bench/realtree.py's)"
    )
    ap.add_argument(
        "--scenarios",
        type=lambda t: {int(x) for x in t.split(",")},
        default={1, 2, 3, 4, 5},
        metavar="1,2,3,4,5",
    )
    ap.add_argument(
        "--full-cache",
        type=Path,
        metavar="DIR",
        help="scenario 5: keep the full cache in DIR and reuse it in later runs (no cold fill per run)",
    )
    ap.add_argument(
        "--mount-args", default="", metavar="ARGS", help="more options for rcds mount, e.g. --passthrough"
    )
    add_settle_argument(ap)
    args = ap.parse_args()
    if os.getuid() != 0:
        raise SystemExit("bench/mount.py mounts FUSE file systems and drops the page cache: run it as root")
    work = args.keep or Path(tempfile.mkdtemp(prefix="rcds-bench-mount-"))
    work.mkdir(parents=True, exist_ok=True)
    b = Bench(work, args.tree, args.mount_args.split())
    rows: list[list[object]] = []
    med = statistics.median

    def row(n: int, label: str, a: list[float], base: list[float], base_label: str) -> None:
        ratio = med(a) / med(base)
        aim = AIMS[n]
        verdict = "-" if aim is None else f"<= {aim} {'met' if ratio <= aim else 'missed'}"
        rows.append([f"({n}) {label}", cell(a), f"{cell(base)} {base_label}", f"{ratio:.2f}", verdict])

    try:
        print(f"machine: {machine()}", flush=True)
        b.setup()
        settle(work, wait=not args.no_settle)  # the mount's caches and rcds get write many files
        r = args.repeat
        if 1 in args.scenarios:

            def local_import() -> float:
                drop_page_cache()
                return b.import_on(b.local)

            t = interleaved(r, mount=lambda: b.import_on(b.cold_mount()), local=local_import)
            row(1, "cold import, mount vs local", t["mount"], t["local"], "local")
        if 2 in args.scenarios:
            t = interleaved(r, mount=lambda: b.read_all(b.cold_mount(), 16), get=b.rcds_get)
            row(2, "cold read of every file vs rcds get", t["mount"], t["get"], "rcds get")
        if 3 in args.scenarios or 4 in args.scenarios:
            tree = b.mount(b.fresh("cache"))
            b.read_all(tree, 16)  # fills the local cache
            warm: dict[str, list[float]] = {"read": [], "local": [], "find": [], "find_local": []}
            for _ in range(r):
                for name, where in (("read", tree), ("local", b.local)):
                    b.read_all(where, 1)
                    warm[name].append(b.read_all(where, 1))
                for name, where in (("find", tree), ("find_local", b.local)):
                    b.find_ls(where)
                    warm[name].append(b.find_ls(where))
            if 3 in args.scenarios:
                row(3, "warm read of every file, mount vs local", warm["read"], warm["local"], "local")
            if 4 in args.scenarios:
                row(4, "warm stat of every entry (find -ls)", warm["find"], warm["find_local"], "local")
        if 5 in args.scenarios:
            cache = args.full_cache or b.fresh("cache")
            if not (cache / FILLED).exists():
                b.read_all(b.mount(cache), 16)  # fills the local cache
                b.unmount()
                if args.full_cache:
                    (cache / FILLED).write_text("")
            daemon: dict[str, list[float]] = {"cpu": []}

            def local_cold() -> float:
                drop_page_cache()
                return b.read_all(b.local, 16)

            t = interleaved(r, mount=lambda: b.full_cache_read(cache, daemon), local=local_cold)
            row(5, "read of every file, full cache, page cache dropped", t["mount"], t["local"], "local")
            files = tree_size(b.local)[0]
            per_file = {
                op: med(v) / files for op, v in sorted(daemon.items()) if op not in CPU_KEYS and med(v)
            }
            ms = med(daemon["cpu"]) / files * 1000
            ops = ", ".join(f"{op} {n:.2f}" for op, n in per_file.items())
            print(f"(5) daemon CPU {cell(daemon['cpu'])} s = {ms:.3f} ms per file; requests per file: {ops}")
            print(f"(5) daemon user CPU {cell(daemon['user'])} s, system {cell(daemon['sys'])} s")
    finally:
        b.close()
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    headers = ["scenario", "mount s", "baseline s", "ratio", "aim"]
    print(format_table(headers, rows, markdown=args.markdown))


if __name__ == "__main__":
    main()
