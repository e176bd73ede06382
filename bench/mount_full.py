"""The mount daemon's CPU over a full local cache (``bench/mount.py`` scenario 5), A/B between
source trees, with where the daemon's CPU goes: per request handler and in the garbage collector.

Each round mounts the repository of ``bench/mount.py --keep DIR`` once per source tree (the
daemon run with that tree first on ``PYTHONPATH``) over the same full cache (``bench/mount.py
--full-cache``), drops the page cache (``--no-drop``: keeps it, so the cache files are read
from memory and the figures are the request path alone) and reads every file with 16 threads.
Printed per run: wall, the daemon's user and system CPU (``/proc/PID/stat``), its context
switches, the CPU time of the reader threads inside the ``READ`` and listing handlers
(``time.thread_time`` around them), the time in garbage collections by generation, and the
requests. The handler and collector figures come from a probe (a ``sitecustomize`` module put
first on the daemon's path) that adds a little CPU of its own to both sides; ``--no-probe``
measures without it.

    python bench/mount.py --repeat 1 --keep /tmp/me --tree /tmp/benchmount/tree --scenarios 5 \\
        --full-cache /tmp/me/cache-full        # once: the repository and the full cache
    python bench/mount_full.py --keep /tmp/me --full-cache /tmp/me/cache-full --rounds 3 \\
        branch=src main=/tmp/me-main/src
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mount as bm

PROBE = r"""
import sys
if "mount" in sys.argv:
    import gc, json, os, threading, time
    out = os.environ["RCDS_BENCH_PROBE_OUT"]
    acc = {}
    def dump():
        while True:
            time.sleep(0.1)
            with open(out + ".tmp", "w") as f:
                json.dump(acc, f)
            os.replace(out + ".tmp", out)
    threading.Thread(target=dump, daemon=True).start()
    def wrap(owner, name, key):
        orig = getattr(owner, name, None)
        if orig is None:
            return
        acc[key] = [0.0, 0]
        def timed(*args, **kwargs):
            t = time.thread_time()
            try:
                return orig(*args, **kwargs)
            finally:
                a = acc[key]
                a[0] += time.thread_time() - t
                a[1] += 1
        setattr(owner, name, timed)
    import rcds.mount.directories as directories
    import rcds.mount.operations as operations
    wrap(operations.RcdsOperations, "read", "READ")
    wrap(directories.Listings, "_answer", "READDIR(PLUS)")
    gcs = {"start": 0.0}
    for g in range(3):
        acc[f"gc{g}"] = [0.0, 0]
    def collected(phase, info):
        if phase == "start":
            gcs["start"] = time.thread_time()
        else:
            a = acc[f"gc{info['generation']}"]
            a[0] += time.thread_time() - gcs["start"]
            a[1] += 1
    gc.callbacks.append(collected)
"""


def ctx_switches(pid: int) -> int:
    """Voluntary + involuntary context switches of every thread of ``pid`` so far."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            for line in status.read_text().splitlines():
                if "ctxt_switches" in line:
                    total += int(line.split()[1])
        except OSError:
            pass  # a thread that ended meanwhile
    return total


def one_run(b: bm.Bench, cache: Path, src: str, probe: Path | None, drop: bool) -> dict[str, float]:
    """Mount with ``src`` first on the path, read every file; the figures of the run."""
    out = Path(tempfile.mkdtemp(prefix="mount-full-")) / "probe.json"
    path = [str(probe)] if probe is not None else []
    os.environ["PYTHONPATH"] = os.pathsep.join([*path, src])
    os.environ["RCDS_BENCH_PROBE_OUT"] = str(out)
    try:
        port = bm._free_port()
        tree = b.mount(cache, port)
        assert b.daemon is not None
        before = bm._requests(port)
        if drop:
            bm.drop_page_cache()
        user, system = b.daemon_cpu()
        switches = ctx_switches(b.daemon.pid)
        probed = json.loads(out.read_text()) if out.exists() else {}
        seconds = b.read_all(tree, 16)
        user2, system2 = b.daemon_cpu()
        switches = ctx_switches(b.daemon.pid) - switches
        after = bm._requests(port)
        time.sleep(0.3)  # the probe writes its figures every 0.1 s
    finally:
        del os.environ["PYTHONPATH"]
        b.unmount()
    figures: dict[str, float] = {"wall": seconds, "user": user2 - user, "sys": system2 - system}
    figures["ctx"] = switches
    if out.exists():
        for key, (cpu, calls) in json.loads(out.read_text()).items():
            figures[f"{key} CPU"] = cpu - probed.get(key, [0.0, 0])[0]
            figures[f"{key} n"] = calls - probed.get(key, [0.0, 0])[1]
        out.unlink()
    out.parent.rmdir()
    for op in sorted(set(after) | set(before)):
        if after.get(op, 0) - before.get(op, 0):
            figures[op] = int(after.get(op, 0) - before.get(op, 0))
    return figures


def warm(directory: Path) -> None:
    """Read every file under ``directory`` once (into the page cache)."""
    for root, _, names in os.walk(directory):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                while f.read(1 << 20):
                    pass


def _shown(key: str, value: float) -> str:
    return f"{key} {value:.2f}" if isinstance(value, float) else f"{key} {value}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", type=Path, required=True, help="bench/mount.py's --keep DIR (repository)")
    ap.add_argument("--full-cache", type=Path, required=True, help="bench/mount.py's --full-cache DIR")
    ap.add_argument("--tree", type=Path, default=Path("/tmp/benchmount/tree"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-drop", action="store_true", help="keep the page cache (cache files in memory)")
    ap.add_argument("--no-probe", action="store_true", help="no per-handler or collector figures")
    ap.add_argument("trees", nargs="+", metavar="NAME=SRC")
    args = ap.parse_args()
    trees = [t.split("=", 1) for t in args.trees]
    if not (args.keep / "repo" / "public" / ".cvmfspublished").exists() or not args.full_cache.is_dir():
        raise SystemExit("run bench/mount.py --keep DIR --scenarios 5 --full-cache DIR first")
    b = bm.Bench(args.keep, args.tree)
    b.local = args.tree
    b.key = str(args.keep / "repo" / "keys" / f"{bm.REPO}.pub")
    b.server, b.url = bm.serve_in_child(args.keep / "repo" / "public")
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in trees}
    if args.no_drop:  # every run then reads the cache files from memory
        warm(args.full_cache)
    with tempfile.TemporaryDirectory(prefix="mount-full-probe-") as tmp:
        probe = None if args.no_probe else Path(tmp)
        (Path(tmp) / "sitecustomize.py").write_text(PROBE)
        try:
            for r in range(args.rounds):
                for name, src in trees if r % 2 == 0 else trees[::-1]:
                    f = one_run(b, args.full_cache, src, probe, not args.no_drop)
                    results[name].append(f)
                    shown = ", ".join(_shown(k, v) for k, v in f.items())
                    print(f"{name:>8} round {r + 1} (load {os.getloadavg()[0]:.1f}): {shown}", flush=True)
        finally:
            b.unmount()
            b.server.terminate()
            b.server.wait()
    print("medians:")
    for name, runs in results.items():
        keys = [k for k in runs[0] if k in ("wall", "user", "sys") or k.endswith("CPU")]
        shown = ", ".join(f"{k} {statistics.median(x.get(k, 0.0) for x in runs):.2f}" for k in keys)
        print(f"{name:>8}: {shown}")


if __name__ == "__main__":
    main()
