"""Per-request cost of the client's HTTP path, side by side in one run.

Run: ``python bench/transport.py [-n 5000] [--repeat 3] [--squid]``.

``N`` small objects (1-12 KB, random bytes) are written into a repository directory and served
by the engine's server (``rcds.serve.http.make_server``) in a child process on loopback. The
same objects are then downloaded, in the same order, by:

* ``urllib3``: the previous transport (:class:`rcds.net.legacy.Urllib3Transport`), one thread;
* ``http1``: :class:`rcds.net.transport.Transport` (raw sockets, prepared requests), one thread;
* ``fetch``: :meth:`Fetcher.fetch` over ``http1`` (fail-over bookkeeping included), 1 and 8 threads;
* ``fetch_many``: :meth:`Fetcher.fetch_many` (HTTP/1.1 pipelining), 1 and 2 connections;
* with ``--squid`` (needs ``/usr/sbin/squid``): ``fetch`` and ``fetch_many`` through a Squid on
  loopback, after one warm-up pass that fills its memory cache.

Each row shows requests per second (median of ``--repeat`` rounds, fastest in brackets), and
the CPU time per request of this (client) process and of the server process.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import format_table, machine, proc_cpu_seconds

from rcds.net import Fetcher, NetSettings, ProxyConfig
from rcds.net.legacy import Urllib3Transport
from rcds.net.transport import Transport

NAME = "bench.example.org"
SERVER = """
import sys
from rcds.serve.http import make_server
srv = make_server({sys.argv[1]: sys.argv[2]})
print(srv.port, flush=True)
srv.serve_forever(0.2)
"""


def make_objects(root: Path, n: int, seed: int = 1) -> tuple[list[str], list[int]]:
    rng = random.Random(seed)
    paths, sizes = [], []
    for i in range(n):
        rel = f"data/{i % 256:02x}/{i:08d}{rng.getrandbits(64):016x}"
        size = rng.randint(1000, 12000)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rng.randbytes(size))
        paths.append(rel)
        sizes.append(size)
    return paths, sizes


def start_squid() -> tuple[subprocess.Popen[bytes], str, Path] | None:
    squid = shutil.which("squid") or ("/usr/sbin/squid" if os.path.exists("/usr/sbin/squid") else None)
    if squid is None:
        return None
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "net"))
    from conftest import Squid  # the test fixture's private configuration

    s = Squid(cache_mem_mb=256)  # room for every object: the second pass is all memory hits
    return s.proc, s.url, s.dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=5000, help="number of objects (default 5000)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds per mode (default 3)")
    ap.add_argument("--squid", action="store_true", help="also measure through a Squid on loopback")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="rcds-bench-transport-"))
    server = None
    squid_stop: Callable[[], None] | None = None
    try:
        repo = tmp / "repo"
        repo.mkdir()
        paths, sizes = make_objects(repo, args.n)
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER, NAME, str(repo)], stdout=subprocess.PIPE, text=True
        )
        assert server.stdout is not None
        port = int(server.stdout.readline())
        base = f"http://127.0.0.1:{port}/cvmfs/{NAME}"
        urls = [f"{base}/{p}" for p in paths]
        settings = NetSettings()
        total = sum(sizes)

        def check(got: int) -> None:
            if got != total:
                raise SystemExit(f"wrong byte count: {got} != {total}")

        def transport_loop(t: Urllib3Transport | Transport) -> Callable[[], None]:
            def run() -> None:
                got = 0
                for u in urls:
                    buf = bytearray()
                    got += t.get(u, "DIRECT", buf.extend)
                check(got)

            return run

        def fetch_loop(f: Fetcher, threads: int) -> Callable[[], None]:
            def run() -> None:
                if threads == 1:
                    check(sum(len(f.fetch(p)) for p in paths))
                    return
                with ThreadPoolExecutor(threads) as pool:
                    check(sum(len(b) for b in pool.map(f.fetch, paths)))

            return run

        def many_loop(f: Fetcher, connections: int) -> Callable[[], None]:
            def run() -> None:
                f.pipeline_connections = connections
                seen = set()
                got = 0
                for i, n in f.fetch_many(paths, lambda i, body: len(body)):
                    seen.add(i)
                    got += n
                if len(seen) != len(paths):
                    raise SystemExit("fetch_many missed paths")
                check(got)

            return run

        direct = Fetcher([base], settings=settings)
        modes: list[tuple[str, Callable[[], None]]] = [
            ("urllib3 Transport.get, 1 thread (before)", transport_loop(Urllib3Transport(settings))),
            ("http1 Transport.get, 1 thread", transport_loop(Transport(settings))),
            ("Fetcher.fetch, 1 thread", fetch_loop(direct, 1)),
            ("Fetcher.fetch, 8 threads", fetch_loop(direct, 8)),
            ("Fetcher.fetch_many, 1 connection", many_loop(direct, 1)),
            ("Fetcher.fetch_many, 2 connections", many_loop(direct, 2)),
        ]
        if args.squid:
            started = start_squid()
            if started is None:
                print("squid is not installed: skipping the proxy rows")
            else:
                proc, squid_url, squid_dir = started

                def stop_squid() -> None:
                    proc.terminate()
                    proc.wait(10)
                    shutil.rmtree(squid_dir, ignore_errors=True)

                squid_stop = stop_squid
                via = Fetcher([base], ProxyConfig.parse(squid_url), settings)
                fetch_loop(via, 1)()  # fill the proxy's cache
                modes += [
                    ("via Squid: Fetcher.fetch, 1 thread", fetch_loop(via, 1)),
                    ("via Squid: Fetcher.fetch_many, 1 connection", many_loop(via, 1)),
                    ("via Squid: Fetcher.fetch_many, 2 connections", many_loop(via, 2)),
                ]

        results: dict[str, list[tuple[float, float, float]]] = {name: [] for name, _ in modes}
        for _ in range(args.repeat):
            for name, run in modes:  # interleaved, so that load changes hit every mode alike
                s0, c0, w0 = proc_cpu_seconds(server.pid), time.process_time(), time.perf_counter()
                run()
                wall = time.perf_counter() - w0
                results[name].append((wall, time.process_time() - c0, proc_cpu_seconds(server.pid) - s0))

        n = len(paths)
        rows = []
        baseline = statistics.median(n / r[0] for r in results[modes[0][0]])
        for name, runs in results.items():
            rates = [n / r[0] for r in runs]
            med = statistics.median(rates)
            client_us = statistics.median(r[1] for r in runs) / n * 1e6
            server_us = statistics.median(r[2] for r in runs) / n * 1e6
            rows.append(
                (
                    name,
                    f"{med:,.0f} ({max(rates):,.0f})",
                    f"{med / baseline:.2f}",
                    f"{client_us:.0f}",
                    f"{server_us:.0f}",
                )
            )
        print(f"{n} objects of 1-12 KB ({total / 1e6:.1f} MB), rcds.serve on loopback; {machine()}")
        print(f"load average {os.getloadavg()[0]:.1f}; median of {args.repeat} rounds (fastest in brackets)")
        print(format_table(["mode", "req/s", "vs urllib3", "client CPU us/req", "server CPU us/req"], rows))
    finally:
        if squid_stop is not None:
            squid_stop()
        if server is not None:
            server.terminate()
            server.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
