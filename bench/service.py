"""The publishing service on loopback: request rates of exists/update, and publish latency.

Run: ``python bench/service.py [--quick] [--clients N] [--requests N] [--duration S]
[--rounds N] [--sizes 5,100,1000] [--markdown]`` (about 10 minutes on 2 cores).

**Request rates.** The service runs in this process (:class:`rcds.service.runner.ServiceThread`,
plain HTTP on 127.0.0.1, credential-less loopback requests, 200 published CIDs). A load generator
in a child process (aiohttp client, ``--clients`` concurrent keep-alive connections) sends a fixed
number of requests, stopping early at the time bound, and counts replies per second (the median
of interleaved rounds). The same load is sent, in the same run, to two baselines: a bare aiohttp
hello-world server in a thread of this process, and the service's ``/pubapi/ping``. ``exists``
asks for present and missing CIDs in turn; ``update`` for present ones (every reply stamps a CID;
stamps are written every 10 s).

**Publish latency.** Tarballs of realistic content (source-like text and code-like binaries with
15% random stretches; gzip level 6; about 2.9:1) of 5 MB, 100 MB and 1 GB are generated once
into a temporary directory under /tmp (and fsynced: the client's file is not the server's to
write to disk), each deleted after its run. A child process uploads each
(streamed from the file with urllib3), then polls ``exists`` every 10 ms until it answers PRESENT.
Reported: the upload time, and from the end of the upload to PRESENT, split into queue wait,
ingest (decompress, chunk, compress, hash, write objects: the engine), sign (catalogs, sync,
signed manifest: ``PublishRecord.commit``) and the rest (hand-over, index, polling). A publish
that began while the upload arrived (``(live)``, :mod:`rcds.service.live`) shows as ingest only
its part after the upload's end. Also the service's peak RSS growth while the upload streams and
while the tarball is published, and the CPU seconds the service (this process and its worker
processes) used from the upload's start to PRESENT: on a busy machine a steadier figure than the
wall-clock times.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from common import MB, DeflateSink, format_table, machine, proc_cpu_seconds, proc_status_kib, wait_idle
from procs import children, cpu_seconds, tasks

from rcds.serving_thread import ServingThread

TARGET_EXISTS_PER_S = 2000
TARGET_100MB_SECONDS = 2.0


# -- load generator (child process) -------------------------------------------------------------


async def _load(urls: list[str], clients: int, count: int, duration: float) -> dict[str, Any]:
    import aiohttp

    done = 0
    errors = 0
    latencies: list[float] = []
    next_index = 0
    deadline = time.monotonic() + duration
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal done, errors, next_index
            while next_index < count and time.monotonic() < deadline:
                url = urls[next_index % len(urls)]
                next_index += 1
                t0 = time.perf_counter()
                try:
                    async with session.get(url) as resp:
                        await resp.read()
                        ok = resp.status == 200
                except aiohttp.ClientError:
                    ok = False
                latencies.append(time.perf_counter() - t0)
                if ok:
                    done += 1
                else:
                    errors += 1

        # warm up the connections, then measure
        await asyncio.gather(*(session.get(urls[0]) for _ in range(clients)))
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "done": done,
        "errors": errors,
        "seconds": elapsed,
        "rate": done / elapsed if elapsed else 0.0,
        "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else 0.0,
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else 0.0,
    }


def child_load(args: list[str]) -> None:
    spec = json.loads(args[0])
    out = asyncio.run(_load(spec["urls"], spec["clients"], spec["count"], spec["duration"]))
    print(json.dumps(out))


def child_upload(args: list[str]) -> None:
    """Upload a file, then poll exists until PRESENT; print wall-clock times."""
    import urllib3

    base, cid, path = args
    pool = urllib3.PoolManager(timeout=urllib3.Timeout(connect=5, read=600), retries=False)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        t0 = time.time()
        r = pool.request(
            "POST",
            f"{base}/pubapi/publish?cid={cid}",
            body=f,
            headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"},
            preload_content=True,
        )
        t1 = time.time()
    assert r.status == 200 and r.data == b"OK\n", (r.status, r.data)
    while True:
        r = pool.request("GET", f"{base}/pubapi/exists?cid={cid}")
        if r.data.startswith(b"PRESENT:"):
            break
        time.sleep(0.01)
    t2 = time.time()
    print(json.dumps({"t0": t0, "t1": t1, "t2": t2}))


def run_child(mode: str, *args: str, timeout: float = 1800) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# -- servers ------------------------------------------------------------------------------------


class HelloServer(ServingThread):
    """A bare aiohttp hello-world server in a thread: the baseline."""

    def __init__(self) -> None:
        from aiohttp import web

        async def hello(_: web.Request) -> web.Response:
            return web.Response(text="OK\n")

        async def serve(ready: Callable[[str], None], stop: asyncio.Event) -> None:
            app = web.Application()
            app.router.add_get("/hello", hello)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready(f"http://127.0.0.1:{port}/hello")
            await stop.wait()
            await runner.cleanup()

        super().__init__(serve, name="bench-hello", what="the hello-world server", timeout=10)


def start_service(base: Path, compression: str | None = None) -> Any:
    """The service with two repositories; ``compression``: their ``LIBRARY:LEVEL`` (the TOML key;
    default: the service's)."""
    from rcds.service.config import ServiceConfig
    from rcds.service.runner import ServiceThread

    cfg = ServiceConfig.loads(
        f'base_dir = "{base}"\nrepositories = ["user1.example.org", "user2.example.org"]\n'
        + (f'compression = "{compression}"\n' if compression else "")
        + "[listen]\nport = 0\n[serve]\nport = 0\n",
        relative_to=base,
    )
    print(f"# repositories compressed with {cfg.compression}")
    return ServiceThread(cfg)


def seed_cids(st: Any, n: int) -> list[str]:
    """Publish ``n`` small tarballs; return their CIDs."""
    import urllib3

    pool = urllib3.PoolManager(retries=False)
    cids = []
    for i in range(n):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tf:
            data = f"tarball {i}\n".encode() * 10
            ti = tarfile.TarInfo(f"f{i}.txt")
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        body = buf.getvalue()
        cid = "dune/" + hashlib.sha256(body).hexdigest()
        r = pool.request("POST", f"{st.url}/pubapi/publish?cid={cid}", body=body)
        assert r.status == 200, r.data
        cids.append(cid)
    assert st.service.queue.idle(300)
    return cids


# -- request rates ------------------------------------------------------------------------------


@dataclass
class Rate:
    name: str
    rate: float
    p50_ms: float
    p99_ms: float
    errors: int
    done: int


def measure_rates(
    st: Any, cids: list[str], clients: int, count: int, duration: float, rounds: int, idle: float
) -> list[Rate]:
    """Each load ``rounds`` times, interleaved (so drifts of the machine hit every row alike); the
    median round of each is reported."""
    hello = HelloServer()
    missing = ["dune/" + hashlib.sha256(f"missing {i}".encode()).hexdigest() for i in range(len(cids))]
    mixed = [c for pair in zip(cids, missing, strict=True) for c in pair]
    loads = {
        "hello world (bare aiohttp)": [hello.url],
        "/pubapi/ping": [f"{st.url}/pubapi/ping"],
        "/pubapi/exists": [f"{st.url}/pubapi/exists?cid={c}" for c in mixed],
        "/pubapi/update": [f"{st.url}/pubapi/update?cid={c}" for c in cids],
    }
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in loads}
    try:
        for _ in range(rounds):
            wait_idle(idle)
            for name, urls in loads.items():
                spec = {"urls": urls, "clients": clients, "count": count, "duration": duration}
                results[name].append(run_child("load", json.dumps(spec)))
    finally:
        hello.stop()
    rows = []
    for name, runs in results.items():
        r = sorted(runs, key=lambda x: x["rate"])[len(runs) // 2]
        rows.append(
            Rate(name, r["rate"], r["p50_ms"], r["p99_ms"], sum(x["errors"] for x in runs), r["done"])
        )
    return rows


def rate_table(rates: list[Rate], markdown: bool) -> str:
    base = rates[0].rate
    rows = [
        [r.name, f"{r.rate:,.0f}", f"{r.rate / base:.2f}", f"{r.p50_ms:.1f}", f"{r.p99_ms:.1f}", r.errors]
        for r in rates
    ]
    return format_table(["load", "req/s", "vs hello", "p50 ms", "p99 ms", "errors"], rows, markdown)


# -- publish latency ----------------------------------------------------------------------------


class Content:
    """Deterministic code-like content: source text (~3.4:1 with gzip -6) and binaries (~2.7:1)."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz_", dtype=np.uint8)
        self.words = np.array(
            [bytes(self.rng.choice(letters, int(self.rng.integers(2, 12)))).decode() for _ in range(3000)],
            dtype=object,
        )
        self.tokens = self.rng.integers(0, 256, (4096, 16), dtype=np.uint8)  # "instructions"

    def text(self, n_words: int) -> bytes:
        rng = self.rng
        words = self.words[rng.zipf(1.2, n_words) % len(self.words)]
        breaks = rng.integers(0, 10, n_words) == 0
        indent = rng.integers(0, 4, n_words)
        return "".join(
            w + ("\n" + "    " * int(i) if b else " ") for w, b, i in zip(words, breaks, indent, strict=True)
        ).encode()

    def binary(self, n: int) -> bytes:
        rng = self.rng
        data = self.tokens[rng.zipf(1.3, n // 16 + 1) % len(self.tokens)].reshape(-1)[:n].copy()
        noisy = np.repeat(rng.random(n // 4096 + 1) < 0.15, 4096)[:n]  # 15% random 4 KiB stretches
        data[noisy] = rng.integers(0, 256, int(noisy.sum()), dtype=np.uint8)
        return data.tobytes()


def write_tarball(path: Path, size: int, seed: int) -> int:
    """A tar.gz (gzip -6) of about ``size`` bytes, about 35% source text and 65% binaries by
    uncompressed size; returns the uncompressed content size."""
    content = Content(seed)
    raw = text_bytes = 0
    with open(path, "wb") as out:
        sink = DeflateSink(out, zlib.compressobj(6, zlib.DEFLATED, 31))
        with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tf:
            i = 0
            while sink.written < size:
                if text_bytes < 0.35 * raw:  # a source file of 2-200 KB
                    data = content.text(int(content.rng.integers(300, 30_000)))
                    name = f"src/pkg{i % 97}/module_{i}.py"
                    text_bytes += len(data)
                else:  # a library of 0.5-8 MB
                    data = content.binary(int(content.rng.integers(1 << 19, 8 << 20)))
                    name = f"lib/libpart{i}.so"
                raw += len(data)
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                ti.mode = 0o755
                ti.mtime = 1_700_000_000
                tf.addfile(ti, io.BytesIO(data))
                i += 1
        sink.finish()
    return raw


@dataclass
class Latency:
    label: str
    size: int
    raw: int
    upload: float
    to_present: float
    queue_wait: float
    ingest: float
    sign: float
    rss_upload_mb: float
    rss_publish_mb: float
    cpu: float = 0.0
    thread_cpu: float = 0.0
    """CPU seconds of the service's busiest thread (the publish worker's serial path)."""


def thread_cpu_seconds() -> dict[int, float]:
    """CPU seconds so far of each thread of this process."""
    return {tid: proc_cpu_seconds(f"self/task/{tid}") for tid in tasks("self")}


def service_cpu_seconds() -> float:
    """CPU seconds of this process (the service; the bench's own threads idle meanwhile) and of its
    live child processes (the ingest's worker processes; the upload child has exited when this is
    read after it)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime + cpu_seconds(children(os.getpid()))


class RssSampler:
    """VmRSS of this process (the service) every 20 ms, with wall-clock times."""

    def __init__(self) -> None:
        self.base = proc_status_kib("VmRSS")
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.samples.append((time.time(), proc_status_kib("VmRSS")))

    def stop(self) -> None:
        self._stop.set()
        self._t.join()

    def growth_mb(self, t0: float, t1: float) -> float:
        """Peak growth over the start, between wall-clock times ``t0`` and ``t1``."""
        peak = max((kib for t, kib in self.samples if t0 <= t <= t1), default=self.base)
        return max(0, peak - self.base) / 1024


def make_tarball(work: Path, mb: int, seed: int) -> tuple[Path, int, str]:
    """Generate the ``mb`` MB tarball of ``seed`` into ``work`` (fsynced); its path, unpacked size
    and CID."""
    path = work / f"code-{mb}MB.tar.gz"
    t = time.monotonic()
    raw = write_tarball(path, mb * MB, seed=seed)
    with open(path, "rb+") as f:  # on disk, so the service's syncfs does not write it for us
        os.fsync(f.fileno())
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    print(
        f"  generated {path.stat().st_size / MB:.0f} MB ({raw / MB:.0f} MB unpacked) "
        f"in {time.monotonic() - t:.0f} s",
        flush=True,
    )
    return path, raw, "dune/" + h.hexdigest()


def publish_one(st: Any, path: Path, raw: int, cid: str, label: str) -> Latency:
    """Upload ``path`` to the service ``st`` from a child process and wait for PRESENT; the times
    of the publish and the share of each stage."""
    sampler = RssSampler()
    cpu0, threads0 = service_cpu_seconds(), thread_cpu_seconds()
    times = run_child("upload", st.url, cid, str(path))
    cpu, threads = service_cpu_seconds() - cpu0, thread_cpu_seconds()
    sampler.stop()
    rec = next(r for r in st.service.queue.records if r.cid == cid)
    ingest, queue_wait = rec.ingest - rec.commit, rec.queue_wait
    live = getattr(rec, "live", False)  # (main before live publishing has no such field)
    if live:  # began with the upload: only its part after the upload's end counts here
        ingest, queue_wait = max(0.0, rec.finished - rec.commit - times["t1"]), 0.0
    return Latency(
        label + (" (live)" if live else ""),
        path.stat().st_size,
        raw,
        times["t1"] - times["t0"],
        times["t2"] - times["t1"],
        queue_wait,
        ingest,
        rec.commit,
        sampler.growth_mb(times["t0"], times["t1"]),
        sampler.growth_mb(times["t1"], times["t2"]),
        cpu,
        max(t - threads0.get(tid, 0.0) for tid, t in threads.items()),
    )


def measure_latency(st: Any, sizes_mb: list[int], work: Path, idle: float) -> list[Latency]:
    """Generate, publish and delete a tarball of each size in turn."""
    rows = []
    for i, mb in enumerate(sizes_mb):
        path, raw, cid = make_tarball(work, mb, seed=100 + i)
        wait_idle(idle)
        rows.append(publish_one(st, path, raw, cid, f"{mb} MB"))
        path.unlink()
    return rows


# -- main ---------------------------------------------------------------------------------------


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        {"load": child_load, "upload": child_upload}[sys.argv[2]](sys.argv[3:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small counts and sizes (a smoke test)")
    ap.add_argument("--clients", type=int, default=32, help="concurrent connections (32)")
    ap.add_argument("--requests", type=int, default=30_000, help="requests per load (30000)")
    ap.add_argument("--duration", type=float, default=15.0, help="time bound per load, seconds (15)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every load; the median is shown (3)")
    ap.add_argument("--sizes", default="5,100,1000", help="tarball sizes in MB (5,100,1000)")
    ap.add_argument("--markdown", action="store_true", help="print tables as Markdown")
    ap.add_argument(
        "--compression", metavar="LIB:LEVEL", help="compressor of the repositories (default: the service's)"
    )
    ap.add_argument("--no-rates", action="store_true", help="only the publish latency")
    ap.add_argument(
        "--wait-idle", type=float, default=0.0, metavar="S",
        help="before each round and publish, wait up to S s for other processes to go quiet",
    )  # fmt: skip
    args = ap.parse_args()
    if args.quick:
        args.requests, args.duration, args.rounds, args.sizes = 5000, 5.0, 1, "5"
    sizes = [int(s) for s in args.sizes.split(",") if s]

    print(f"# service bench: {machine()}")
    print(f"# load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(
        f"# load: {args.clients} clients, {args.requests} requests or {args.duration:g} s per run, "
        f"median of {args.rounds} interleaved rounds"
    )
    work = Path(tempfile.mkdtemp(prefix="rcds-bench-service-", dir="/tmp"))
    st = start_service(work / "srv", args.compression)
    try:
        rates: list[Rate] = []
        if not args.no_rates:
            rates = measure_rates(
                st,
                seed_cids(st, 200),
                args.clients,
                args.requests,
                args.duration,
                args.rounds,
                args.wait_idle,
            )
            print()
            print(rate_table(rates, args.markdown))
        lat = measure_latency(st, sizes, work, args.wait_idle)
        print()
        rows = []
        for r in lat:
            rest = max(0.0, r.to_present - r.queue_wait - r.ingest - r.sign)
            total = r.upload + r.to_present

            def pct(x: float, total: float = total) -> str:
                return f"{x:.2f} ({100 * x / total:.0f}%)" if total else "-"

            rows.append(
                [
                    r.label,
                    f"{r.size / MB:.0f}/{r.raw / MB:.0f}",
                    pct(r.upload),
                    pct(r.queue_wait),
                    pct(r.ingest),
                    pct(r.sign),
                    pct(rest),
                    f"{r.to_present:.2f}",
                    f"{total:.2f}",
                    f"{r.rss_upload_mb:.0f} / {r.rss_publish_mb:.0f}",
                    f"{r.cpu:.2f}",
                ]
            )
        print(
            format_table(
                ["tarball", "MB gz/unpacked", "upload s", "queue s", "ingest s", "sign s", "other s",
                 "end->PRESENT s", "total s", "RSS +MB up/pub", "service CPU s"],
                rows,
                args.markdown,
            )
        )  # fmt: skip
        print()
        for rate in rates:
            if rate.name == "/pubapi/exists":
                verdict = "met" if rate.rate >= TARGET_EXISTS_PER_S else "MISSED"
                print(f"exists: {rate.rate:,.0f}/s (aim >= {TARGET_EXISTS_PER_S:,}/s): {verdict}")
        for r in lat:
            if r.label.startswith("100 MB"):
                verdict = "met" if r.to_present <= TARGET_100MB_SECONDS else "MISSED"
                aim = f"aim <= {TARGET_100MB_SECONDS:g} s"
                print(f"100 MB: PRESENT {r.to_present:.2f} s after the upload ({aim}): {verdict}")
        print(f"# load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    finally:
        st.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
