"""Many clients start on the same new tree through one Squid: bytes fetched from the stratum 1.

Run: ``python bench/squid_fanout.py [--clients 200] [--files 100] [--file-kb 40] [--procs 8]``

Everything runs on loopback: a stratum 0 (rcds) with one CID of ``--files`` random
(incompressible) files of ``--file-kb`` KB, a stratum 1 (``rcds replica`` snapshot, served by
``rcds.serve`` in this process, which counts the body bytes it sends), a real Squid started from
``examples/squid/site-squid.conf``, and ``--clients`` rcds clients (``--procs`` processes with
clients/procs threads each, every client with its own empty cache) that start at the same instant,
open the repository through Squid and read every file of the tree (client caches in /dev/shm).

Configurations, in the same run, each with a cold Squid and cold clients:

* ``direct``: no Squid (the baseline: every client fetches its own copy);
* ``squid, no collapsing``: the sample configuration with ``collapsed_forwarding off``;
* ``squid (sample site config)``: the sample as shipped (``collapsed_forwarding on``).

Reported per configuration: data bytes sent by the stratum 1, how many copies of the tree that
is (one copy = the distinct objects the clients needed: catalogs on the way, certificate, files),
root-file requests (manifest, whitelist), the slowest client's time (open + read everything),
failures.
Bounded: at most 1000 clients, and ``--max-seconds`` per configuration.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from rcds.client.repository import Repository
from rcds.publish.create import create_repository
from rcds.publish.layout import Settings
from rcds.publish.stratum0 import Stratum0
from rcds.replica.registry import add_replica
from rcds.replica.replicator import Replicator
from rcds.serve.handler import AccessRecord
from rcds.serve.http import make_server
from rcds.testing.squid import Squid

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MB, machine

FQRN = "fanout.example.org"
SITE_CONF = Path(__file__).resolve().parents[1] / "examples" / "squid" / "site-squid.conf"


def client_threads(
    url: str, key: str, proxy: str, cache_base: str, first: int, count: int, start_at: float
) -> list[tuple[bool, int, float, str]]:
    """Run ``count`` clients in threads (in a child process); each: (ok, bytes read, seconds, error)."""

    def one(i: int) -> tuple[bool, int, float, str]:
        time.sleep(max(0.0, start_at - time.time()))
        t0 = time.monotonic()
        try:
            with Repository.open_urls(
                [url], [key], proxies=proxy, cache_dir=Path(cache_base) / f"c{i}", probe=False
            ) as repo:
                total = 0
                for d, _dirs, files in repo.walk("/sw/g/tree"):
                    for f in files:
                        total += len(repo.read_bytes(f"{d.rstrip('/')}/{f}"))
            return True, total, time.monotonic() - t0, ""
        except Exception as exc:
            return False, 0, time.monotonic() - t0, repr(exc)[:200]

    with cf.ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(one, range(first, first + count)))


def run_config(
    label: str,
    proxy_squid: Squid | None,
    url: str,
    key: Path,
    work: Path,
    clients: int,
    procs: int,
    sent: dict[str, list[int]],
    lock: threading.Lock,
    max_seconds: float,
) -> dict[str, object]:
    """One configuration: all clients at once; return the figures."""
    with lock:
        sent.clear()
    # Client caches in memory when possible: 200 fresh caches would otherwise measure the disk.
    shm = Path("/dev/shm")
    cache_base = Path(tempfile.mkdtemp(prefix="rcds-fanout-caches-", dir=shm if shm.is_dir() else work))
    proxy = proxy_squid.url if proxy_squid is not None else "DIRECT"
    start_at = time.time() + 1.0 + 0.1 * procs
    per = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    firsts = [sum(per[:i]) for i in range(procs)]
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=procs, mp_context=ctx) as pool:
        futures = [
            pool.submit(client_threads, url, str(key), proxy, str(cache_base), firsts[i], per[i], start_at)
            for i in range(procs)
            if per[i]
        ]
        results: list[tuple[bool, int, float, str]] = []
        for fut in cf.as_completed(futures, timeout=max_seconds):
            results.extend(fut.result())
    time.sleep(0.5)  # the server logs a request after its answer went out
    with lock:
        data = {t: n[0] for t, n in sent.items() if "/data/" in t}
        root_requests = sum(n[1] for t, n in sent.items() if "/data/" not in t)
    one_copy = sum((work / "s1" / FQRN / t.split(f"/cvmfs/{FQRN}/", 1)[1]).stat().st_size for t in data)
    shutil.rmtree(cache_base, ignore_errors=True)
    failures = [r for r in results if not r[0]]
    return {
        "label": label,
        "clients": len(results),
        "failures": len(failures),
        "first_error": failures[0][3] if failures else "",
        "s1_data_bytes": sum(data.values()),
        "one_copy": one_copy,
        "root_requests": root_requests,
        "wall": max((r[2] for r in results), default=0.0),
    }


def _print_row(r: dict[str, object]) -> None:
    sent, one = int(r["s1_data_bytes"]), int(r["one_copy"])  # type: ignore[call-overload]
    print(
        f"{r['label']:<30} {r['clients']:>7} {r['failures']:>4} {sent / MB:>10.2f} "
        f"{sent / one if one else 0.0:>7.2f} {r['root_requests']:>8} {r['wall']:>9.1f}",
        flush=True,
    )
    if r["first_error"]:
        print(f"   first error: {r['first_error']}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--procs", type=int, default=8, help="client processes (threads: clients/procs each)")
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--file-kb", type=int, default=40)
    ap.add_argument("--max-seconds", type=float, default=300)
    ap.add_argument("--skip-direct", action="store_true", help="leave out the no-Squid baseline")
    args = ap.parse_args()
    if not 1 <= args.clients <= 1000 or not 1 <= args.procs <= 64:
        ap.error("--clients must be 1-1000 and --procs 1-64")
    work = Path(tempfile.mkdtemp(prefix="rcds-fanout-"))
    try:
        src = work / "tree"
        (src / "lib").mkdir(parents=True)
        for i in range(args.files):
            (src / "lib" / f"f{i:04d}.bin").write_bytes(os.urandom(args.file_kb * 1000))
        create_repository(work / "s0", Settings(name=FQRN))
        s0 = Stratum0(work / "s0", FQRN)
        s0.ingest_dir(src, "/sw/g/tree")
        key = s0.layout.key("pub")
        with make_server({FQRN: s0.layout.public}) as s0_server:
            s0_server.start_background()
            entry = add_replica(work / "s1", FQRN, s0_server.url_for(FQRN), key)
            Replicator(workers=8).pull(entry.spec())
        sent: dict[str, list[int]] = {}
        lock = threading.Lock()

        def count(record: AccessRecord) -> None:
            with lock:
                n = sent.setdefault(record.target, [0, 0])
                n[0] += record.sent
                n[1] += 1

        s1 = make_server({FQRN: entry.dir}, access_log=count)
        s1.start_background()
        url = s1.url_for(FQRN)
        tree_mb = args.files * args.file_kb * 1000 / MB
        print(
            f"# squid_fanout: {args.clients} clients ({args.procs} processes), "
            f"tree {args.files} x {args.file_kb} KB = {tree_mb:.1f} MB of files"
        )
        print(f"# {machine()}")
        print(
            f"{'configuration':<30} {'clients':>7} {'fail':>4} {'S1 data MB':>10} {'copies':>7} "
            f"{'root req':>8} {'slowest s':>9}",
            flush=True,
        )
        try:
            configs: list[tuple[str, dict[str, str] | None]] = [
                ("squid (sample site config)", {}),
                ("squid, no collapsing", {"collapsed_forwarding": "collapsed_forwarding off"}),
            ]
            if not args.skip_direct:
                configs.append(("direct (no squid)", None))
            for label, extra in configs:
                squid = Squid.from_file(SITE_CONF, extra) if extra is not None else None
                try:
                    r = run_config(
                        label, squid, url, key, work, args.clients, args.procs, sent, lock, args.max_seconds
                    )
                finally:
                    if squid is not None:
                        squid.stop()
                _print_row(r)
        finally:
            s1.stop()
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
